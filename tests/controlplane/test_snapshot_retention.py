"""When the learner publishes a version, and retention run by the learner loop: fewer
versions under a steady stream, still every event applied once through a crash."""

from __future__ import annotations

from datetime import UTC, datetime

from controlplane.config import RetentionConfig
from controlplane.learner_loop import LearnerLoop
from feedback.repositories import snapshots
from tests.controlplane.learning import (
    assert_same_learner,
    final_state,
    learning_config,
    reset_learning,
    write_traffic,
)

# the rule before rate limiting: every 500 events or every 2 s with events pending
BEFORE = {
    "snapshot_every_events": 500,
    "snapshot_min_change": 0.0,
    "snapshot_every_s": 2.0,
    "min_snapshot_interval_s": 0.0,
}
# the learner_service defaults (in batches of 5: a steady 5 events per simulated second)
DEFAULTS = {
    "batch_size": 5,
    "snapshot_every_events": 50,
    "snapshot_min_change": 0.2,
    "snapshot_every_s": 900.0,
    "min_snapshot_interval_s": 2.0,
}


def _now() -> datetime:
    return datetime.now(UTC)


class Steady:
    """A simulated monotonic clock: one second per learner step."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def run(self, loop: LearnerLoop, steps: int | None = None) -> int:
        n = 0
        while steps is None or n < steps:
            self.t += 1.0
            n += 1
            if loop.step() == 0:
                break
        return n


def _restart(engine, cfg, monotonic) -> LearnerLoop:
    """A learner started after a crash (waiting on the real clock for the server to drop
    the dead session's lock), then stepped on ``monotonic``."""
    loop = LearnerLoop(engine, cfg, clock=_now)
    loop.start(wait_s=10)
    loop.monotonic = monotonic
    loop._last_snapshot = monotonic()
    return loop


def _versions(engine) -> int:
    with engine.connect() as conn:
        return snapshots.latest_version(conn)


def test_defaults_write_fewer_versions_under_a_steady_stream(engine):
    written = {}
    for name, rule in {"before": {**DEFAULTS, **BEFORE}, "defaults": DEFAULTS}.items():
        cfg = learning_config(**rule)
        reset_learning(engine)
        write_traffic(engine, cfg, 11)
        clock = Steady()
        loop = LearnerLoop(engine, cfg, clock=_now, monotonic=clock)
        loop.start()
        clock.run(loop)
        loop.stop()
        written[name] = (_versions(engine), loop.events_applied)
    (before, events), (after, same_events) = written["before"], written["defaults"]
    assert events == same_events > 150
    # before: one version every 2 s (10 events); now one per 50 events, plus the
    # initial and the one stop() writes
    assert before >= events // 10
    assert after <= events // 50 + 2
    assert after * 4 < before


def test_deferred_snapshots_still_apply_every_event_once_through_a_crash(engine):
    cfg = learning_config(**DEFAULTS)
    write_traffic(engine, cfg, 12)

    ref = LearnerLoop(engine, cfg, clock=_now, monotonic=Steady())
    ref.start()
    ref.run_until_idle()
    ref.stop()
    ref_snap, (rated, _) = final_state(ref)

    reset_learning(engine)
    clock = Steady()
    first = LearnerLoop(engine, cfg, clock=_now, monotonic=clock)
    first.start()
    clock.run(first, steps=18)  # 90 events: one snapshot at 50, 40 deferred
    assert first.version == 2 and first.pending == 40
    unapplied = first.pending + first.claimed_ahead()
    first._lock_conn.invalidate()  # type: ignore[union-attr]  # crash: no stop()

    second = _restart(engine, cfg, clock)
    assert second.stats["released_on_start"] == unapplied  # re-applied, not lost
    assert (second.version, second.events_applied) == (2, 50)
    clock.run(second)
    second.stop()
    snap, credited = final_state(second)
    assert credited == (rated, rated)  # each rated decision credited once
    assert snap["events_applied"] == rated
    assert_same_learner(ref_snap["state"], snap["state"], cfg.featurizer.dim)


def test_rate_limit_and_time_trigger(engine):
    cfg = learning_config(
        batch_size=25, snapshot_every_events=25, snapshot_min_change=0.0,
        snapshot_every_s=30.0, min_snapshot_interval_s=5.0,
    )  # fmt: skip
    write_traffic(engine, cfg, 13)
    t = {"now": 0.0}
    loop = LearnerLoop(engine, cfg, clock=_now, monotonic=lambda: t["now"])
    loop.start()
    loop.step()  # 25 events: enough change, but 0 s after the initial version
    assert (loop.version, loop.pending) == (1, 25)
    t["now"] = 5.0
    loop.step()
    assert (loop.version, loop.pending) == (2, 0)

    slow = learning_config(
        batch_size=25, snapshot_every_events=1000, snapshot_min_change=0.0,
        snapshot_every_s=30.0, min_snapshot_interval_s=5.0,
    )  # fmt: skip
    loop.config = slow
    t["now"] = 20.0
    loop.step()
    assert (loop.version, loop.pending) == (2, 25)  # not enough change, not enough time
    t["now"] = 35.0
    loop.step()
    assert (loop.version, loop.pending) == (3, 0)  # 30 s since version 2
    loop.stop()


def test_relative_change_threshold_grows_with_the_events_applied(engine):
    cfg = learning_config(
        batch_size=10, snapshot_every_events=10, snapshot_min_change=0.5,
        snapshot_every_s=1e9, min_snapshot_interval_s=0.0,
    )  # fmt: skip
    write_traffic(engine, cfg, 14)
    loop = LearnerLoop(engine, cfg, clock=_now, monotonic=Steady())
    loop.start()
    published = []
    while loop.step():
        if loop.pending == 0:
            published.append(loop.events_applied)
    loop.stop()
    # 10 events, then whenever the new ones reach half of those already published
    assert published[:5] == [10, 20, 30, 50, 80]


def test_the_loop_prunes_on_its_period_and_restarts_from_the_newest(engine):
    cfg = learning_config(
        batch_size=25, snapshot_every_events=25,
        retention=RetentionConfig(keep_last=2, keep_served_s=0.0, prune_every_s=10.0),
    )  # fmt: skip
    write_traffic(engine, cfg, 15)
    t = {"now": 0.0}
    loop = LearnerLoop(engine, cfg, clock=_now, monotonic=lambda: t["now"])
    loop.start()
    loop.step()  # the first step prunes: versions 1, 2, both the newest
    assert loop.stats["prunes"] == 1 and loop.stats["compacted"] == 0
    for _ in range(3):
        loop.step()  # versions 3-5, no prune within the period
    assert loop.version == 5 and loop.stats["prunes"] == 1
    t["now"] = 10.0
    loop.step()  # version 6, then a prune: 1-4 compacted
    assert loop.stats["prunes"] == 2 and loop.stats["compacted"] == 4
    with engine.connect() as conn:
        listed = {s["version"]: s["compacted"] for s in snapshots.list_snapshots(conn)}
    assert listed == {1: True, 2: True, 3: True, 4: True, 5: False, 6: False}
    loop._lock_conn.invalidate()  # type: ignore[union-attr]  # a crash after compacting

    again = _restart(engine, cfg, lambda: t["now"])
    assert again.version == 6
    again.run_until_idle()
    again.stop()
    snap, (rated, distinct) = final_state(again)
    assert rated == distinct == snap["events_applied"]
