"""Reactive baselines: LRU (Ray Serve multiplexing, vLLM, SGLang), LFU, static top-K.

None of them is cache-aware: the router picks the best arm and the replica pages
it in. LRU evicts the least recently used adapter of the replica, LFU the least
frequently used (counts kept across evictions, ties by recency). Static pins, after
a warm-up epoch served by LRU, the most requested adapters (K per replica) and
from then on serves every other adapter with a transient load that is never kept.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from typing_extensions import override

from cache_manager.plan import ResidencyPlan
from cache_manager.planner import assign_to_replicas
from cache_manager.policies.base import AccessBook, PlanInputs, ResidencyPolicy, random_replica


class _Reactive(ResidencyPolicy):
    name = "reactive"
    cache_aware = False
    nonresident_width = 1.0

    def __init__(self) -> None:
        self.book = AccessBook()

    @override
    def plan(self, inputs: PlanInputs, rng: np.random.Generator) -> ResidencyPlan | None:
        return None

    @override
    def on_access(self, replica: str, adapter: str, now: float, hit: bool) -> None:
        self.book.record(replica, adapter, now)

    @override
    def miss_replica(
        self,
        adapter: str,
        residency: Mapping[str, tuple[str, ...]],
        capacity: Mapping[str, int],
        rng: np.random.Generator,
    ) -> str:
        return random_replica(residency, rng)

    @override
    def victim(
        self, replica: str, adapter: str, resident: tuple[str, ...], now: float
    ) -> str | None:
        return self.book.least_recent(replica, resident)

    @override
    def forced_arm(self, rng: np.random.Generator) -> str | None:
        return None


class LruPolicy(_Reactive):
    name = "lru"


class LfuPolicy(_Reactive):
    name = "lfu"

    @override
    def victim(
        self, replica: str, adapter: str, resident: tuple[str, ...], now: float
    ) -> str | None:
        return self.book.least_frequent(replica, resident)


class StaticTopKPolicy(_Reactive):
    name = "static"

    def __init__(self) -> None:
        super().__init__()
        self._pinned: dict[str, tuple[str, ...]] | None = None

    @override
    def plan(self, inputs: PlanInputs, rng: np.random.Generator) -> ResidencyPlan | None:
        if self._pinned is None:
            if inputs.epoch == 0:
                return None  # warm-up: count popularity under LRU
            slots = sum(inputs.capacity.values())
            ranked = sorted(inputs.arms, key=lambda a: -self.book.total.get(a, 0))[:slots]
            index = {a: i for i, a in enumerate(inputs.arms)}
            current = {r: [index[a] for a in res] for r, res in inputs.residency.items()}
            placed = assign_to_replicas([index[a] for a in ranked], current, inputs.capacity)
            self._pinned = {r: tuple(inputs.arms[i] for i in arms) for r, arms in placed.items()}
        return ResidencyPlan(inputs.epoch, inputs.start, dict(self._pinned), policy=self.name)

    @override
    def victim(
        self, replica: str, adapter: str, resident: tuple[str, ...], now: float
    ) -> str | None:
        return None if self._pinned is not None else self.book.least_recent(replica, resident)
