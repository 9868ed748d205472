"""The openai backend: forwards to any OpenAI-compatible upstream (vLLM, a provider).

The request goes upstream with ``stream: true`` (and ``stream_options.include_usage``),
so text deltas pass through as the upstream sends them; latency and time to the
first token are measured here; tokens come from the upstream's ``usage``; cost
from the arm's price table; energy from the arm's joules per token. Closing the
stream early closes the upstream connection.

Adapters are served by name (the request's ``model`` is the adapter). With the
arm's ``adapter_dir`` set, the upstream is a vLLM server with runtime LoRA updating
and the pool drives its adapter slots: a load is ``POST /v1/load_lora_adapter`` of
``<adapter_dir>/<adapter>`` (a path on the server), timed, an unload
``/v1/unload_lora_adapter`` (:mod:`deployments.backends.vllm_lora`). Without it the
server is assumed to hold every adapter already (``--lora-modules``): loads are
bookkeeping and take no time.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from controlplane.config import ArmConfig
from deployments.backends import AdapterNotLoaded, Chunk, Pricing, Usage
from deployments.backends.vllm_lora import VLLMLoRA

if TYPE_CHECKING:
    from deployments.backends import BuildContext


class OpenAIUpstream:
    def __init__(self, arm: ArmConfig, client: httpx.AsyncClient | None = None) -> None:
        assert arm.base_url
        self.arm = arm
        self.pricing = Pricing.of(arm)
        headers = {}
        if arm.api_key_env and os.environ.get(arm.api_key_env):
            headers["Authorization"] = f"Bearer {os.environ[arm.api_key_env]}"
        self.client = client or httpx.AsyncClient(
            base_url=arm.base_url.rstrip("/"), headers=headers, timeout=arm.timeout_s
        )
        self._adapters: dict[str, None] = {}
        self.lora = (
            None
            if arm.adapter_dir is None
            else VLLMLoRA(arm.base_url, arm.adapter_dir, headers=headers, timeout_s=arm.timeout_s)
        )

    async def generate(
        self, body: dict[str, Any], adapter: str | None = None
    ) -> AsyncGenerator[Chunk, None]:
        if adapter and adapter not in self._adapters:
            raise AdapterNotLoaded(adapter)
        payload = {k: v for k, v in body.items() if k not in {"metadata", "task"}}
        payload["model"] = adapter or self.arm.upstream_model or self.arm.model
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
        start = time.perf_counter()
        ttft_ms: float | None = None
        usage: dict[str, Any] = {}
        finish = "stop"
        async with self.client.stream("POST", "/chat/completions", json=payload) as resp:
            if resp.is_error:
                await resp.aread()
                resp.raise_for_status()
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    finish = choice.get("finish_reason") or finish
                    text = (choice.get("delta") or {}).get("content") or ""
                    if text:
                        if ttft_ms is None:
                            ttft_ms = (time.perf_counter() - start) * 1000.0
                        yield Chunk(text)
        pt, ct = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        yield Chunk(
            usage=Usage(
                prompt_tokens=pt,
                completion_tokens=ct,
                latency_ms=(time.perf_counter() - start) * 1000.0,
                ttft_ms=ttft_ms,
                energy_j=self.pricing.energy_j(pt, ct),
                cost_usd=self.pricing.cost_usd(pt, ct),
                finish_reason=finish,
                model=payload["model"],
            )
        )

    # -- adapters: served by name upstream; loaded there through vLLM's LoRA API -----

    def load_adapter(self, name: str) -> float:
        seconds = 0.0 if self.lora is None else self.lora.load(name)
        self._adapters[name] = None
        return seconds

    def unload_adapter(self, name: str) -> None:
        if self.lora is not None:
            self.lora.unload(name)
        self._adapters.pop(name, None)

    def resident(self) -> tuple[str, ...]:
        return tuple(self._adapters)

    def adapter_bytes(self, name: str) -> int:
        del name  # every adapter is held by the upstream server, not by this replica
        return 0


def build(arms: Sequence[ArmConfig], context: BuildContext) -> dict[str, OpenAIUpstream]:
    del context  # an upstream needs nothing of the replica's
    return {arm.name: OpenAIUpstream(arm) for arm in arms}
