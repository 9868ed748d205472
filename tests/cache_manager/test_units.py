from __future__ import annotations

import numpy as np
import pytest

from cache_manager.config import (
    POLICY_REGISTRY,
    CacheConfig,
    LruConfig,
    PolarConfig,
    PolarPlusConfig,
    parse_policy,
)
from cache_manager.epochs import DoublingEpochs, FixedEpochs
from cache_manager.executor import CapacityError, InMemoryExecutor
from cache_manager.fake_adapter import FakeAdapterSpec, FakeAdapterStore
from cache_manager.paging import PagingCostModel
from cache_manager.planner import greedy_plan
from cache_manager.policies.baselines import LfuPolicy, LruPolicy
from cache_manager.router import ArmPrices, ArmTerms, CacheAwareRouter, PagingRule
from cache_manager.scorer import LinUCBScorer


def test_router_subtracts_penalty_only_off_cache() -> None:
    mean = np.array([0.9, 0.85, 0.2])
    width = np.zeros(3)
    resident = np.array([False, True, True])
    penalty = np.array([0.1, 0.1, 0.1])
    aware, plain = PagingRule(cache_aware=True), PagingRule(cache_aware=False)
    assert CacheAwareRouter(rule=aware).choose(mean, width, resident, penalty) == 1
    assert CacheAwareRouter(rule=plain).choose(mean, width, resident, penalty) == 0
    assert aware.terms(resident, penalty)[0].tolist() == [0.1, 0.0, 0.0]
    assert plain.terms(resident, penalty)[0].tolist() == [0.0, 0.0, 0.0]


def test_router_can_explore_only_within_the_cache() -> None:
    mean, width = np.array([0.5, 0.5]), np.array([1.0, 0.0])
    resident, penalty = np.array([False, True]), np.array([0.05, 0.05])
    assert CacheAwareRouter(alpha=1.0).choose(mean, width, resident, penalty) == 0
    narrow = PagingRule(nonresident_width=0.0)
    assert CacheAwareRouter(alpha=1.0, rule=narrow).choose(mean, width, resident, penalty) == 1


def test_policies_carry_their_paging_rule() -> None:
    assert parse_policy("polar").build().rule == PagingRule(True, 0.5)
    assert parse_policy("polar+").build().rule == PagingRule(True, 0.5)
    assert parse_policy("lru").build().rule == PagingRule(False, 1.0)


def test_arm_prices_name_the_arms_the_rule_changes() -> None:
    paging = PagingCostModel(adapter_mib={"x": 100.0, "y": 200.0}, latency_weight_per_s=5.0)
    prices = ArmPrices(PagingRule(True, 0.5), {"m:x": "x", "m:y": "y", "n:x": "x"}, paging)
    terms = prices.terms({"y"})
    assert terms.penalties == {"m:x": paging.penalty("x"), "n:x": paging.penalty("x")}
    assert terms.width_scale == {"m:x": 0.5, "n:x": 0.5}
    assert prices.terms({"x", "y"}) == ArmTerms()
    plain = ArmPrices(PagingRule(False), {"m:x": "x"}, paging)
    assert not plain.active and plain.terms(()) == ArmTerms()


def test_cache_config_takes_a_policy_by_name_or_mapping() -> None:
    assert isinstance(CacheConfig().policy, LruConfig)
    assert isinstance(CacheConfig.model_validate({"policy": "polar"}).policy, PolarConfig)
    cfg = CacheConfig.model_validate({"policy": {"kind": "polar+", "initial_epoch_s": 10}})
    assert isinstance(cfg.policy, PolarPlusConfig) and cfg.policy.initial_epoch_s == 10
    with pytest.raises(ValueError):
        CacheConfig.model_validate({"policy": {"kind": "polar", "epoch_s": 0}})
    paging = cfg.paging_model(["a"])
    assert paging.adapter_mib["a"] == FakeAdapterSpec("a", rank=cfg.adapter_rank).nbytes / 2**20
    assert paging.latency_weight_per_s == cfg.latency_weight_per_s


def test_epoch_schedules() -> None:
    assert [FixedEpochs(5).length(e) for e in range(3)] == [5, 5, 5]
    assert [DoublingEpochs(1).length(e) for e in range(4)] == [1, 2, 4, 8]
    assert [DoublingEpochs(1, max_s=3).length(e) for e in range(4)] == [1, 2, 3, 3]
    with pytest.raises(ValueError):
        FixedEpochs(0)


