"""The central learner: Postgres reward stream in, policy snapshots out.

:class:`LearnerLoop` is plain Python (the Ray deployment only runs it on a
thread). One step: claim ready reward events past the watermark, turn them
into reward vectors through the objective, update the learner, and when the
policy has changed enough or enough time has passed (:meth:`LearnerLoop.snapshot_due`,
knobs in ``LearnerServiceConfig``) write a snapshot (state + watermark, one
transaction). Every ``retention.prune_every_s`` it compacts old versions
(``snapshots.prune_snapshots``). On start it takes the
learner lock, releases any claim above the latest snapshot's watermark
(claims a crashed predecessor made but never snapshotted) and resumes from
that snapshot, so every event is applied exactly once.

Rollback: someone else (``POST /v1/policies/{version}/rollback``) publishes a
snapshot with reason ``rollback`` holding an old version's state and the then
latest watermark. Before each step and inside each snapshot's transaction the
loop checks for one newer than its own version and adopts it exactly as a
restart would: old state, the rollback's watermark, claims above it released
(and credited again to the rolled-back state), so no event is applied twice and
its own next snapshot never overwrites the rollback.

Faults: every claim, release and snapshot transaction first checks that the
loop's lock connection still holds the learner lock (:class:`LockLost` if not:
the server restarted, or the connection was killed, and another learner may
hold the lock now), so a learner without the lock writes nothing. After any
error, :meth:`LearnerLoop.recover` forgets the in-memory state and the lock;
:class:`LearnerRunner` then takes the lock again and resumes from the latest
snapshot exactly as a restarted process would (events applied in memory but
not snapshotted are released and credited again, never twice).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine

from controlplane.config import BanditConfig
from controlplane.learner_metrics import CreditTally, Progress, WaitHistogram
from controlplane.releases import RollbackWatch
from controlplane.shadows import ShadowSet
from feedback.records import ArmRecord, RewardRow
from feedback.repositories import arms, reward_stream, snapshots
from learners import Learner, RewardEvent, load_learner, make_learner

log = logging.getLogger(__name__)

# a failure is looked for from this long before the frontier's time: its outcome's time
# is the gateway's clock, and its row lands a flush after it (a row held longer, in a
# database outage, is claimed at its deadline or by the next sweep)
FAILED_SLACK_S = 10.0
# a bounded claim reads the feedback that arrived since a frontier at least this many
# claims back and at least ``gateway.log_flush_s`` + FRONTIER_SLACK_S old: time for a
# decision's outcome, which the gateway's writer may hold for a flush after the answer
# (and so after the client's feedback), to land (one held longer is claimed by a sweep)
FRONTIER_LAG = 4
FRONTIER_SLACK_S = 1.0


class LearnerBusy(RuntimeError):
    """Another learner holds the lock on this database."""


class LockLost(RuntimeError):
    """The learner's lock connection no longer holds the learner lock."""


def arm_records(config: BanditConfig) -> list[ArmRecord]:
    return [
        ArmRecord(id=a.name, model=a.model, adapter=a.adapter, backend=a.backend)
        for a in config.arms
    ]


def snapshot_learner(config: BanditConfig, state: bytes | None) -> Learner:
    """The learner a snapshot's ``state`` bytes hold, deciding by the config's objective
    weights; with no snapshot (``None``), a fresh learner of the config."""
    weights = config.objective.weight_vector
    if state is None:
        return make_learner(config.learner, config.featurizer.dim, weights)
    learner = load_learner(state)
    learner.set_weights(weights)
    return learner


def layout_mismatch(learner: Learner, config: BanditConfig) -> str | None:
    """Why a restored learner reads another task layout than the config's featurizer
    writes (None: it does not): a learner restricted to a task view (``greenserv``'s
    ``context_indices``: the intercept and the task slots) saved before ``task_slots``
    changed goes on reading the old slots, blind to the tasks in the others."""
    cols = getattr(getattr(learner, "config", None), "context_indices", None)
    if cols is None:
        return None
    cols = tuple(cols)
    view = config.featurizer.task_view
    if cols == view or cols != tuple(range(len(cols))):  # the config's, or not a task view
        return None
    return (
        f"the policy reads {len(cols) - 1} task slots (positions 0-{len(cols) - 1}), the"
        f" featurizer now writes {len(view) - 1}: it cannot tell the tasks in the other slots"
        " apart; promote a new policy for this layout (a candidate) or set"
        f" featurizer.task_slots back to {len(cols) - 1}"
    )


