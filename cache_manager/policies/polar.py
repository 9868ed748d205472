"""POLAR and POLAR+: epoch-planned residency for a cache-aware router.

At each epoch boundary the policy scores every adapter at every context cluster
with the learner's optimistic estimate ``mean + bonus * width``, weighs clusters by
their observed demand scaled to the epoch's expected requests, and greedily keeps
the set of adapters with the highest coverage utility (see
:mod:`cache_manager.planner`). Between boundaries, a request the router still sends
to a non-resident adapter is paged in on the replica whose weakest adapter is
worth least, and admitted only if it is worth more than that one (live demand).

POLAR+ runs on doubling epochs and, each epoch, forces exploration of the least
observed adapter while it has fewer than ``explore_coef * sqrt(t / N)``
observations: the plan places it in a slot and the router sends it up to
``explore_coef * sqrt(epoch requests)`` requests, spread over its first tenth;
afterwards the adapter competes for its slot on live utility like any other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from cache_manager.plan import ResidencyPlan
from cache_manager.planner import fallback_value, greedy_plan
from cache_manager.policies.base import AccessBook, PlanInputs


@dataclass(frozen=True)
class PolarParams:
    bonus: float = 1.0  # exploration bonus on the width in planned utility
    churn_weight: float = 1.0  # page-ins charged per newly loaded adapter
    forced_exploration: bool = False
    explore_coef: float = 1.0
    nonresident_width: float = 0.5  # router's width multiplier (x alpha) for arms off the cache
    refresh_s: float = 1.0  # how stale the admission utilities may get between plans


class PolarPolicy:
    cache_aware = True

    def __init__(self, params: PolarParams, name: str = "polar") -> None:
        self.params = params
        self.name = name
        self.nonresident_width = params.nonresident_width
        self.book = AccessBook()
        self._arms: tuple[str, ...] = ()
        self._index: dict[str, int] = {}
        self._gain: np.ndarray | None = None  # (C, N) value over the fallback, per request
        self._utility: np.ndarray | None = None  # (N,) at plan time
        self._inputs: PlanInputs | None = None
        self._gain_at = -np.inf
        self._live_share = lambda: np.zeros(0)
        self._forced: str | None = None
        self._forced_left = 0
        self._forced_p = 0.0

    # --- planning -------------------------------------------------------------
    def _values(self, inputs: PlanInputs) -> tuple[np.ndarray, np.ndarray]:
        """(values (C, N), expected requests per cluster (C,)) for the coming epoch."""
        if len(inputs.centroids) == 0:
            return np.zeros((0, len(inputs.arms))), np.zeros(0)
        mean, width = inputs.scorer.estimate(inputs.centroids)
        return mean + self.params.bonus * width, inputs.share * inputs.expected_requests

    def _explore_candidate(self, inputs: PlanInputs) -> int | None:
        if not self.params.forced_exploration:
            return None
        pulls = inputs.scorer.pulls()
        floor = self.params.explore_coef * math.sqrt(inputs.total_requests / len(inputs.arms))
        arm = int(np.argmin(pulls))
        return arm if pulls[arm] < floor else None

    def plan(self, inputs: PlanInputs, rng: np.random.Generator) -> ResidencyPlan | None:
        self._arms = inputs.arms
        self._index = {a: i for i, a in enumerate(inputs.arms)}
        self._live_share = inputs.live_share
        values, demand = self._values(inputs)
        current = {r: [self._index[a] for a in res] for r, res in inputs.residency.items()}
        explore = self._explore_candidate(inputs)
        greedy = greedy_plan(
            values,
            demand,
            inputs.penalty,
            current,
            inputs.capacity,
            churn_weight=self.params.churn_weight,
            explore=explore,
        )
        self._inputs = inputs
        self._gain, self._utility, self._gain_at = greedy.gain, greedy.utility, inputs.start
        self._forced = inputs.arms[greedy.explore[0]] if greedy.explore else None
        budget = self.params.explore_coef * math.sqrt(max(inputs.expected_requests, 1.0))
        self._forced_left = math.ceil(budget) if self._forced else 0
        # spend the budget early in the epoch (first ~tenth), so the slot is then free
        self._forced_p = min(1.0, 10.0 * self._forced_left / max(inputs.expected_requests, 1.0))
        return ResidencyPlan(
            epoch=inputs.epoch,
            issued_at=inputs.start,
            residency={
                r: tuple(inputs.arms[i] for i in arms) for r, arms in greedy.residency.items()
            },
            utility={a: float(greedy.utility[i]) for i, a in enumerate(inputs.arms)},
            explore=(self._forced,) if self._forced else (),
            policy=self.name,
        )

    # --- between boundaries ---------------------------------------------------
    def _refresh_gain(self, now: float) -> None:
        """Re-read the learner's estimates (at most once per refresh_s) between plans."""
        inputs = self._inputs
        if inputs is None or now - self._gain_at < self.params.refresh_s:
            return
        if len(inputs.centroids):
            mean, width = inputs.scorer.estimate(inputs.centroids)
            values = mean + self.params.bonus * width
            fallback = fallback_value(values, inputs.penalty)
            self._gain = np.maximum(values - fallback[:, None], 0.0)
        self._gain_at = now

    def _live_utility(self, adapter: str) -> float:
        """Expected reward per request that keeping ``adapter`` resident saves, now."""
        if self._gain is None or adapter not in self._index:
            return 0.0
        share = self._live_share()
        column = self._gain[:, self._index[adapter]]
        if share.shape != column.shape:  # demand clusters not seeded yet
            return float(self._utility[self._index[adapter]]) if self._utility is not None else 0.0
        return float(share @ column)

    def on_access(self, replica: str, adapter: str, now: float, hit: bool) -> None:
        self.book.record(replica, adapter, now)

    def miss_replica(
        self,
        adapter: str,
        residency: Mapping[str, tuple[str, ...]],
        capacity: Mapping[str, int],
        rng: np.random.Generator,
    ) -> str:
        def cheapest_slot(replica: str) -> float:
            resident = residency[replica]
            if capacity[replica] == 0:
                return np.inf  # can hold nothing: last resort
            if len(resident) < capacity[replica]:
                return -np.inf
            return min(self._live_utility(a) for a in resident)

        return min(residency, key=cheapest_slot)

    def victim(
        self, replica: str, adapter: str, resident: tuple[str, ...], now: float
    ) -> str | None:
        if not resident:
            return None
        self._refresh_gain(now)
        weakest = min(
            resident,
            key=lambda a: (self._live_utility(a), self.book.last.get((replica, a), -np.inf)),
        )
        return weakest if self._live_utility(adapter) > self._live_utility(weakest) else None

    def forced_arm(self, rng: np.random.Generator) -> str | None:
        if self._forced_left <= 0 or self._forced is None or rng.random() >= self._forced_p:
            return None
        self._forced_left -= 1
        return self._forced
