"""The openai backend: forwards to any OpenAI-compatible upstream (vLLM, a provider).

Latency is measured around the upstream call; tokens come from its ``usage``;
cost from the arm's price table; energy from the arm's joules per token.
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx

from controlplane.config import ArmConfig
from deployments.backends import Generation


class OpenAIUpstream:
    def __init__(self, arm: ArmConfig, client: httpx.AsyncClient | None = None) -> None:
        assert arm.base_url
        self.arm = arm
        headers = {}
        if arm.api_key_env and os.environ.get(arm.api_key_env):
            headers["Authorization"] = f"Bearer {os.environ[arm.api_key_env]}"
        self.client = client or httpx.AsyncClient(
            base_url=arm.base_url.rstrip("/"), headers=headers, timeout=arm.timeout_s
        )

    async def generate(self, body: dict[str, Any]) -> Generation:
        payload = {k: v for k, v in body.items() if k not in {"stream", "metadata", "task"}}
        payload["model"] = self.arm.upstream_model or self.arm.model
        if self.arm.adapter:
            payload["model"] = self.arm.adapter  # vLLM serves LoRA adapters by name
        start = time.perf_counter()
        resp = await self.client.post("/chat/completions", json=payload)
        latency_ms = (time.perf_counter() - start) * 1000.0
        resp.raise_for_status()
        data = resp.json()
        usage = data.get("usage") or {}
        pt, ct = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        a = self.arm
        return Generation(
            text=data["choices"][0]["message"].get("content") or "",
            prompt_tokens=pt,
            completion_tokens=ct,
            latency_ms=latency_ms,
            ttft_ms=None,
            energy_j=a.joules_per_token * (pt + ct),
            cost_usd=(pt * a.usd_per_1k_prompt_tokens + ct * a.usd_per_1k_completion_tokens)
            / 1000.0,
            model=payload["model"],
        )