@dataclass(frozen=True)
class Policy:
    """A learner ready to decide, and the snapshot version it came from (0: none)."""

    learner: Learner
    version: int


def latest_policy(engine: Engine, config: BanditConfig, newer_than: int) -> Policy | None:
    """The latest snapshot's policy, if its version is above ``newer_than``. Two reads
    outside a transaction (the version is the snapshot's own): no ROLLBACK after each of
    a gateway's polls."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if snapshots.latest_version(conn) <= newer_than:
            return None
        snap = snapshots.latest_snapshot(conn)
    if snap is None:
        return None
    return Policy(snapshot_learner(config, snap["state"]), int(snap["version"]))


class LearnerLoop:
    def __init__(
        self,
        engine: Engine,
        config: BanditConfig,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.config = config
        self.objective = config.objective
        self.clock = clock
        self.monotonic = monotonic
        self._lock_conn: Connection | None = None
        self._lock_pid: int | None = None
        self.learner: Learner | None = None
        self.version = 0
        self.watermark = 0
        self.events_applied = 0
        self.pending = 0  # applied since the last snapshot
        self._last_snapshot = monotonic()
        self._last_prune: float | None = None  # the first step prunes
        self._resumed_at: float | None = None  # when start() last took the lock and resumed
        self._last_sweep = 0.0
        # the bounded claim's frontiers (with the monotonic time each was read), read at the
        # last claims that were not cut short; one old enough is used (:meth:`_frontier`), so
        # that a feedback row whose decision's outcome lands a writer flush later
        # (``gateway.log_flush_s``), or that committed just after its id was counted, is
        # still read; none old enough yet: the claim sweeps
        self._frontiers: deque[tuple[float, reward_stream.ClaimFrontier]] = deque()
        self.frontier_age_s = config.gateway.log_flush_s + FRONTIER_SLACK_S
        self._last_full_claim = -math.inf
        self._cut_short = False  # the last claim filled a batch
        self.stats = {
            "events": 0,
            "snapshots": 0,
            "skipped": 0,
            "released_on_start": 0,
            "prunes": 0,
            "compacted": 0,
        }
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="learner-claim")
        self._ahead: Future[list[RewardRow]] | None = None
        self.credits = CreditTally()  # for /metrics: what this process credited
        self.feedback_waits = WaitHistogram()  # ... and how long its ratings waited
        self.progress = Progress()
        # policy releases (issue #12): candidates' shadow learners, and the watch that
        # rolls a promotion back (controlplane.shadows, controlplane.releases)
        self.shadows = ShadowSet(engine, config)
        self.release_watch = RollbackWatch(engine, config, monotonic)

    # -- lifecycle ------------------------------------------------------

    def start(self, wait_s: float = 0.0) -> None:
        """Take the learner lock (waiting up to ``wait_s`` for a dying holder) and resume."""
        deadline = self.monotonic() + wait_s
        while True:
            conn = self.engine.connect()
            try:
                got = reward_stream.try_learner_lock(conn)
                driver = conn.connection.driver_connection
                pid = int(driver.info.backend_pid) if driver is not None else None
                conn.commit()
            except BaseException:
                conn.invalidate()
                conn.close()
                raise
            if got:
                self._lock_conn = conn
                self._lock_pid = pid
                break
            conn.close()
            if self.monotonic() >= deadline:
                raise LearnerBusy("another learner is consuming this database")
            time.sleep(0.1)
        try:
            with self.engine.begin() as conn:
                self._fence(conn)
                arms.upsert_arms(conn, arm_records(self.config))
                snap = snapshots.latest_snapshot(conn)
                wm = 0 if snap is None else int(snap["watermark"])
                self.stats["released_on_start"] = reward_stream.release_claims_after(conn, wm)
            self.pending = 0
            self._last_snapshot = self.monotonic()
            if snap is None:
                self.version = self.watermark = self.events_applied = 0
                self.learner = snapshot_learner(self.config, None)
                self.snapshot(reason="initial")
            else:
                self.learner = snapshot_learner(self.config, snap["state"])
                mismatch = layout_mismatch(self.learner, self.config)
                if mismatch:
                    log.warning("learner resumed at version %s: %s", snap["version"], mismatch)
                self.version = int(snap["version"])
                self.watermark = wm
                self.events_applied = int(snap["events_applied"])
            self.shadows.resume(self.learner, self.watermark)
        except BaseException:
            self.recover()
            raise
        self._resumed_at = self.monotonic()
        self.progress.stepped(self.monotonic(), self.events_applied)
        log.info("learner resumed at version %d, watermark %d", self.version, self.watermark)

    def stop(self, snapshot: bool = True) -> None:
        self._drop_ahead()  # released when a learner next starts
        self._worker.shutdown(wait=True)
        if snapshot and self.pending and self.learner is not None:
            self.snapshot()
        if self._lock_conn is not None:
            reward_stream.release_learner_lock(self._lock_conn)
            self._lock_conn.close()
            self._lock_conn = None
            self._lock_pid = None

    @property
    def holding(self) -> bool:
        """Whether this loop believes it holds the lock and a resumed state (``start``
        succeeded and no error since)."""
        return self._lock_conn is not None and self.learner is not None

    def recover(self) -> None:
        """Forget everything after an error: the claim made ahead, the in-memory state
        and the lock (released if the connection still works). ``start`` resumes from
        the latest snapshot; claims past its watermark are released there."""
        self._drop_ahead()
        self.learner = None
        self.pending = 0
        self._resumed_at = None
        conn, self._lock_conn, self._lock_pid = self._lock_conn, None, None
        if conn is not None:
            try:
                reward_stream.release_learner_lock(conn)
                conn.commit()
                conn.close()
            except Exception:  # the connection is gone, and the lock with it
                log.info("learner lock connection lost", exc_info=True)
                try:
                    conn.invalidate()
                    conn.close()
                except Exception:
                    log.debug("closing the dead lock connection failed", exc_info=True)

    def _fence(self, conn: Connection) -> None:
        """Raise :class:`LockLost` unless our lock connection holds the learner lock."""
        if self._lock_pid is None or not reward_stream.holds_learner_lock(conn, self._lock_pid):
            raise LockLost("the learner lock was lost (database restarted or connection killed)")

    # -- work -----------------------------------------------------------

    def step(self) -> int:
        """Apply one claimed batch; snapshot when due. Returns events claimed.

        After a full batch the next claim starts on a worker thread while this
        one is learned (the database and numpy work side by side). Rows claimed
        ahead are above the watermark until applied, so a crash releases them
        on restart like any other unapplied claim.
        """
        assert self.learner is not None, "start() first"
        self.adopt_rollback()
        self._shadow_step(self.shadows.discover, self.learner, self.watermark)
        ahead, self._ahead = self._ahead, None  # a failed claim must not be read twice
        if ahead is None:
            self._close_lost_if_due()
        rows = ahead.result() if ahead is not None else self._claim()
        behind = len(rows) >= self.config.learner_service.batch_size
        if behind:
            self._ahead = self._worker.submit(self._claim)
        if rows:
            self._apply(rows)
            self._shadow_step(self.shadows.apply, rows)
        self._track_progress(behind)
        if self.snapshot_due():
            self.snapshot()
        self._prune_if_due()
        self._shadow_step(self.release_watch.check)
        return len(rows)

    def _shadow_step(self, work: Callable[..., Any], *args: Any) -> None:
        """Run a policy release's part of a step; its failure never stops the live
        learner (counted, logged, tried again next step)."""
        try:
            work(*args)
        except Exception:
            log.warning("policy releases: %s failed", work.__name__, exc_info=True)
            self.stats["release_errors"] = self.stats.get("release_errors", 0) + 1

    def snapshot_due(self) -> bool:
        """Whether the pending events are worth a new version (``LearnerServiceConfig``):
        at least ``min_snapshot_interval_s`` since the last one, and either enough
        change, ``pending >= max(snapshot_every_events, snapshot_min_change * n)`` with
        ``n`` the events in the last snapshot, or ``snapshot_every_s`` elapsed."""
        if self.pending == 0:
            return False
        svc = self.config.learner_service
        elapsed = self.monotonic() - self._last_snapshot
        if elapsed < svc.min_snapshot_interval_s:
            return False
        in_last = self.events_applied - self.pending
        changed = self.pending >= max(svc.snapshot_every_events, svc.snapshot_min_change * in_last)
        return changed or elapsed >= svc.snapshot_every_s

    def prune(self) -> snapshots.RetentionPlan:
        """Compact the versions no retention rule keeps (``learner_service.retention``)."""
        r = self.config.learner_service.retention
        with self.engine.begin() as conn:
            plan = snapshots.prune_snapshots(
                conn, now=self.clock(), keep_served_s=r.keep_served_s, keep_last=r.keep_last
            )
        self.stats["prunes"] += 1
        self.stats["compacted"] += len(plan.compact)
        if plan.compact:
            log.info(
                "retention compacted %d policy versions (%d bytes of state); %d keep theirs",
                len(plan.compact), plan.compact_bytes, len(plan.kept),
            )  # fmt: skip
        return plan

    def _prune_if_due(self) -> None:
        every = self.config.learner_service.retention.prune_every_s
        now = self.monotonic()
        if self._last_prune is not None and now - self._last_prune < every:
            return
        self._last_prune = now
        try:
            self.prune()
        except Exception:  # retention must never stop learning; tried again next period
            log.warning("compacting policy versions failed", exc_info=True)
            self.stats["prune_errors"] = self.stats.get("prune_errors", 0) + 1

    def _close_lost_if_due(self) -> None:
        """Close the decisions whose outcome never came (``outcome_timeout_s`` after they
        were made; :func:`reward_stream.close_lost_decisions`), every tenth of the timeout
        (1 to 60 s), and only once this loop has held the lock that long itself: after a
        database outage the gateways' buffered outcomes land first."""
        timeout = self.config.learner_service.outcome_timeout_s
        now = self.monotonic()
        if self._resumed_at is None or now - self._resumed_at < timeout:
            return
        if now - self._last_sweep < max(1.0, min(60.0, timeout / 10.0)):
            return
        self._last_sweep = now
        with self.engine.begin() as conn:
            self._fence(conn)
            before = self.clock() - timedelta(seconds=timeout)
            closed = reward_stream.close_lost_decisions(conn, before, timeout * 1000.0)
        if closed:
            self.stats["lost_outcomes"] = self.stats.get("lost_outcomes", 0) + closed
            log.warning(
                "%d decisions had no outcome after %.0f s: closed as errors", closed, timeout
            )

    def _claim(self) -> list[RewardRow]:
        """Claim a batch. A bounded claim, from a frontier old enough (:meth:`_frontier`),
        while the learner keeps up; a sweep of every waiting decision at the start, every
        ``claim_sweep_every_s`` and after a full batch (behind, the oldest decisions are
        ready, so the sweep stops after a batch of them)."""
        svc = self.config.learner_service
        now, mono = self.clock(), self.monotonic()
        since = None
        if not self._cut_short and mono - self._last_full_claim < svc.claim_sweep_every_s:
            since = self._frontier(mono)
        with self.engine.begin() as conn:
            self._fence(conn)
            mark = reward_stream.frontier_now(conn, now - timedelta(seconds=FAILED_SLACK_S))
            rows = reward_stream.claim_reward_events(
                conn, self.objective, now, svc.batch_size, since=since
            )
        if since is None:
            self._last_full_claim = mono
        self._cut_short = len(rows) >= svc.batch_size
        if not self._cut_short:
            self._frontiers.append((mono, mark))
            self._drop_old_frontiers(mono)
        return rows

    def _drop_old_frontiers(self, mono: float) -> None:
        """Keep the newest frontier old enough to be used and those after it."""
        f = self._frontiers
        while len(f) > FRONTIER_LAG and mono - f[1][0] >= self.frontier_age_s:
            f.popleft()

    def _frontier(self, mono: float) -> reward_stream.ClaimFrontier | None:
        """The newest frontier read at least ``FRONTIER_LAG`` claims and
        ``frontier_age_s`` seconds ago, or None: the claim sweeps. By age as well as by
        count: a poll faster than the gateway's log flush would otherwise pass the feedback
        of a decision whose outcome is still held, and leave it to the next sweep
        (``claim_sweep_every_s`` later)."""
        self._drop_old_frontiers(mono)
        f = self._frontiers
        if len(f) >= FRONTIER_LAG and mono - f[0][0] >= self.frontier_age_s:
            return f[0][1]
        return None

    def claimed_ahead(self) -> int:
        """Rows claimed but not applied yet (waits for an in-flight claim)."""
        return 0 if self._ahead is None else len(self._ahead.result())

    def _drop_ahead(self) -> None:
        """Forget rows claimed ahead (they sit above the watermark, so they are released)
        and the claim frontiers: released claims are waiting decisions that no new event
        marks, so the next claim sweeps."""
        if self._ahead is not None:
            try:
                self._ahead.result()
            except Exception:  # a failed claim claimed nothing
                log.warning("a claim made ahead failed", exc_info=True)
            self._ahead = None
        self._frontiers.clear()  # after the claim ahead, which may add one

    def _apply(self, rows: list[RewardRow]) -> None:
        assert self.learner is not None
        taught = [r for r in rows if r.quality is not None]  # "skip" credits teach nothing
        self.stats["skipped"] += len(rows) - len(taught)
        if taught:
            raw = np.array([(r.quality, r.energy_j, r.latency_ms, r.cost_usd) for r in taught])
            rewards = self.objective.normalize(raw)
            self.learner.update(
                [
                    RewardEvent(context=r.context, arm=r.arm_id, reward=rw, propensity=r.propensity)
                    for r, rw in zip(taught, rewards, strict=True)
                ]
            )
            self.credits.add(rows, taught, rewards @ self.objective.weight_vector)
        else:
            self.credits.add(rows, (), ())
        self.feedback_waits.add([r.feedback_wait_s for r in rows if r.feedback_wait_s is not None])
        self.watermark = rows[-1].credit_seq
        self.events_applied += len(rows)
        self.pending += len(rows)
        self.stats["events"] += len(rows)

    def snapshot(self, reason: str = "update") -> int:
        assert self.learner is not None
        with self.engine.begin() as conn:
            self._fence(conn)
            snapshots.lock_snapshots(conn)
            overtaken = snapshots.newer_rollback(conn, self.version) is not None
            if not overtaken:
                self.version = snapshots.save_snapshot(
                    conn,
                    learner_kind=self.learner.kind,
                    config={
                        "learner": self.config.learner.model_dump(mode="json"),
                        "objective": self.objective.model_dump(mode="json"),
                        "objective_version": self.objective.version,
                        "featurizer": self.config.featurizer.model_dump(mode="json"),
                    },
                    state=self.learner.state_bytes(),
                    watermark=self.watermark,
                    events_applied=self.events_applied,
                    summary={"arms": self.learner.arm_summary()},
                    reason=reason,
                    parent_version=self.version or None,
                )
                self.shadows.save(conn)
        if overtaken:  # a rollback published since the last step wins
            self.adopt_rollback()
            return self.version
        self.pending = 0
        self._last_snapshot = self.monotonic()
        self.stats["snapshots"] += 1
        return self.version

    def adopt_rollback(self) -> bool:
        """Continue from a newer rollback snapshot, if one was published."""
        with self.engine.connect() as conn:
            if snapshots.newer_rollback(conn, self.version) is None:
                return False
        self._drop_ahead()  # claimed past any watermark: released below with the rest
        with self.engine.begin() as conn:
            self._fence(conn)
            snap = snapshots.newer_rollback(conn, self.version)
            if snap is None:
                return False
            released = reward_stream.release_claims_after(conn, int(snap["watermark"]))
        self.learner = snapshot_learner(self.config, snap["state"])
        self.version = int(snap["version"])
        self.watermark = int(snap["watermark"])
        self.events_applied = int(snap["events_applied"])
        self.pending = 0
        self._last_snapshot = self.monotonic()
        self.shadows.resume(self.learner, self.watermark)
        self.stats["rollbacks"] = self.stats.get("rollbacks", 0) + 1
        self.stats["released_on_rollback"] = self.stats.get("released_on_rollback", 0) + released
        log.info(
            "learner continues from rollback version %d (state of version %s), watermark %d, "
            "%d claims released",
            self.version, snap["parent_version"], self.watermark, released,
        )  # fmt: skip
        return True

    def _track_progress(self, behind: bool) -> None:
        """Update rate and lag for :meth:`metrics` (a lag query only while behind)."""
        now = self.monotonic()
        self.progress.stepped(now, self.events_applied)
        if not behind:
            self.progress.caught_up(now)
        elif self.progress.lag_due(now):
            with self.engine.connect() as conn:
                lag = reward_stream.learner_lag(conn, self.objective, self.clock())
            self.progress.measured(now, lag, self.monotonic() - now)

    def metrics(self) -> dict[str, Any]:
        """The learner's figures for ``/metrics``, from memory (see ``learner_metrics``)."""
        return {
            "version": self.version,
            "watermark": self.watermark,
            "events_applied": self.events_applied,
            "events_per_s": self.progress.rate(self.monotonic()),
            "lag_events": self.progress.lag["events_behind"],
            "lag_seconds": self.progress.lag["seconds_behind"],
            "snapshots": self.stats["snapshots"],
            "rewards": self.credits.rows(),
            "feedback_waits": self.feedback_waits.snapshot(),
            "releases": self.release_watch.status(),
        }

    def run_until_idle(self, max_steps: int = 10_000) -> int:
        """Drain what is ready now (tests, tools); returns events applied."""
        total = 0
        for _ in range(max_steps):
            n = self.step()
            total += n
            if n == 0:
                break
        return total
