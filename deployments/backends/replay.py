"""The replay backend: serves a routing data set's recorded answers.

``metadata.replay_row`` names a row outright; a prompt seen in the data set
gets that row; an unseen prompt gets the
nearest known prompt's row (cosine similarity of featurizer vectors). Latency
and energy come from the data set or the model profile
(``learners.datasets.MODEL_PROFILES``); the backend really spends
``latency_scale`` x that latency (asyncio sleep) so traffic has real timing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from deployments.backends import Generation
from learners.datasets import CHARS_PER_TOKEN, RoutingDataset
from learners.featurize import Featurizer, last_user_text


def prompt_key(body: dict[str, Any]) -> str:
    return " ".join(last_user_text(body.get("messages") or []).split())


class ReplayBackend:
    def __init__(
        self,
        dataset: RoutingDataset,
        model: str,
        latency_scale: float = 0.01,
        featurizer: Featurizer | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if model not in dataset.models:
            raise ValueError(
                f"replay data set has no model {model!r}; it has {list(dataset.models)}"
            )
        self.ds = dataset
        self.k = dataset.models.index(model)
        self.model = model
        self.latency_scale = latency_scale
        self.sleep = sleep
        self.featurizer = featurizer or Featurizer(dim=256, text_scale=1.0)
        self.index = {prompt_key(r): i for i, r in enumerate(dataset.requests)}
        vecs = self.featurizer.featurize_many(dataset.requests)
        self.vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)

    def lookup(self, body: dict[str, Any]) -> int:
        row = (body.get("metadata") or {}).get("replay_row")
        if isinstance(row, int) and 0 <= row < len(self.ds):
            return row  # the caller names the data set row (load generators, the demo)
        i = self.index.get(prompt_key(body))
        if i is not None:
            return i
        v = self.featurizer.featurize(body)
        v = v / max(float(np.linalg.norm(v)), 1e-12)
        return int(np.argmax(self.vecs @ v))

    async def generate(self, body: dict[str, Any]) -> Generation:
        start = time.perf_counter()
        i = self.lookup(body)
        text = f"[{self.model}] recorded answer #{i}"
        responses = getattr(self.ds, "responses", None)
        if responses is not None and responses[i][self.k]:
            text = str(responses[i][self.k])
        latency = float(self.ds.latency_ms[i, self.k])
        if self.latency_scale > 0:
            await self.sleep(latency * self.latency_scale / 1000.0)
        prompt_tokens = max(1, int(len(prompt_key(body)) / CHARS_PER_TOKEN))
        spent_ms = (time.perf_counter() - start) * 1000.0
        return Generation(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=max(1, int(len(text) / CHARS_PER_TOKEN)),
            latency_ms=spent_ms,
            ttft_ms=None,
            energy_j=float(self.ds.energy_j[i, self.k]),
            cost_usd=float(self.ds.cost_usd[i, self.k]),
            model=self.model,
        )