def test_planner_covers_demand_and_respects_capacity() -> None:
    # 3 clusters, 4 arms: arm k is best on cluster k, arm 3 mediocre everywhere
    values = np.array([[0.9, 0.3, 0.3, 0.5], [0.3, 0.9, 0.3, 0.5], [0.3, 0.3, 0.9, 0.5]])
    demand = np.array([100.0, 50.0, 1.0])
    penalty = np.full(4, 0.2)
    plan = greedy_plan(values, demand, penalty, {"r0": [], "r1": []}, {"r0": 1, "r1": 1})
    chosen = sorted(a for arms in plan.residency.values() for a in arms)
    assert chosen == [0, 1]
    assert all(len(v) <= 1 for v in plan.residency.values())


def test_planner_keeps_resident_adapters_in_place() -> None:
    values = np.array([[0.9, 0.3], [0.3, 0.9]])
    plan = greedy_plan(
        values, np.array([10.0, 10.0]), np.full(2, 0.1), {"r0": [1], "r1": [0]}, {"r0": 1, "r1": 1}
    )
    assert plan.residency == {"r0": [1], "r1": [0]}


def test_planner_forced_exploration_takes_a_slot() -> None:
    values = np.array([[0.9, 0.3, 0.1]])
    plan = greedy_plan(values, np.array([10.0]), np.full(3, 0.1), {"r0": []}, {"r0": 1}, explore=2)
    assert plan.residency == {"r0": [2]} and plan.explore == [2]


def test_executor_enforces_capacity() -> None:
    ex = InMemoryExecutor({"r": 1}, load=lambda _r, _a: 0.5)
    assert ex.prefetch("r", "a") == 0.5
    assert ex.prefetch("r", "a") == 0.0  # already resident
    with pytest.raises(CapacityError):
        ex.prefetch("r", "b")
    ex.evict("r", "a")
    assert ex.resident("r") == () and not ex.where["a"]


def test_lru_and_lfu_victims() -> None:
    lru, lfu = LruPolicy(), LfuPolicy()
    for t, a in enumerate(["x", "x", "x", "y", "z"]):
        lru.on_access("r", a, float(t), True)
        lfu.on_access("r", a, float(t), True)
    assert lru.victim("r", "w", ("x", "y", "z"), 9.0) == "x"
    assert lfu.victim("r", "w", ("x", "y", "z"), 9.0) == "y"


def test_linucb_scorer_learns_linear_rewards_through_the_learner() -> None:
    rng = np.random.default_rng(0)
    theta = np.array([[0.2, 0.5], [0.8, -0.3]])
    scorer = LinUCBScorer(("x", "y"), 2, ridge=1.0)
    X = rng.normal(size=(400, 2))
    arms = rng.integers(0, 2, size=400)
    scorer.update(X, arms, (X * theta[arms]).sum(1) + 0.01 * rng.normal(size=400))
    mean, width = scorer.estimate(np.eye(2))
    np.testing.assert_allclose(mean, theta.T, atol=0.05)
    assert (width < 0.2).all() and scorer.pulls().tolist() == np.bincount(arms).tolist()
    # the columns are the learner's own estimates, in the scorer's arm order
    m, w = scorer.learner.estimates(np.array([1.0, 0.0]), ["y", "x"])
    np.testing.assert_allclose(m, mean[0, ::-1])
    np.testing.assert_allclose(w, width[0, ::-1])


def test_policy_registry_and_discriminated_union() -> None:
    assert set(POLICY_REGISTRY) == {"polar", "polar+", "lru", "lfu", "static", "oracle"}
    cfg = parse_policy({"kind": "polar+", "initial_epoch_s": 1.0, "max_epoch_s": None})
    assert isinstance(cfg, PolarPlusConfig) and cfg.max_epoch_s is None
    with pytest.raises(ValueError):
        parse_policy({"kind": "polar", "bogus": 1})
    with pytest.raises(ValueError):
        parse_policy("oracle").build()  # needs hindsight


def test_fake_adapter_load_copies_the_weights() -> None:
    spec = FakeAdapterSpec("a", rank=2, hidden=64, layers=2, target_modules=2)
    ticks = iter([0.0, 0.25])
    store = FakeAdapterStore({"a": spec}, np.random.default_rng(0), timer=lambda: next(ticks))
    loaded, seconds = store.load("a")
    assert seconds == 0.25 and loaded.nbytes == spec.nbytes == 2 * 2 * 2 * 2 * 64 * 2
    np.testing.assert_array_equal(loaded.weights, store.host_copy("a"))
    assert loaded.weights is not store.host_copy("a")


def test_paging_penalty_is_expected_load_times_weight(paging) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    samples = np.array([paging.sample_s("a0", rng) for _ in range(4000)])
    assert np.median(samples) == pytest.approx(paging.median_s("a0"), rel=0.03)
    assert samples.mean() == pytest.approx(paging.expected_s("a0"), rel=0.03)
    assert paging.penalty("a0") == pytest.approx(5.0 * paging.expected_s("a0"))
