"""The cache controller of the running system, without Ray.

Wires ``cache_manager.CacheController`` to the running system:

* demand: contexts of recent decisions, read from Postgres; a decision whose route
  names one adapter arm (the client pinned its fine-tune) is demand for that adapter;
* value: the central learner's current estimates per adapter arm, from the
  latest policy snapshot (:class:`SnapshotScorer`);
* execution: any ``ResidencyExecutor``; on Ray Serve, :class:`PoolExecutor` over
  the pool deployments (one replica each, whose own adapter registry prefetches
  and evicts), with the calls into them passed in;
* record: every epoch's plan and outcome land in ``residency_epochs``
  (:class:`ResidencyTableSink`), where gateways read what is resident to price
  paging into their routing (``cache_manager.router``), and the replicas' measured
  adapter load times in ``adapter_load_times``, from which the controller and the
  gateways price a page-in (the estimate for the configured rank until then).

:class:`CacheCore` is one controller step at a time (``step``: refresh the scorer,
observe new decisions, tick the epochs); ``deployments/cache.py`` runs it on a
thread every ``cache.tick_s``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import numpy as np
from sqlalchemy import Engine
from typing_extensions import override

from cache_manager.clock import Clock
from cache_manager.controller import CacheController, EpochSink
from cache_manager.executor import ResidencyExecutor
from cache_manager.plan import EpochRecord
from controlplane.config import BanditConfig
from controlplane.learner_loop import Policy, latest_policy
from feedback.repositories import request_log
from feedback.repositories import residency as residency_repo

Traffic = Callable[[str], tuple[int, int]]  # replica -> cumulative (hits, misses)
# replica -> its measured adapter loads: adapter -> (median ms, loads)
LoadTimes = Callable[[str], Mapping[str, tuple[float, int]]]


class PoolCalls(Protocol):
    """Blocking calls into one pool replica (the Serve shell makes them through handles)."""

    def resident(self) -> Sequence[str]: ...

    def prefetch(self, adapter: str) -> float: ...

    def evict(self, adapter: str) -> None: ...

    def set_admission(self, values: Mapping[str, float]) -> None: ...

    def residency_stats(self) -> Mapping[str, Any]: ...


class PoolExecutor(ResidencyExecutor):
    """``ResidencyExecutor`` over pools of one replica each; blocking calls, made from the
    controller's own thread."""

    def __init__(self, pools: Mapping[str, PoolCalls], capacity: int) -> None:
        self.pools = dict(pools)
        self._capacity = capacity

    def replicas(self) -> Sequence[str]:
        return tuple(self.pools)

    @override
    def capacity(self, replica: str) -> int:
        return self._capacity

    def resident(self, replica: str) -> tuple[str, ...]:
        return tuple(self.pools[replica].resident())

    def prefetch(self, replica: str, adapter: str) -> float:
        return float(self.pools[replica].prefetch(adapter))

    def evict(self, replica: str, adapter: str) -> None:
        self.pools[replica].evict(adapter)

    def set_admission(self, values: Mapping[str, float]) -> None:
        """Hand every pool the policy's admission values."""
        for pool in self.pools.values():
            pool.set_admission(values)

    def traffic(self, replica: str) -> tuple[int, int]:
        """The replica's cumulative (hits, misses) of adapter requests."""
        s = self.pools[replica].residency_stats()
        return int(s["hits"]), int(s["misses"])

    def load_times(self, replica: str) -> dict[str, tuple[float, int]]:
        """The replica's measured adapter loads: adapter -> (median ms, loads)."""
        s = self.pools[replica].residency_stats()
        return {
            str(a): (float(v["median_ms"]), int(v["loads"]))
            for a, v in (s.get("adapter_loads") or {}).items()
        }


