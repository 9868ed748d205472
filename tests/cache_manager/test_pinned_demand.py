"""Requests that name their adapter: direct demand in POLAR's plan and admission.

Without a model: the demand tracker, the planner, and the drifting pinned trace of
``bench/bench_residency.py`` replayed through the controller (``run_pinned``).
"""

from __future__ import annotations

import numpy as np
import pytest

from cache_manager.config import parse_policy
from cache_manager.demand import DemandTracker
from cache_manager.planner import greedy_plan
from cache_manager.policies.base import admission_victim
from cache_manager.sim.pinned import drifting_trace, run_pinned

ARMS = [f"a{i}" for i in range(6)]
WARMUP = [k % len(ARMS) for k in range(36)]  # every adapter in turn, as the bench's


def test_pinned_requests_are_adapter_demand_not_cluster_demand():
    tracker = DemandTracker(2, 2, half_life_s=1.0, rng=np.random.default_rng(0), warmup=2)
    X = np.array([[0.0, 0.0], [0.0, 0.1], [5.0, 5.0], [5.0, 5.1]])
    tracker.observe(X, now=0.0)  # seeds two clusters
    tracker.observe_pinned(np.array([3, 3, 1, 3]), now=0.0)
    share, pinned = tracker.share(), tracker.pinned_share(4)
    assert share.sum() + pinned.sum() == pytest.approx(1.0)
    assert share == pytest.approx([0.25, 0.25])
    assert pinned == pytest.approx([0.0, 0.125, 0.0, 0.375])
    tracker.observe_pinned(np.array([0]), now=1.0)  # one half-life later
    total = 8 * 0.5 + 1
    assert tracker.pinned_share(4) == pytest.approx([1 / total, 0.5 / total, 0.0, 1.5 / total])
    assert tracker.share() == pytest.approx([1 / total, 1 / total])
    assert tracker.centroids is not None and len(tracker.centroids) == 2  # untouched


def test_the_plan_keeps_the_adapters_that_pinned_requests_name():
    values, demand = np.zeros((0, 4)), np.zeros(0)  # no routed demand: every request pins
    penalty = np.full(4, 0.05)
    kept = greedy_plan(values, demand, penalty, {"r": [0, 1]}, {"r": 2})
    assert sorted(kept.residency["r"]) == [0, 1]  # nothing to gain by moving
    direct = np.array([0.5, 0.0, 4.0, 3.0])  # requests expected to name each adapter
    moved = greedy_plan(values, demand, penalty, {"r": [0, 1]}, {"r": 2}, direct=direct)
    assert sorted(moved.residency["r"]) == [2, 3]
    assert moved.utility == pytest.approx(direct * penalty)
    # moving is charged a page-in per new adapter: one request more does not pay it
    small = greedy_plan(
        values, demand, penalty, {"r": [0, 1]}, {"r": 2}, direct=np.array([1, 1, 1.5, 0.0])
    )
    assert sorted(small.residency["r"]) == [0, 1]


def test_admission_replaces_the_least_valued_only_for_more():
    values = {"a": 0.3, "b": 0.1, "c": 0.2}
    assert admission_victim(("a", "b"), "c", values) == "b"
    assert admission_victim(("a", "c"), "b", values) is None
    assert admission_victim(("a", "b"), "x", values) is None  # unknown: worth nothing
    assert admission_victim(("a", "b"), "c", None) is None
    assert admission_victim(("b", "d"), "c", {"c": 1.0}) == "b"  # equals: the older one


def test_polar_follows_a_drifting_pinned_trace_and_pages_less_than_lru():
    """The bench's trace (the hot pair moves every 50 requests; the rest scan the cold
    adapters) at 4 requests/s with the bench's settings: POLAR's residency moves with
    the hot pair (admission between plans, the plans after it), and its page-ins,
    prefetches included, stay under 0.75x LRU's on each seed."""
    polar = parse_policy({"kind": "polar", "epoch_s": 1.0})
    phase_s = 50 / 4.0
    for seed in range(3):
        trace = drifting_trace(seed, 200, len(ARMS), 4)
        kw = {"warmup": WARMUP, "pause_s": 4.0, "half_life_s": 0.75, "rate_per_s": 4.0}
        lru = run_pinned(trace, ARMS, parse_policy("lru"), **kw)  # type: ignore[arg-type]
        run = run_pinned(trace, ARMS, polar, **kw)  # type: ignore[arg-type]
        assert run.max_resident <= 2 and lru.max_resident <= 2
        assert run.page_ins < 0.75 * lru.page_ins, (seed, run.page_ins, lru.page_ins)
        start = run.plans[0][0]
        for phase, hot in enumerate([("a0", "a1"), ("a2", "a3"), ("a4", "a5"), ("a0", "a1")]):
            end = start + phase_s * (phase + 1)
            late = [sorted(p) for t, p in run.plans if end - phase_s / 4 <= t < end]
            assert late and all(p == list(hot) for p in late), (seed, phase, late)
