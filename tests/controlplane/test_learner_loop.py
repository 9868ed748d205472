"""The learner service's loop on real Postgres: exactly-once through a crash."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from controlplane.learner_loop import LearnerBusy, LearnerLoop
from tests.controlplane.learning import (
    N,
    assert_same_learner,
    final_state,
    learning_config,
    reset_learning,
    write_traffic,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crash_and_restart_applies_every_event_once(engine, seed):
    cfg = learning_config()
    write_traffic(engine, cfg, seed)
    now = lambda: datetime.now(UTC)  # noqa: E731  (feedback window 30 s: unrated ones wait)

    # the reference: one uninterrupted learner
    ref = LearnerLoop(engine, cfg, clock=now)
    ref.start()
    ref.run_until_idle()
    ref.stop()
    ref_snap, ref_credited = final_state(ref)
    rated = ref_credited[0]
    assert rated == ref_snap["events_applied"] and 0.7 * N < rated < 0.9 * N

    reset_learning(engine)
    first = LearnerLoop(engine, cfg, clock=now)
    first.start()
    for _ in range(5):  # 125 events claimed, snapshots at 60 and 120: 5 claimed past it
        first.step()
    assert first.pending > 0
    unapplied = first.pending + first.claimed_ahead()  # a full batch also claimed the next
    # crash: the process dies holding claims past its last snapshot, no stop()
    first._lock_conn.invalidate()  # type: ignore[union-attr]

    second = LearnerLoop(engine, cfg, clock=now)
    second.start(wait_s=10)  # the server drops the dead session's lock
    assert second.stats["released_on_start"] == unapplied
    second.run_until_idle()
    second.stop()
    snap, credited = final_state(second)
    assert credited == (rated, rated)  # each rated decision credited once, none lost
    assert snap["events_applied"] == rated
    assert_same_learner(ref_snap["state"], snap["state"], cfg.featurizer.dim)


def test_only_one_learner_consumes_a_database(engine):
    cfg = learning_config()
    a = LearnerLoop(engine, cfg)
    a.start()
    with pytest.raises(LearnerBusy):
        LearnerLoop(engine, cfg).start()
    a.stop()


def test_snapshots_publish_on_event_count_and_on_time(engine):
    cfg = learning_config(snapshot_every_events=100, snapshot_every_s=5.0)
    write_traffic(engine, cfg, 3)
    t = {"now": 0.0}
    loop = LearnerLoop(engine, cfg, clock=lambda: datetime.now(UTC), monotonic=lambda: t["now"])
    loop.start()
    assert loop.version == 1  # the initial policy
    for _ in range(4):
        loop.step()  # 100 events: one snapshot by count
    assert loop.version == 2
    loop.step()
    assert loop.version == 2 and loop.pending == 25
    t["now"] += 5.0
    loop.step()  # due by time
    assert loop.version == 3 and loop.pending == 0
    loop.stop()
