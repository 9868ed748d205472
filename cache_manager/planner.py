"""The slow scale: which adapters each replica keeps for the next epoch.

The planned utility of a set S of resident adapters is a coverage objective over
context clusters: cluster c, expected to send ``w_c`` requests in the epoch, gets the
best optimistic value among S (``V[c, a] = mean + bonus * width`` at the cluster's
centroid), or, if paging in is better, ``max_a V[c, a] - penalty[a]``. That is
monotone submodular, so the greedy choice is within 1 - 1/e of the best set. A
newly loaded adapter is charged ``churn_weight`` page-ins, so the plan only moves
when moving pays. Chosen adapters stay on the replica that already holds them.

Requests that name their adapter (``direct``: expected such requests per adapter)
are not routed by value: keeping their adapter saves each of them a page-in
(``penalty[a]``), a modular term added to the coverage, so the sum stays monotone
submodular and the greedy bound holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GreedyPlan:
    residency: dict[str, list[int]]  # replica -> arm indices
    utility: np.ndarray  # (N,) standalone planned utility per arm, reward units
    gain: np.ndarray  # (C, N) per-cluster value over the fallback, per request
    explore: list[int]


def fallback_value(values: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    """Per cluster: what the router gets by paging in its best adapter."""
    return np.asarray((values - penalty[None, :]).max(axis=1))


def greedy_plan(
    values: np.ndarray,
    demand: np.ndarray,
    penalty: np.ndarray,
    current: Mapping[str, Sequence[int]],
    capacity: Mapping[str, int],
    churn_weight: float = 1.0,
    explore: int | None = None,
    direct: np.ndarray | None = None,
) -> GreedyPlan:
    """Choose per replica up to ``capacity`` arms; ``explore`` is forced into a slot.
    ``direct``: (N,) expected requests in the epoch that name each arm's adapter."""
    n_clusters, n_arms = values.shape
    direct = np.zeros(n_arms) if direct is None else direct
    if demand.shape != (n_clusters,) or penalty.shape != (n_arms,) or direct.shape != (n_arms,):
        raise ValueError("shape mismatch between values, demand, penalty and direct")
    resident_now = {a for arms in current.values() for a in arms}
    fallback = fallback_value(values, penalty) if n_clusters else np.zeros(0)
    gain = np.maximum(values - fallback[:, None], 0.0)
    saved = direct * penalty  # page-ins that keeping the named adapter saves
    utility = demand @ gain + saved
    churn = np.array(
        [0.0 if a in resident_now else churn_weight * penalty[a] for a in range(n_arms)]
    )

    slots = sum(capacity.values())
    cover = fallback.copy()
    chosen: list[int] = []
    taken = np.zeros(n_arms, dtype=bool)
    while len(chosen) < slots:
        marginal = demand @ np.maximum(values - cover[:, None], 0.0) + saved - churn
        marginal[taken] = -np.inf
        best = int(np.argmax(marginal))
        if marginal[best] <= 0.0:
            break
        chosen.append(best)
        taken[best] = True
        cover = np.maximum(cover, values[:, best])
    # keeping what is already loaded costs nothing: fill spare slots with it
    for a in sorted(resident_now - set(chosen), key=lambda a: -utility[a]):
        if len(chosen) >= slots:
            break
        chosen.append(a)
    forced: list[int] = []
    if explore is not None and explore not in chosen and slots > 0:
        if len(chosen) >= slots:
            chosen.pop(int(np.argmin([utility[a] for a in chosen])))
        chosen.append(explore)
        forced.append(explore)
    return GreedyPlan(assign_to_replicas(chosen, current, capacity), utility, gain, forced)


def assign_to_replicas(
    chosen: Sequence[int], current: Mapping[str, Sequence[int]], capacity: Mapping[str, int]
) -> dict[str, list[int]]:
    plan: dict[str, list[int]] = {r: [] for r in capacity}
    wanted = set(chosen)
    placed: set[int] = set()
    for replica, arms in current.items():  # stay where already loaded
        if replica not in plan:
            continue
        for a in arms:
            if a in wanted and a not in placed and len(plan[replica]) < capacity[replica]:
                plan[replica].append(a)
                placed.add(a)
    for a in chosen:
        if a in placed:
            continue
        replica = max(plan, key=lambda r: capacity[r] - len(plan[r]))
        if capacity[replica] - len(plan[replica]) <= 0:
            break
        plan[replica].append(a)
        placed.add(a)
    return plan