class SnapshotScorer:
    """``ArmScorer`` from the central learner's latest snapshot (it learns; we read)."""

    def __init__(self, engine: Engine, config: BanditConfig, adapter_arms: dict[str, str]) -> None:
        self.engine = engine
        self.config = config
        self.adapters = tuple(adapter_arms)  # adapter -> arm name, in column order
        self.arm_names = [adapter_arms[a] for a in self.adapters]
        self.n_arms = len(self.adapters)
        self.dim = 0  # known once a snapshot is loaded
        self.policy: Policy | None = None

    @property
    def version(self) -> int:
        return -1 if self.policy is None else self.policy.version

    def refresh(self) -> None:
        policy = latest_policy(self.engine, self.config, self.version)
        if policy is not None:
            self.policy = policy
            self.dim = policy.learner.dim

    def estimate(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X = np.atleast_2d(X)
        mean = np.zeros((len(X), self.n_arms))
        width = np.ones((len(X), self.n_arms))
        if self.policy is not None:
            for i, x in enumerate(X):
                mean[i], width[i] = self.policy.learner.estimates(x, self.arm_names)
        return mean, width

    def update(self, X: np.ndarray, arms: np.ndarray, rewards: np.ndarray) -> None:
        """The central learner learns from Postgres; nothing to do here."""

    def pulls(self) -> np.ndarray:
        summary = self.policy.learner.arm_summary() if self.policy is not None else {}
        return np.array([summary.get(a, {}).get("pulls", 0.0) for a in self.arm_names])


class ResidencyTableSink:
    """One ``residency_epochs`` row per replica per epoch: plan, outcome, status, and the
    epoch's traffic. ``traffic(replica)`` gives the replica's cumulative (hits, misses);
    what accrued between two records is added to the earlier epoch's row (a miss is a
    page-in on the request path, on top of the plan's prefetches). ``clock`` is the
    controller's; rows carry wall-clock times. :meth:`totals` sums what was written
    since this sink started, per replica, for ``/metrics``."""

    def __init__(
        self,
        engine: Engine,
        traffic: Traffic | None = None,
        clock: Clock = time.monotonic,
        load_times: LoadTimes | None = None,
    ) -> None:
        self.engine = engine
        self.traffic = traffic
        self.load_times = load_times
        self.t0_wall = datetime.now(UTC)
        self.t0_mono = clock()
        self._last: dict[str, tuple[int, int, int]] = {}  # replica -> (epoch, hits, misses)
        self._totals: dict[str, dict[str, int]] = {}
        self._totals_lock = threading.Lock()
        self._pending: list[tuple[str, int, int, int]] = []  # written, not yet committed

    def _add(self, replica: str, page_ins: int, hits: int = 0, misses: int = 0) -> None:
        self._pending.append((replica, page_ins, hits, misses))

    def _commit_totals(self) -> None:
        with self._totals_lock:
            for replica, page_ins, hits, misses in self._pending:
                t = self._totals.setdefault(replica, {"page_ins": 0, "hits": 0, "misses": 0})
                t["page_ins"] += page_ins
                t["hits"] += hits
                t["misses"] += misses
        self._pending.clear()

    def totals(self) -> dict[str, dict[str, int]]:
        """Per replica: page-ins, hits and misses recorded since this sink started."""
        with self._totals_lock:
            return {r: dict(t) for r, t in sorted(self._totals.items())}

    def _wall(self, mono: float) -> datetime:
        return self.t0_wall + timedelta(seconds=mono - self.t0_mono)

    def _settle(self, conn: Any, replica: str, epoch: int) -> None:
        if self.traffic is None:
            return
        hits, misses = self.traffic(replica)
        last = self._last.get(replica)
        if last is not None:
            residency_repo.add_epoch_traffic(
                conn, epoch=last[0], replica=replica, hits=hits - last[1], misses=misses - last[2]
            )
            self._add(replica, misses - last[2], hits - last[1], misses - last[2])
        self._last[replica] = (epoch, hits, misses)

    def record(self, record: EpochRecord) -> None:
        policy = record.plan.policy if record.plan is not None else ""
        self._pending.clear()
        with self.engine.begin() as conn:
            for out in record.replicas or ():
                self._settle(conn, out.replica, record.epoch)
                if self.load_times is not None:
                    residency_repo.record_load_times(
                        conn, out.replica, self.load_times(out.replica), datetime.now(UTC)
                    )
                residency_repo.record_residency_epoch(
                    conn,
                    epoch=record.epoch,
                    replica=out.replica,
                    adapters=list(out.resident),
                    started_at=self._wall(record.started_at),
                    reason=f"{policy}: {record.reason or 'planned'}"[:200],
                    status=str(record.status),
                    error=out.error,
                )
                residency_repo.close_residency_epoch(
                    conn, epoch=record.epoch, replica=out.replica, ended_at=self._wall(record.ends_at),
                    page_ins=len(out.prefetched), hits=0, misses=0,
                )  # fmt: skip
                self._add(out.replica, len(out.prefetched))
            if not record.replicas:  # a missed epoch: nothing was applied anywhere
                residency_repo.record_residency_epoch(
                    conn, epoch=record.epoch, replica="*", adapters=[],
                    started_at=self._wall(record.started_at),
                    reason=f"{policy}: {record.reason or 'missed'}"[:200], status=str(record.status),
                )  # fmt: skip
        self._commit_totals()


def build_controller(
    config: BanditConfig,
    executor: ResidencyExecutor,
    scorer: SnapshotScorer,
    sink: EpochSink,
    clock: Clock = time.monotonic,
) -> CacheController:
    """The configured policy (``config.cache``) over the scorer's adapters."""
    cache = config.cache
    built = cache.policy.build()
    rng = np.random.default_rng(config.gateway.seed)
    return CacheController(
        policy=built.policy,
        executor=executor,
        schedule=built.schedule,
        clock=clock,
        demand=cache.demand_tracker(config.featurizer.dim, rng),
        scorer=scorer,
        arms=scorer.adapters,
        paging=cache.paging_model(scorer.adapters),
        rng=rng,
        sink=sink,
    )


class CacheCore:
    """The running system's cache controller, one step at a time.

    ``replica_of_arm``: the replica (pool) that serves each adapter arm.
    ``traffic``: cumulative (hits, misses) per replica, settled into each epoch's row.
    ``load_times``: each replica's measured adapter loads, stored every epoch
    (``adapter_load_times``); the controller plans with them from the next epoch on.
    ``admit``: hands the replicas the policy's admission values (by which a replica
    keeps a missed adapter between plans), each time they change.
    """

    def __init__(
        self,
        config: BanditConfig,
        engine: Engine,
        executor: ResidencyExecutor,
        replica_of_arm: Mapping[str, str],
        *,
        traffic: Traffic | None = None,
        clock: Clock = time.monotonic,
        load_times: LoadTimes | None = None,
        admit: Callable[[Mapping[str, float]], None] | None = None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.admit = admit
        self._admission: Mapping[str, float] | None = None  # the values last handed out
        self.replica_of_arm = dict(replica_of_arm)
        adapter_arms = {adapter: arm for arm, adapter in config.adapter_arms.items()}
        self.scorer = SnapshotScorer(engine, config, adapter_arms)
        self.sink = ResidencyTableSink(engine, traffic, clock, load_times)
        self.controller = build_controller(config, executor, self.scorer, self.sink, clock)
        self.since = datetime.now(UTC) - timedelta(seconds=1)
        self.measured_s: dict[str, float] = {}  # adapter -> the load seconds priced
        self._priced_epoch: int | None = None  # the epoch whose records were last read

    def step(self) -> None:
        """Read the latest snapshot and measured load times, observe decisions since the
        last step, tick the epochs."""
        self.scorer.refresh()
        self.reprice()
        self.observe()
        self.controller.tick()
        self.hand_admission()

    def hand_admission(self) -> None:
        """Hand the replicas the policy's admission values when they changed."""
        if self.admit is None:
            return
        values = self.controller.admission()
        if values is not None and values != self._admission:
            self.admit(values)
            self._admission = values

    def reprice(self) -> None:
        """Plan with the load times the replicas measured (``adapter_load_times``, written
        when an epoch is recorded: read once per epoch, not every tick)."""
        if self.controller.epoch == self._priced_epoch:
            return
        self._priced_epoch = self.controller.epoch
        with self.engine.connect() as conn:
            measured = residency_repo.load_times_s(conn)
        if measured and measured != self.measured_s:
            self.measured_s = measured
            self.controller.reprice(self.config.cache.paging_model(self.scorer.adapters, measured))

    def pinned_adapter(self, route: str) -> str | None:
        """The adapter a request for ``model=route`` names: a route of one adapter arm
        (a client of one fine-tune); ``None`` where the router chooses."""
        try:
            arms = self.config.route_arms(route)
        except KeyError:
            return None
        return self.config.adapter_arms.get(arms[0]) if len(arms) == 1 else None

    def observe(self) -> None:
        with self.engine.connect() as conn:
            X, arms, routes, newest = request_log.demand_since(conn, self.since)
        if newest is None:
            return
        self.since = newest
        self.controller.observe(X, [self.pinned_adapter(r) for r in routes])
        resident = self.controller.residency()
        adapters = self.config.adapter_arms
        for arm in arms:
            if arm in adapters:
                replica = self.replica_of_arm[arm]
                self.controller.record_access(
                    replica, adapters[arm], adapters[arm] in resident.get(replica, ())
                )

    def status(self) -> dict[str, Any]:
        h = self.controller.history
        return {
            "epoch": self.controller.epoch,
            "epochs": len(h),
            "applied": sum(1 for r in h if str(r.status) == "applied"),
            "residency": {k: list(v) for k, v in self.controller.residency().items()},
            "totals": self.sink.totals(),
            "load_ms": {a: round(t * 1000.0, 3) for a, t in sorted(self.measured_s.items())},
        }
