"""CacheControllerService: POLAR epochs on Ray Serve (one replica).

Wires ``cache_manager.CacheController`` to the running system:

* demand: contexts of recent decisions, read from Postgres;
* value: the central learner's current estimates per adapter arm, from the
  latest policy snapshot (:class:`SnapshotScorer`);
* execution: each pool deployment is one replica whose own adapter registry
  prefetches and evicts (:class:`PoolExecutor`);
* record: every epoch's plan and outcome land in ``residency_epochs``
  (:class:`ResidencyTableSink`), where gateways read what is resident to price
  paging into their routing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle
from sqlalchemy import Engine

from cache_manager.config import parse_policy
from cache_manager.controller import CacheController
from cache_manager.demand import DemandTracker
from cache_manager.plan import EpochRecord
from controlplane.config import BanditConfig
from controlplane.residency import paging_model
from deployments.pool import pool_name
from feedback.database import make_engine
from feedback.repositories import request_log, residency, snapshots
from learners import Learner, load_learner

log = logging.getLogger(__name__)


class PoolExecutor:
    """``ResidencyExecutor`` over pool deployments (one replica each); blocking calls,
    made from the controller's own thread."""

    def __init__(self, pools: dict[str, DeploymentHandle], capacity: int, timeout_s: float = 30.0):
        self.pools = pools
        self._capacity = capacity
        self.timeout_s = timeout_s

    def replicas(self) -> Sequence[str]:
        return tuple(self.pools)

    def capacity(self, replica: str) -> int:
        return self._capacity

    def resident(self, replica: str) -> tuple[str, ...]:
        return tuple(self.pools[replica].resident.remote().result(timeout_s=self.timeout_s))

    def prefetch(self, replica: str, adapter: str) -> float:
        return float(self.pools[replica].prefetch.remote(adapter).result(timeout_s=self.timeout_s))

    def evict(self, replica: str, adapter: str) -> None:
        self.pools[replica].evict.remote(adapter).result(timeout_s=self.timeout_s)

    def traffic(self, replica: str) -> tuple[int, int]:
        """The replica's cumulative (hits, misses) of adapter requests."""
        s = self.pools[replica].residency_stats.remote().result(timeout_s=self.timeout_s)
        return int(s["hits"]), int(s["misses"])


