"""Invariants under arbitrary plans, failures, clock jumps and demand paging."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cache_manager.clock import ManualClock
from cache_manager.controller import CacheController, apply_plan
from cache_manager.demand import DemandTracker
from cache_manager.epochs import DoublingEpochs, FixedEpochs
from cache_manager.executor import InMemoryExecutor
from cache_manager.paging import PagingCostModel
from cache_manager.plan import PlanStatus, ResidencyPlan
from cache_manager.policies.polar import PolarParams, PolarPolicy
from cache_manager.scorer import LinUCBScorer

ARMS = tuple(f"a{i}" for i in range(6))
replica_caps = st.dictionaries(st.sampled_from(["r0", "r1", "r2"]), st.integers(0, 3), min_size=1)
adapters = st.sampled_from(ARMS)


def _assert_within_capacity(ex: InMemoryExecutor) -> None:
    for r in ex.replicas():
        resident = ex.resident(r)
        assert len(resident) <= ex.capacity(r)
        assert len(set(resident)) == len(resident)


@settings(max_examples=150, deadline=None)
@given(
    caps=replica_caps,
    plan=st.dictionaries(st.sampled_from(["r0", "r1", "r2", "rX"]), st.lists(adapters, max_size=5)),
    fail_seed=st.integers(0, 2**16),
    fail_rate=st.floats(0, 1),
)
def test_any_plan_never_exceeds_capacity_and_reports_its_outcome(
    caps, plan, fail_seed, fail_rate
) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(fail_seed)
    ex = InMemoryExecutor(
        caps, load=lambda _r, _a: 0.0, fail=lambda *_: bool(rng.random() < fail_rate)
    )
    outcomes = apply_plan(ResidencyPlan(0, 0.0, {r: tuple(a) for r, a in plan.items()}), ex)
    _assert_within_capacity(ex)
    assert {o.replica for o in outcomes} == set(plan)
    for o in outcomes:
        if o.ok:
            assert set(o.resident) == set(o.planned)
        if o.replica in caps:
            assert set(o.resident) == set(ex.resident(o.replica))


@settings(max_examples=60, deadline=None)
@given(
    caps=replica_caps,
    doubling=st.booleans(),
    steps=st.lists(
        st.tuples(
            st.floats(0, 25),  # clock advance
            st.lists(adapters, max_size=4),  # requests paged in on demand
            st.booleans(),  # does the next epoch's executor call fail?
        ),
        min_size=1,
        max_size=25,
    ),
    seed=st.integers(0, 2**16),
)
def test_controller_records_every_epoch_and_respects_capacity(caps, doubling, steps, seed) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    failing = {"now": False}
    ex = InMemoryExecutor(
        caps, load=lambda _r, _a: 0.001, fail=lambda op, _r, _a: failing["now"] and op == "prefetch"
    )
    clock = ManualClock()
    schedule = DoublingEpochs(2.0) if doubling else FixedEpochs(3.0)
    paging = PagingCostModel(adapter_mib=dict.fromkeys(ARMS, 32.0))
    ctl = CacheController(
        PolarPolicy(PolarParams(forced_exploration=True)),
        ex,
        schedule,
        clock,
        DemandTracker(2, 3, 5.0, rng, warmup=2),
        LinUCBScorer(ARMS, 3),
        ARMS,
        paging,
        rng,
    )
    for advance, requests, fail in steps:
        clock.now += advance
        failing["now"] = fail
        ctl.tick()
        failing["now"] = False
        _assert_within_capacity(ex)
        for adapter in requests:
            ctl.observe(rng.normal(size=(1, 3)))
            replica = ctl.choose_replica(adapter)
            ctl.page_in(replica, adapter)
            ctl.record_access(replica, adapter, False)
            _assert_within_capacity(ex)
    # every epoch opened so far has exactly one record, applied or failed
    assert [r.epoch for r in ctl.history] == list(range(ctl.epoch + 1))
    for record in ctl.history:
        assert record.status in (PlanStatus.APPLIED, PlanStatus.FAILED)
        if record.status is PlanStatus.APPLIED:
            assert record.plan is not None and all(o.ok for o in record.replicas)
        else:
            assert record.reason
