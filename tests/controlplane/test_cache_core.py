"""The running cache controller without Ray: snapshots and decisions from Postgres in,
plans applied through an in-memory executor, epochs recorded, gateways pricing paging."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import numpy as np
import pytest
from sqlalchemy import text

from cache_manager.clock import ManualClock
from cache_manager.executor import InMemoryExecutor
from controlplane.cache_core import CacheCore, PoolExecutor
from controlplane.config import parse_config
from controlplane.gateway_core import GatewayCore
from controlplane.learner_loop import arm_records, snapshot_learner
from controlplane.tokens import FeedbackTokens
from feedback.records import DecisionRecord
from feedback.repositories import arms as arms_repo
from feedback.repositories import reports, request_log, snapshots
from feedback.repositories import residency as residency_repo
from learners import RewardEvent

TASKS = ("t0", "t1")
ADAPTERS = ("a0", "a1", "a2")
POOL = "pool-small"
GOOD = {("a0", "t0"): 0.9, ("a1", "t1"): 0.9}  # everything else 0.2


def _config():
    return parse_config(
        {
            "arms": [{"name": f"small:{a}", "model": "small", "adapter": a} for a in ADAPTERS],
            "featurizer": {"dim": 32, "tasks": list(TASKS)},
            "learner": {"kind": "linucb", "alpha": 0.1},
            "cache": {
                "policy": {"kind": "polar", "epoch_s": 1.0},
                "slots_per_replica": 2,
                "clusters": 2,
            },
        },
        "test",
    )


def _context(cfg, task: str) -> np.ndarray:
    body = {"messages": [{"role": "user", "content": "hi"}], "metadata": {"task": task}}
    return cfg.featurizer.featurize(body)


def _publish_learned_policy(engine, cfg) -> None:
    """A snapshot of a learner that knows each hot adapter is good for its own task."""
    learner = snapshot_learner(cfg, None)
    for _ in range(20):
        learner.update(
            [
                RewardEvent(_context(cfg, t), f"small:{a}", np.array([GOOD.get((a, t), 0.2), 0, 0, 0]))
                for a in ADAPTERS
                for t in TASKS
            ]
        )  # fmt: skip
    with engine.begin() as conn:
        arms_repo.upsert_arms(conn, arm_records(cfg))
        snapshots.save_snapshot(
            conn, learner_kind=learner.kind, config={}, state=learner.state_bytes(),
            watermark=0, events_applied=0, summary={},
        )  # fmt: skip


def _decide(engine, cfg, n: int, rng: np.random.Generator) -> None:
    """``n`` logged decisions, half per task, each on a random adapter arm."""
    now = datetime.now(UTC)
    records = [
        DecisionRecord(
            uuid.uuid4(), now, "auto", f"small:{ADAPTERS[int(rng.integers(3))]}",
            _context(cfg, TASKS[i % 2]).astype(np.float32), 1.0, 1, "linucb",
        )
        for i in range(n)
    ]  # fmt: skip
    with engine.begin() as conn:
        request_log.write_decisions(conn, records)


def test_cache_core_plans_records_and_gateways_price_what_is_resident(engine):
    cfg = _config()
    _publish_learned_policy(engine, cfg)
    rng = np.random.default_rng(0)
    clock = ManualClock(100.0)
    executor = InMemoryExecutor({POOL: 2}, load=lambda _r, _a: 0.01)
    traffic = {POOL: (0, 0)}
    core = CacheCore(
        cfg,
        engine,
        executor,
        {f"small:{a}": POOL for a in ADAPTERS},
        traffic=lambda r: traffic[r],
        clock=clock,
    )
    gateway = GatewayCore(cfg, engine, _no_pool, FeedbackTokens("unit-secret-0123456789", 60))
    everywhere = {f"small:{a}" for a in ADAPTERS}
    assert set(gateway.paging.penalties) == set(gateway.paging.width_scale) == everywhere

    _decide(engine, cfg, 60, rng)  # enough to seed the demand clusters
    core.step()  # epoch 0 opens, with no request rate measured yet
    assert core.scorer.version == 1 and core.controller.epoch == 0
    _decide(engine, cfg, 60, rng)
    clock.advance(1.0)
    core.step()  # epoch 1: planned from the learner's values and the observed demand
    assert core.controller.epoch == 1
    assert set(executor.resident(POOL)) == {"a0", "a1"}
    traffic[POOL] = (7, 2)
    clock.advance(1.0)
    core.step()  # epoch 2: the traffic since epoch 1's record settles into its row

    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT epoch, replica, status, adapters, hits, misses FROM residency_epochs")
        ).all()
    by_epoch = {r.epoch: r for r in rows}
    assert set(by_epoch) == {0, 1, 2} and all(r.replica == POOL for r in rows)
    assert all(r.status == "applied" for r in rows)
    assert set(by_epoch[1].adapters) == {"a0", "a1"}
    assert (by_epoch[1].hits, by_epoch[1].misses) == (7, 2)
    status = core.status()
    assert status["epochs"] == status["applied"] == 3
    assert set(status["residency"][POOL]) == {"a0", "a1"}
    with engine.connect() as conn:  # /metrics' totals, from memory, match the table's
        (db,) = reports.residency_totals_since(conn)
    assert status["totals"] == {POOL: {k: db[k] for k in ("page_ins", "hits", "misses")}}
    assert status["totals"][POOL]["hits"] == 7

    # the gateway reads the applied plan and prices only the adapter resident nowhere
    assert gateway.refresh_policy() and gateway.policy.version == 1
    gateway.refresh_residency()
    paging = cfg.cache.paging_model(ADAPTERS)
    assert gateway.paging.penalties == {"small:a2": paging.penalty("a2")}
    assert gateway.paging.width_scale == {"small:a2": 0.5}  # POLAR's nonresident_width


def _pin(engine, cfg, adapters: list[str]) -> None:
    """Decisions of requests that named their adapter arm (``model: small:a2``)."""
    now = datetime.now(UTC)
    records = [
        DecisionRecord(
            uuid.uuid4(), now, f"small:{a}", f"small:{a}",
            _context(cfg, TASKS[0]).astype(np.float32), 1.0, 1, "linucb",
        )
        for a in adapters
    ]  # fmt: skip
    with engine.begin() as conn:
        request_log.write_decisions(conn, records)


def test_pinned_requests_move_the_plan_and_the_replicas_admission(engine):
    """Requests that name their adapter are demand for it: the plan moves to the adapters
    they name, and the replicas are handed admission values that rank them first."""
    cfg = _config()
    _publish_learned_policy(engine, cfg)
    clock = ManualClock(100.0)
    executor = InMemoryExecutor({POOL: 2}, load=lambda _r, _a: 0.01)
    handed: list[dict[str, float]] = []
    core = CacheCore(
        cfg,
        engine,
        executor,
        {f"small:{a}": POOL for a in ADAPTERS},
        clock=clock,
        admit=lambda values: handed.append(dict(values)),
    )
    assert core.pinned_adapter("small:a2") == "a2" and core.pinned_adapter("auto") is None
    executor.prefetch(POOL, "a0")
    executor.prefetch(POOL, "a1")
    _pin(engine, cfg, ["a2"] * 20 + ["a1"] * 10)
    core.step()  # epoch 0: no request rate measured yet
    _pin(engine, cfg, ["a2"] * 20 + ["a1"] * 10)
    clock.advance(1.0)
    core.step()  # epoch 1: a0, named by no request, makes way for a2
    assert set(executor.resident(POOL)) == {"a1", "a2"}
    assert handed and handed[-1]["a2"] > handed[-1]["a1"] > handed[-1]["a0"] == 0.0
    assert core.controller.demand.centroids is None  # no routed request: no clusters
    n = len(handed)
    core.step()  # nothing new: the same values are not handed out again
    assert len(handed) == n


def test_lru_runs_no_controller_and_prices_nothing(engine):
    cfg = parse_config({**_config().model_dump(mode="json"), "cache": {"policy": "lru"}}, "test")
    assert not cfg.cache_planned
    gateway = GatewayCore(cfg, engine, _no_pool, FeedbackTokens("unit-secret-0123456789", 60))
    assert not gateway.prices.active
    assert gateway.paging.penalties == {} and gateway.paging.width_scale == {}


class _Replica:
    """What a pool replica answers the executor (its registry, here a dict)."""

    def __init__(self) -> None:
        self.held: list[str] = []
        self.stats = {
            "hits": 3,
            "misses": 1,
            "adapter_loads": {"a0": {"median_ms": 40.5, "loads": 3.0}},
        }

    def resident(self) -> list[str]:
        return list(self.held)

    def prefetch(self, adapter: str) -> float:
        self.held.append(adapter)
        return 0.25

    def evict(self, adapter: str) -> None:
        self.held.remove(adapter)

    def residency_stats(self) -> dict:
        return self.stats


def test_pool_executor_makes_the_injected_calls():
    replica = _Replica()
    executor = PoolExecutor({POOL: replica}, capacity=2)
    assert executor.replicas() == (POOL,) and executor.capacity(POOL) == 2
    assert executor.prefetch(POOL, "a0") == 0.25 and executor.resident(POOL) == ("a0",)
    executor.evict(POOL, "a0")
    assert executor.resident(POOL) == () and executor.traffic(POOL) == (3, 1)
    assert executor.load_times(POOL) == {"a0": (40.5, 3)}


def test_paging_is_priced_at_the_load_times_the_replicas_measured(engine):
    cfg = _config()
    _publish_learned_policy(engine, cfg)
    clock = ManualClock(100.0)
    executor = InMemoryExecutor({POOL: 2, "pool-other": 2}, load=lambda _r, _a: 0.01)
    # two replicas measured a2: their medians' median is what is priced (80 ms)
    measured = {
        POOL: {"a0": (5.0, 4), "a2": (60.0, 2)},
        "pool-other": {"a2": (100.0, 1)},
    }
    core = CacheCore(
        cfg,
        engine,
        executor,
        {f"small:{a}": POOL for a in ADAPTERS},
        clock=clock,
        load_times=lambda r: measured[r],
    )
    estimated = cfg.cache.paging_model(ADAPTERS)
    assert core.controller.penalty == pytest.approx(estimated.penalties(list(ADAPTERS)))
    _decide(engine, cfg, 60, np.random.default_rng(1))
    core.step()  # epoch 0: the replicas' measurements land in adapter_load_times
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT replica, adapter, median_ms, loads FROM adapter_load_times")
        ).all()
        assert residency_repo.load_times_s(conn) == pytest.approx({"a0": 0.005, "a2": 0.08})
    assert sorted(tuple(r) for r in rows) == [
        ("pool-other", "a2", 100.0, 1),
        (POOL, "a0", 5.0, 4),
        (POOL, "a2", 60.0, 2),
    ]
    clock.advance(1.0)
    core.step()  # the next plan is priced at what was measured; a1 keeps its estimate
    priced = cfg.cache.paging_model(ADAPTERS, {"a0": 0.005, "a2": 0.08})
    assert core.controller.penalty == pytest.approx(priced.penalties(list(ADAPTERS)))
    assert priced.median_s("a2") == pytest.approx(0.08)
    assert priced.median_s("a1") == pytest.approx(estimated.median_s("a1"))
    assert priced.penalty("a2") > estimated.penalty("a2")  # 80 ms, not the rank's ~4 ms
    assert core.status()["load_ms"] == {"a0": 5.0, "a2": 80.0}

    # a gateway prices an adapter resident nowhere at the same measured time
    gateway = GatewayCore(cfg, engine, _no_pool, FeedbackTokens("unit-secret-0123456789", 60))
    gateway.refresh_residency()
    held = set(executor.resident(POOL)) | set(executor.resident("pool-other"))
    for a in set(ADAPTERS) - held:
        assert gateway.paging.penalties[f"small:{a}"] == pytest.approx(priced.penalty(a))
    measured[POOL]["a1"] = (30.0, 1)  # a new measurement reaches both at the next epoch
    clock.advance(1.0)
    core.step()
    gateway.refresh_residency()
    assert gateway.measured_s == pytest.approx({"a0": 0.005, "a1": 0.03, "a2": 0.08})


async def _no_pool(_arm: str, _body: dict) -> dict:
    raise AssertionError("no completion in these tests")