class SnapshotScorer:
    """``ArmScorer`` from the central learner's latest snapshot (it learns; we read)."""

    def __init__(self, engine: Engine, adapter_arms: dict[str, str]) -> None:
        self.engine = engine
        self.adapters = tuple(adapter_arms)  # adapter -> arm name, in column order
        self.arm_names = [adapter_arms[a] for a in self.adapters]
        self.n_arms = len(self.adapters)
        self.dim = 0  # known once a snapshot is loaded
        self.version = -1
        self.learner: Learner | None = None

    def refresh(self) -> None:
        with self.engine.connect() as conn:
            if snapshots.latest_version(conn) == self.version:
                return
            snap = snapshots.latest_snapshot(conn)
        if snap is not None:
            self.learner, self.version = load_learner(snap["state"]), int(snap["version"])
            self.dim = self.learner.dim

    def estimate(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X = np.atleast_2d(X)
        mean = np.zeros((len(X), len(self.adapters)))
        width = np.ones((len(X), len(self.adapters)))
        estimates = getattr(self.learner, "estimates", None)
        if estimates is not None:
            for i, x in enumerate(X):
                mean[i], width[i] = estimates(x, self.arm_names)
        return mean, width

    def update(self, X: np.ndarray, arms: np.ndarray, rewards: np.ndarray) -> None:
        """The central learner learns from Postgres; nothing to do here."""

    def pulls(self) -> np.ndarray:
        summary = self.learner.arm_summary() if self.learner is not None else {}
        return np.array([summary.get(a, {}).get("pulls", 0.0) for a in self.arm_names])


class ResidencyTableSink:
    """One ``residency_epochs`` row per replica per epoch: plan, outcome, status, and the
    epoch's traffic. ``traffic(replica)`` gives the replica's cumulative (hits, misses);
    what accrued between two records is added to the earlier epoch's row (a miss is a
    page-in on the request path, on top of the plan's prefetches)."""

    def __init__(self, engine: Engine, traffic: Callable[[str], tuple[int, int]] | None = None):
        self.engine = engine
        self.traffic = traffic
        self.t0_wall = datetime.now(UTC)
        self.t0_mono = time.monotonic()
        self._last: dict[str, tuple[int, int, int]] = {}  # replica -> (epoch, hits, misses)

    def _wall(self, mono: float) -> datetime:
        return self.t0_wall + timedelta(seconds=mono - self.t0_mono)

    def _settle(self, conn: Any, replica: str, epoch: int) -> None:
        if self.traffic is None:
            return
        hits, misses = self.traffic(replica)
        last = self._last.get(replica)
        if last is not None:
            residency.add_epoch_traffic(
                conn, epoch=last[0], replica=replica, hits=hits - last[1], misses=misses - last[2]
            )
        self._last[replica] = (epoch, hits, misses)

    def record(self, record: EpochRecord) -> None:
        policy = record.plan.policy if record.plan is not None else ""
        with self.engine.begin() as conn:
            for out in record.replicas or ():
                self._settle(conn, out.replica, record.epoch)
                residency.record_residency_epoch(
                    conn,
                    epoch=record.epoch,
                    replica=out.replica,
                    adapters=list(out.resident),
                    started_at=self._wall(record.started_at),
                    reason=f"{policy}: {record.reason or 'planned'}"[:200],
                    status=str(record.status),
                    error=out.error,
                )
                residency.close_residency_epoch(
                    conn, epoch=record.epoch, replica=out.replica, ended_at=self._wall(record.ends_at),
                    page_ins=len(out.prefetched), hits=0, misses=0,
                )  # fmt: skip
            if not record.replicas:  # a missed epoch: nothing was applied anywhere
                residency.record_residency_epoch(
                    conn, epoch=record.epoch, replica="*", adapters=[],
                    started_at=self._wall(record.started_at),
                    reason=f"{policy}: {record.reason or 'missed'}"[:200], status=str(record.status),
                )  # fmt: skip


def build_controller(
    config: BanditConfig, engine: Engine, executor: Any, sink: ResidencyTableSink | None = None
) -> CacheController:
    c = config.cache
    if c.policy == "polar":
        policy_cfg = parse_policy({"kind": "polar", "epoch_s": c.epoch_s})
    else:
        policy_cfg = parse_policy(
            {
                "kind": "polar+",
                "initial_epoch_s": c.epoch_s,
                "max_epoch_s": max(c.max_epoch_s, c.epoch_s),
            }
        )
    built = policy_cfg.build()
    adapter_arms = {adapter: arm for arm, adapter in config.adapter_arms.items()}
    rng = np.random.default_rng(config.gateway.seed)
    return CacheController(
        policy=built.policy,
        executor=executor,
        schedule=built.schedule,
        clock=time.monotonic,
        demand=DemandTracker(c.clusters, config.featurizer.dim, c.demand_half_life_s, rng),
        scorer=SnapshotScorer(engine, adapter_arms),
        arms=tuple(adapter_arms),
        paging=paging_model(config),
        rng=rng,
        sink=sink or ResidencyTableSink(engine),
    )


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class CacheControllerService:
    def __init__(
        self, config: BanditConfig, database_url: str, pools: dict[str, DeploymentHandle]
    ) -> None:
        self.config = config
        self.engine = make_engine(database_url, pool_size=2)
        adapter_models = {a.model for a in config.arms if a.adapter}
        replicas = {pool_name(m): h for m, h in pools.items() if m in adapter_models}
        self.pool_of_arm = {a.name: pool_name(a.model) for a in config.arms if a.adapter}
        executor = PoolExecutor(replicas, config.cache.slots_per_replica)
        sink = ResidencyTableSink(self.engine, executor.traffic)
        self.controller = build_controller(config, self.engine, executor, sink)
        self.since = datetime.now(UTC) - timedelta(seconds=1)
        self.error: str | None = None
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="cache-controller", daemon=True).start()

    def _observe(self) -> None:
        with self.engine.connect() as conn:
            X, arms, newest = request_log.contexts_since(conn, self.since)
        if newest is None:
            return
        self.since = newest
        self.controller.observe(X)
        resident = self.controller.residency()
        adapters = self.config.adapter_arms
        for arm in arms:
            if arm in adapters:
                replica = self.pool_of_arm[arm]
                self.controller.record_access(
                    replica, adapters[arm], adapters[arm] in resident.get(replica, ())
                )

    def _run(self) -> None:
        scorer = self.controller.scorer
        while not self._stop.is_set():
            try:
                if isinstance(scorer, SnapshotScorer):
                    scorer.refresh()
                self._observe()
                self.controller.tick()
            except Exception as exc:  # keep planning after a transient failure
                self.error = repr(exc)
                log.exception("cache controller tick failed")
            self._stop.wait(self.config.cache.tick_s)

    def status(self) -> dict[str, Any]:
        h = self.controller.history
        return {
            "epoch": self.controller.epoch,
            "epochs": len(h),
            "applied": sum(1 for r in h if str(r.status) == "applied"),
            "residency": {k: list(v) for k, v in self.controller.residency().items()},
            "error": self.error,
        }

    def __del__(self) -> None:
        self._stop.set()
