"""The cache controller: epochs on a passed-in clock, plans applied through an executor.

Call :meth:`CacheController.observe` with the contexts of routed requests (demand),
:meth:`CacheController.record_access` with where each was served, and
:meth:`CacheController.tick` whenever convenient (each batch, a timer): it closes
every epoch whose end the clock has passed, asks the policy for the next plan,
applies it (evictions first, then prefetches), and appends exactly one
:class:`EpochRecord` per epoch to :attr:`history` and to the optional sink (the
residency table). An epoch whose end had already passed when the controller got to
it is recorded as failed ("missed"); a plan that raised or that a replica did not
end up holding is recorded as failed with the reason. A plan may end its epoch
sooner than the schedule says (``ResidencyPlan.length_s``; never before the clock).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from cache_manager.clock import Clock
from cache_manager.demand import DemandTracker
from cache_manager.epochs import EpochSchedule
from cache_manager.executor import CapacityError, ResidencyExecutor
from cache_manager.paging import PagingCostModel
from cache_manager.plan import EpochRecord, PlanStatus, ReplicaOutcome, ResidencyPlan
from cache_manager.policies.base import PlanInputs, ResidencyPolicy
from cache_manager.scorer import ArmScorer


class EpochSink(Protocol):
    def record(self, record: EpochRecord) -> None: ...


def apply_plan(plan: ResidencyPlan, executor: ResidencyExecutor) -> tuple[ReplicaOutcome, ...]:
    """Evict what a replica should drop, then prefetch what it lacks; never over capacity."""
    outcomes = []
    known = set(executor.replicas())
    for replica, planned in plan.residency.items():
        if replica not in known:
            outcomes.append(ReplicaOutcome(replica, planned, (), (), (), 0.0, "unknown replica"))
            continue
        prefetched: list[str] = []
        evicted: list[str] = []
        load_s = 0.0
        error: str | None = None
        try:
            if len(set(planned)) > executor.capacity(replica):
                raise CapacityError(
                    f"plan holds {len(set(planned))} adapters, capacity {executor.capacity(replica)}"
                )
            for adapter in executor.resident(replica):
                if adapter not in planned:
                    executor.evict(replica, adapter)
                    evicted.append(adapter)
            have = set(executor.resident(replica))
            for adapter in planned:
                if adapter not in have:
                    load_s += executor.prefetch(replica, adapter)
                    prefetched.append(adapter)
                    have.add(adapter)
        except Exception as exc:  # a replica failing must not stop the others
            error = f"{type(exc).__name__}: {exc}"
        try:
            resident = tuple(executor.resident(replica))
        except Exception as exc:
            resident = ()
            error = error or f"{type(exc).__name__}: {exc}"
        outcomes.append(
            ReplicaOutcome(
                replica, tuple(planned), resident, tuple(prefetched), tuple(evicted), load_s, error
            )
        )
    return tuple(outcomes)


class CacheController:
    def __init__(
        self,
        policy: ResidencyPolicy,
        executor: ResidencyExecutor,
        schedule: EpochSchedule | None,
        clock: Clock,
        demand: DemandTracker,
        scorer: ArmScorer,
        arms: Sequence[str],
        paging: PagingCostModel,
        rng: np.random.Generator,
        sink: EpochSink | None = None,
    ) -> None:
        self.policy, self.executor, self.schedule = policy, executor, schedule
        self.clock, self.demand, self.scorer = clock, demand, scorer
        self.arms = tuple(arms)
        self.penalty = paging.penalties(self.arms)
        self.paging = paging
        self.rng = rng
        self.sink = sink
        self.history: list[EpochRecord] = []
        self.epoch = -1
        self.epoch_start = clock()
        self.epoch_end = self.epoch_start  # the first tick opens epoch 0
        self.requests = 0
        self._requests_at_epoch = 0

    # --- request path ---------------------------------------------------------
    def observe(self, contexts: np.ndarray, pinned: Sequence[str | None] | None = None) -> None:
        """Demand: the contexts of routed requests. ``pinned``, aligned with them: the
        adapter a request named (a client of one fine-tune), ``None`` where the router
        chose; a pinned request is direct demand for its adapter, not for its context's
        cluster."""
        contexts = np.atleast_2d(contexts)
        now = self.clock()
        if pinned is None:
            self.requests += len(contexts)
            self.demand.observe(contexts, now)
            return
        if len(pinned) != len(contexts):
            raise ValueError("pinned must name an adapter or None for each context")
        index = {a: i for i, a in enumerate(self.arms)}
        named = [index.get(a) if a is not None else None for a in pinned]
        self.requests += len(named)
        free = np.array([i is None for i in named], dtype=bool)
        self.demand.observe_pinned(np.array([i for i in named if i is not None]), now)
        if free.any():
            self.demand.observe(contexts[free], now)

    def record_access(self, replica: str, adapter: str, hit: bool) -> None:
        self.policy.on_access(replica, adapter, self.clock(), hit)

    def admission(self) -> Mapping[str, float] | None:
        """The policy's admission values now (``ResidencyPolicy.admission``)."""
        return self.policy.admission(self.clock())

    def reprice(self, paging: PagingCostModel) -> None:
        """Plan with ``paging``'s prices from the next epoch on (e.g. load times the
        replicas measured since the last epoch)."""
        self.paging = paging
        self.penalty = paging.penalties(self.arms)

    def residency(self) -> dict[str, tuple[str, ...]]:
        return {r: tuple(self.executor.resident(r)) for r in self.executor.replicas()}

    def capacity(self) -> dict[str, int]:
        return {r: self.executor.capacity(r) for r in self.executor.replicas()}

    # --- epochs ---------------------------------------------------------------
    def _record(self, record: EpochRecord) -> None:
        self.history.append(record)
        if self.sink is not None:
            self.sink.record(record)

    def tick(self) -> list[EpochRecord]:
        """Close every epoch the clock has passed; plan and apply the current one."""
        if self.schedule is None:
            return []
        now = self.clock()
        new: list[EpochRecord] = []
        while now >= self.epoch_end:
            elapsed = max(self.epoch_end - self.epoch_start, 1e-9)
            rate = (self.requests - self._requests_at_epoch) / elapsed if self.epoch >= 0 else 0.0
            self.epoch += 1
            self.epoch_start = self.epoch_end
            self.epoch_end = self.epoch_start + self.schedule.length(self.epoch)
            self._requests_at_epoch = self.requests
            if now >= self.epoch_end:
                record = EpochRecord(
                    self.epoch,
                    self.epoch_start,
                    self.epoch_end,
                    PlanStatus.FAILED,
                    None,
                    reason="missed: the epoch ended before the controller ran",
                )
            else:
                record_or_none = self._plan_and_apply(rate)
                if record_or_none is None:
                    continue
                record = record_or_none
            self._record(record)
            new.append(record)
        return new

    def _plan_and_apply(self, rate: float) -> EpochRecord | None:
        length = self.epoch_end - self.epoch_start
        centroids, share = self.demand.demand()
        try:
            residency = self.residency()
            inputs = PlanInputs(
                epoch=self.epoch,
                start=self.epoch_start,
                length_s=length,
                expected_requests=rate * length,
                total_requests=self.requests,
                arms=self.arms,
                scorer=self.scorer,
                centroids=centroids,
                share=share,
                live_share=self.demand.share,
                pinned=self.demand.pinned_share(len(self.arms)).copy(),
                live_pinned=lambda: self.demand.pinned_share(len(self.arms)),
                penalty=self.penalty,
                residency=residency,
                capacity=self.capacity(),
            )
            plan = self.policy.plan(inputs, self.rng)
        except Exception as exc:
            return EpochRecord(
                self.epoch,
                self.epoch_start,
                self.epoch_end,
                PlanStatus.FAILED,
                None,
                reason=f"planning failed: {type(exc).__name__}: {exc}",
            )
        if plan is None:
            return None
        if plan.length_s is not None:  # the policy ends this epoch early (POLAR+: drift)
            end = self.epoch_start + plan.length_s
            if self.clock() < end < self.epoch_end:
                self.epoch_end = end
        outcomes = apply_plan(plan, self.executor)
        failed = [o for o in outcomes if not o.ok]
        status = PlanStatus.FAILED if failed else PlanStatus.APPLIED
        reason = "; ".join(
            f"{o.replica}: {o.error or 'resident set differs from plan'}" for o in failed
        )
        return EpochRecord(
            self.epoch, self.epoch_start, self.epoch_end, status, plan, outcomes, reason or None
        )

    # --- demand paging (what a replica does on a miss) ---------------------------
    def page_in(self, replica: str, adapter: str) -> float | None:
        """Bring ``adapter`` to ``replica`` for a request; returns the load seconds.

        A full replica evicts the policy's victim first. ``None`` means the policy
        declined to admit it (victim ``None``): the replica serves the request with
        a transient load that it pays for and does not keep.
        """
        resident = tuple(self.executor.resident(replica))
        if self.executor.capacity(replica) == 0:
            return None
        if len(resident) >= self.executor.capacity(replica):
            victim = self.policy.victim(replica, adapter, resident, self.clock())
            if victim is None:
                return None
            self.executor.evict(replica, victim)
        return self.executor.prefetch(replica, adapter)

    def choose_replica(
        self, adapter: str, mapping: Mapping[str, tuple[str, ...]] | None = None
    ) -> str:
        residency = mapping if mapping is not None else self.residency()
        return self.policy.miss_replica(adapter, residency, self.capacity(), self.rng)
