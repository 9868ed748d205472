"""What a residency policy decides, and what it is given to decide it.

A policy answers four questions: which adapters each replica keeps at an epoch
boundary (:meth:`plan`, ``None`` for purely reactive policies), where a request
for an adapter resident nowhere is paged in (:meth:`miss_replica`), what a full
replica evicts for it (:meth:`victim`, ``None`` to serve it without admitting),
and whether the router must ignore its scores for exploration (:meth:`forced_arm`);
:meth:`admission` hands a replica the values :meth:`victim` compares, for replicas
that admit on their own between plans.
``cache_aware`` says whether the router subtracts the paging penalty.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from cache_manager.plan import ResidencyPlan

if TYPE_CHECKING:  # the scorers import the learners (compiled kernels): not for a config
    from cache_manager.scorer import ArmScorer


@dataclass(frozen=True)
class PlanInputs:
    epoch: int
    start: float  # clock time the epoch starts
    length_s: float
    expected_requests: float  # in the coming epoch, at the observed rate
    total_requests: int  # seen so far
    arms: tuple[str, ...]  # adapter ids, index-aligned with the scorer
    scorer: ArmScorer
    centroids: np.ndarray  # (C, d) context clusters
    share: np.ndarray  # (C,) share of recent demand
    live_share: Callable[[], np.ndarray]  # the tracker's share, read later in the epoch
    pinned: np.ndarray  # (N,) share of recent demand that named each adapter
    live_pinned: Callable[[], np.ndarray]  # the tracker's pinned share, read later
    penalty: np.ndarray  # (N,) paging penalty in reward units
    residency: Mapping[str, tuple[str, ...]]  # replica -> resident adapters now
    capacity: Mapping[str, int]


class ResidencyPolicy(Protocol):
    name: str
    cache_aware: bool
    nonresident_width: float  # the router's width multiplier (x alpha) for arms off the cache

    def plan(self, inputs: PlanInputs, rng: np.random.Generator) -> ResidencyPlan | None: ...

    def on_access(self, replica: str, adapter: str, now: float, hit: bool) -> None: ...

    def miss_replica(
        self,
        adapter: str,
        residency: Mapping[str, tuple[str, ...]],
        capacity: Mapping[str, int],
        rng: np.random.Generator,
    ) -> str: ...

    def victim(
        self, replica: str, adapter: str, resident: tuple[str, ...], now: float
    ) -> str | None:
        """Called only when ``replica`` is full; ``None`` serves ``adapter`` transiently."""
        ...

    def forced_arm(self, rng: np.random.Generator) -> str | None: ...

    def admission(self, now: float) -> Mapping[str, float] | None:
        """What a replica admits by between plans: a value per adapter; a full replica
        keeps a paged-in adapter in place of its least valued one when it is worth more
        (as :meth:`victim` decides). ``None``: the plan alone decides what stays."""
        del now  # reactive policies and plans without live values admit nothing
        return None


class AccessBook:
    """Per-replica access counts and recency, the state LRU and LFU need."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, str], float] = {}
        self.count: dict[tuple[str, str], int] = {}
        self.total: dict[str, int] = {}
        self._tick = 0

    def record(self, replica: str, adapter: str, now: float) -> None:
        self._tick += 1
        # recency is (time, arrival order) so equal clock readings still order
        self.last[replica, adapter] = now + self._tick * 1e-12
        self.count[replica, adapter] = self.count.get((replica, adapter), 0) + 1
        self.total[adapter] = self.total.get(adapter, 0) + 1

    def least_recent(self, replica: str, resident: tuple[str, ...]) -> str:
        return min(resident, key=lambda a: self.last.get((replica, a), -np.inf))

    def least_frequent(self, replica: str, resident: tuple[str, ...]) -> str:
        return min(
            resident,
            key=lambda a: (self.count.get((replica, a), 0), self.last.get((replica, a), -np.inf)),
        )


def admission_victim(
    resident: Sequence[str], adapter: str, values: Mapping[str, float] | None
) -> str | None:
    """What a full replica drops to keep ``adapter`` (``ResidencyPolicy.admission``): its
    least valued adapter (the first of equals; ``resident`` is least recently used
    first), if ``adapter`` is worth more; ``None``: no values, or not worth it."""
    if not values or not resident:
        return None
    low = min(resident, key=lambda a: values.get(a, 0.0))
    return low if values.get(adapter, 0.0) > values.get(low, 0.0) else None


def random_replica(residency: Mapping[str, tuple[str, ...]], rng: np.random.Generator) -> str:
    """What Serve's default router does for a model loaded nowhere: any replica."""
    replicas = list(residency)
    return replicas[int(rng.integers(len(replicas)))]
