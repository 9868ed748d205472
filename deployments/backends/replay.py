"""The replay backend: serves a routing data set's recorded answers.

``metadata.replay_row`` names a row outright; a prompt seen in the data set
gets that row; an unseen prompt gets the
nearest known prompt's row (cosine similarity of featurizer vectors). Latency
and energy come from the data set or the model profile
(``learners.datasets.MODEL_PROFILES``); the backend really spends
``latency_scale`` x that latency (asyncio sleep), spread over the pieces it
streams the answer in, so traffic has real timing.

Its LoRA adapters are the fake ones of :mod:`cache_manager.fake_adapter`: a
load allocates and copies the weights of a rank-``adapter_rank`` adapter of a
7B-class model, so it takes the time the machine needs to move those bytes.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cache_manager.fake_adapter import FakeAdapterSpec, FakeAdapterStore, LoadedAdapter
from deployments.backends import (
    AdapterNotLoaded,
    BuildContext,
    Chunk,
    Usage,
    choice_count,
    completion_budget,
    refuse_unsupported,
    stop_sequences,
)
from learners.datasets import CHARS_PER_TOKEN, RoutingDataset
from learners.featurize import Featurizer, last_user_text

if TYPE_CHECKING:
    from controlplane.config import ArmConfig

PIECES = 8  # at most this many chunks per answer


def prompt_key(body: dict[str, Any]) -> str:
    return " ".join(last_user_text(body.get("messages") or []).split())


def pieces(text: str, n: int = PIECES) -> list[str]:
    """``text`` cut into at most ``n`` pieces at word boundaries (joined, they are ``text``)."""
    words = re.findall(r"\s*\S+\s*", text) or [text]
    per = -(-len(words) // n)
    return ["".join(words[i : i + per]) for i in range(0, len(words), per)]


def shape(text: str, body: dict[str, Any]) -> tuple[str, str]:
    """``text`` as the request's ``stop`` and token budget leave it, and its finish reason."""
    stops = [j for j in (text.find(s) for s in stop_sequences(body)) if j >= 0]
    if stops:
        return text[: min(stops)], "stop"
    budget = completion_budget(body)
    if budget is not None and len(text) > budget * CHARS_PER_TOKEN:
        return text[: int(budget * CHARS_PER_TOKEN)], "length"
    return text, "stop"


class ReplayBackend:
    def __init__(
        self,
        dataset: RoutingDataset,
        model: str,
        latency_scale: float = 0.01,
        featurizer: Featurizer | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        adapter_rank: int = 8,
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
        self.adapter_rank = adapter_rank
        self._store = FakeAdapterStore(specs={}, rng=np.random.default_rng(0))
        self._loaded: dict[str, LoadedAdapter] = {}
        self._lock = threading.Lock()  # loads run in worker threads

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

    async def generate(
        self, body: dict[str, Any], adapter: str | None = None
    ) -> AsyncGenerator[Chunk, None]:
        """The recorded answer, cut at the first ``stop`` sequence (finish ``stop``) or
        at ``max_completion_tokens``/``max_tokens`` (finish ``length``); ``n`` choices
        get the same answer, streamed side by side (the recorded cost and energy are
        paid per choice). Tools, JSON output and log probabilities are refused."""
        refuse_unsupported(body, "replay")
        start = time.perf_counter()
        if adapter and adapter not in self._loaded:
            raise AdapterNotLoaded(adapter)
        i = self.lookup(body)
        text = f"[{self.model}] recorded answer #{i}"
        responses = getattr(self.ds, "responses", None)
        if responses is not None and responses[i][self.k]:
            text = str(responses[i][self.k])
        text, finish = shape(text, body)
        n = choice_count(body)
        parts = pieces(text)
        wait_s = float(self.ds.latency_ms[i, self.k]) * self.latency_scale / 1000.0 / len(parts)
        ttft_ms = None
        for p, part in enumerate(parts):
            if wait_s > 0:
                await self.sleep(wait_s)
            if ttft_ms is None:
                ttft_ms = (time.perf_counter() - start) * 1000.0
            last = p == len(parts) - 1
            for index in range(n):
                yield Chunk(part, index=index, finish_reason=finish if last else None)
        yield Chunk(
            usage=Usage(
                prompt_tokens=max(1, int(len(prompt_key(body)) / CHARS_PER_TOKEN)),
                completion_tokens=n * max(1, int(len(text) / CHARS_PER_TOKEN)),
                latency_ms=(time.perf_counter() - start) * 1000.0,
                ttft_ms=ttft_ms,
                energy_j=n * float(self.ds.energy_j[i, self.k]),
                cost_usd=n * float(self.ds.cost_usd[i, self.k]),
                finish_reason=finish,
                model=self.model,
            )
        )

    # -- adapters: fake weights, real allocate-and-copy loads ----------------

    def _spec(self, name: str) -> FakeAdapterSpec:
        return self._store.specs.setdefault(name, FakeAdapterSpec(name, rank=self.adapter_rank))

    def load_adapter(self, name: str) -> float:
        with self._lock:
            if name in self._loaded:
                return 0.0
            self._spec(name)
            loaded, seconds = self._store.load(name)
            self._loaded[name] = loaded
            return seconds

    def unload_adapter(self, name: str) -> None:
        with self._lock:
            self._loaded.pop(name, None)

    def resident(self) -> tuple[str, ...]:
        return tuple(self._loaded)

    def adapter_bytes(self, name: str) -> int:
        with self._lock:
            return self._spec(name).nbytes


def build(arms: Sequence[ArmConfig], context: BuildContext) -> dict[str, ReplayBackend]:
    """One backend per arm: an arm replays its own column of the data set (its name's,
    else its model's)."""
    from learners.replay.dataset import dataset_for

    r = context.config.replay
    ds = dataset_for(r.dataset, r.synthetic_rows, r.seed)
    return {
        arm.name: ReplayBackend(
            ds,
            arm.name if arm.name in ds.models else arm.model,
            r.latency_scale,
            adapter_rank=context.adapter_rank,
        )
        for arm in arms
    }
