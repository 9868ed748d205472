from __future__ import annotations

import numpy as np

from cache_manager.controller import CacheController
from cache_manager.epochs import FixedEpochs
from cache_manager.executor import InMemoryExecutor, ReplicaUnavailable
from cache_manager.plan import PlanStatus, ResidencyPlan
from cache_manager.policies.baselines import LruPolicy, StaticTopKPolicy
from cache_manager.policies.polar import PolarParams, PolarPolicy

ARMS = tuple(f"a{i}" for i in range(6))


class FixedPlanPolicy(LruPolicy):
    name = "fixed"

    def __init__(self, residency: dict[str, tuple[str, ...]]) -> None:
        super().__init__()
        self.residency = residency

    def plan(self, inputs, _rng):  # type: ignore[no-untyped-def]
        return ResidencyPlan(inputs.epoch, inputs.start, self.residency, policy=self.name)


def _controller(policy, executor, clock, tracker, scorer, paging, length=10.0):  # type: ignore[no-untyped-def]
    return CacheController(
        policy,
        executor,
        FixedEpochs(length),
        clock,
        tracker,
        scorer,
        ARMS,
        paging,
        np.random.default_rng(0),
    )


def test_epochs_advance_with_the_clock_and_plans_apply(
    executor, clock, tracker, scorer, paging
) -> None:  # type: ignore[no-untyped-def]
    ctl = _controller(PolarPolicy(PolarParams()), executor, clock, tracker, scorer, paging)
    assert [r.epoch for r in ctl.tick()] == [0]
    assert ctl.tick() == []  # same instant: nothing new
    clock.now = 9.99
    assert ctl.tick() == []
    clock.now = 10.0
    (record,) = ctl.tick()
    assert record.epoch == 1 and record.status is PlanStatus.APPLIED
    for replica, planned in record.plan.residency.items():  # type: ignore[union-attr]
        assert set(executor.resident(replica)) == set(planned)


def test_missed_epochs_are_recorded_failed(executor, clock, tracker, scorer, paging) -> None:  # type: ignore[no-untyped-def]
    ctl = _controller(PolarPolicy(PolarParams()), executor, clock, tracker, scorer, paging)
    ctl.tick()
    clock.now = 35.0
    records = ctl.tick()
    assert [(r.epoch, r.status) for r in records] == [
        (1, PlanStatus.FAILED),
        (2, PlanStatus.FAILED),
        (3, PlanStatus.APPLIED),
    ]
    assert records[0].reason and records[0].reason.startswith("missed")


def test_a_failing_replica_fails_the_epoch_not_the_others(clock, tracker, scorer, paging) -> None:  # type: ignore[no-untyped-def]
    def fail(op: str, replica: str, _adapter: str) -> bool:
        return replica == "r1" and op == "prefetch"

    ex = InMemoryExecutor({"r0": 2, "r1": 2}, load=lambda _r, _a: 0.0, fail=fail)
    ctl = _controller(
        FixedPlanPolicy({"r0": ("a0", "a1"), "r1": ("a2",)}), ex, clock, tracker, scorer, paging
    )
    (record,) = ctl.tick()
    assert record.status is PlanStatus.FAILED and "r1" in (record.reason or "")
    outcomes = {o.replica: o for o in record.replicas}
    assert outcomes["r0"].ok and not outcomes["r1"].ok
    assert outcomes["r1"].error and ReplicaUnavailable.__name__ in outcomes["r1"].error


def test_static_pins_the_most_requested(executor, clock, tracker, scorer, paging) -> None:  # type: ignore[no-untyped-def]
    policy = StaticTopKPolicy()
    ctl = _controller(policy, executor, clock, tracker, scorer, paging)
    assert ctl.tick() == []  # warm-up epoch has no plan
    for adapter, n in [("a3", 5), ("a1", 4), ("a0", 3), ("a5", 2), ("a2", 1)]:
        for _ in range(n):
            ctl.record_access("r0", adapter, False)
    clock.now = 10.0
    (record,) = ctl.tick()
    assert record.plan is not None and record.plan.adapters() == {"a3", "a1", "a0", "a5"}
    assert policy.victim("r0", "a2", executor.resident("r0"), 11.0) is None  # transient


def test_page_in_evicts_policy_victim_and_declines(
    executor, clock, tracker, scorer, paging
) -> None:  # type: ignore[no-untyped-def]
    ctl = CacheController(
        LruPolicy(), executor, None, clock, tracker, scorer, ARMS, paging, np.random.default_rng(0)
    )
    for t, a in enumerate(["a0", "a1", "a2"]):
        clock.now = float(t)
        assert ctl.page_in("r0", a) is not None
        ctl.record_access("r0", a, False)
    assert set(executor.resident("r0")) == {"a1", "a2"}
    assert ctl.tick() == []  # no schedule: purely reactive


def test_polar_plus_ends_the_epoch_early_when_demand_drifts(
    executor, clock, tracker, scorer, paging
) -> None:  # type: ignore[no-untyped-def]
    a, b = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    ends = []
    for drift_tv in (None, 0.05):
        clock.now = 0.0 if drift_tv is None else 100.0
        ctl = _controller(
            PolarPolicy(PolarParams(drift_tv=drift_tv)), executor, clock, tracker, scorer, paging
        )
        ctl.observe(np.array([a, a, b, b]))  # seeds the two clusters, half each
        ctl.tick()
        clock.advance(10.0)
        ctl.observe(np.tile(a if drift_tv is None else b, (40, 1)))  # demand moves to one
        (record,) = ctl.tick()
        assert record.status is PlanStatus.APPLIED
        ends.append(record.ends_at - record.started_at)
    assert ends[0] == 10.0  # no bound: the schedule's length
    assert 0.5 < ends[1] < 2.0  # ~0.45 of the mass moved in 10 s: 0.05 / 0.045 per s
