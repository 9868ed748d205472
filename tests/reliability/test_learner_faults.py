"""The learner under database faults: a claim made ahead that loses its connection, the
lock connection killed (as by a server restart), a second learner taking the lock over.
Each ends with every event credited once and the state of an uninterrupted run."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from controlplane.learner_loop import LearnerLoop
from controlplane.learner_runner import LearnerRunner
from feedback.repositories import reward_stream
from tests.controlplane.learning import (
    assert_same_learner,
    final_state,
    learning_config,
    reset_learning,
    write_traffic,
)
from tests.reliability.faults import kill, kill_pid, tagged_engine, wait_for_query, wait_until

pytestmark = pytest.mark.reliability


def now():
    return datetime.now(UTC)


def _reference(engine, cfg):
    ref = LearnerLoop(engine, cfg, clock=now)
    ref.start()
    ref.run_until_idle()
    ref.stop()
    snap, credited = final_state(ref)
    reset_learning(engine)
    return snap, credited


def _advisory_locks(engine) -> int:
    with engine.connect() as conn:
        q = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
        q += "(SELECT oid FROM pg_database WHERE datname = current_database())"
        return int(conn.execute(text(q)).scalar_one())


def _drain(runner: LearnerRunner, turns: int = 200) -> None:
    idle = 0
    for _ in range(turns):
        n = runner.turn()
        idle = idle + 1 if n == 0 else 0
        if idle >= 2:
            return
    raise AssertionError(f"the learner did not catch up: {runner.health.report()}")


def test_a_claim_ahead_that_loses_its_connection_does_not_stop_learning(
    engine, db_url, monkeypatch
):
    cfg = learning_config()
    write_traffic(engine, cfg, 5)
    ref_snap, ref_credited = _reference(engine, cfg)

    eng, app = tagged_engine(db_url, pool_size=4)
    loop = LearnerLoop(eng, cfg, clock=now)
    runner = LearnerRunner(loop)
    assert runner.turn() == 25  # a full batch: the next claim starts ahead, on the worker

    real = reward_stream.claim_reward_events
    armed = {"on": True}

    def slow_claim(conn, *args, **kwargs):
        if armed["on"]:
            armed["on"] = False
            conn.execute(text("SELECT pg_sleep(30) /* claim-ahead */"))
        return real(conn, *args, **kwargs)

    monkeypatch.setattr(reward_stream, "claim_reward_events", slow_claim)
    assert runner.turn() == 25  # applies the batch claimed ahead; claims the next ahead
    killer = threading.Thread(
        target=lambda: (
            wait_for_query(engine, app, "%claim-ahead%"),
            kill(engine, app, "%claim-ahead%"),
        )
    )
    killer.start()
    assert runner.turn() is None  # the claim ahead died with its connection
    killer.join()
    h = runner.health.report()
    assert h["errors"] == 1 and h["last_error"].endswith("database error")
    _drain(runner)  # recovered: the lock again, the latest snapshot, the rest of the events
    assert runner.health.report()["restarts"] == 1
    loop.stop()
    snap, credited = final_state(loop)
    assert credited == ref_credited  # each credited once, none lost
    assert snap["events_applied"] == ref_snap["events_applied"]
    assert_same_learner(ref_snap["state"], snap["state"], cfg.featurizer.dim)
    eng.dispose()


def test_the_lock_is_taken_again_after_its_connection_dies(engine, db_url):
    """Killing every connection of the learner (as a database restart does) loses the
    lock; the learner writes nothing without it, takes it again, and ends as an
    uninterrupted run would."""
    cfg = learning_config()
    write_traffic(engine, cfg, 6)
    ref_snap, ref_credited = _reference(engine, cfg)

    eng, app = tagged_engine(db_url, pool_size=4)
    loop = LearnerLoop(eng, cfg, clock=now)
    runner = LearnerRunner(loop)
    for _ in range(3):
        assert runner.turn() == 25
    assert kill(engine, app) >= 1  # the lock connection among them
    wait_until(lambda: _advisory_locks(engine) == 0)  # the lock went with the session
    _drain(runner)
    assert runner.health.report()["restarts"] == 1
    assert _advisory_locks(engine) == 1  # taken again
    loop.stop()
    snap, credited = final_state(loop)
    assert credited == ref_credited
    assert snap["events_applied"] == ref_snap["events_applied"]
    assert_same_learner(ref_snap["state"], snap["state"], cfg.featurizer.dim)
    eng.dispose()


def test_a_learner_that_lost_its_lock_to_another_stops_learning(engine, db_url):
    cfg = learning_config()
    write_traffic(engine, cfg, 7)
    ref_snap, ref_credited = _reference(engine, cfg)

    eng, app = tagged_engine(db_url, pool_size=4)
    first = LearnerLoop(eng, cfg, clock=now)
    runner = LearnerRunner(first)
    assert runner.turn() == 25
    kill_pid(engine, first._lock_pid)  # only its idle lock connection
    second = LearnerLoop(engine, cfg, clock=now)
    second.start(wait_s=10)  # the lock is free once the session ends: the second takes over
    with engine.connect() as conn:
        claimed_before = conn.execute(
            text("SELECT count(*) FROM decisions WHERE credit_seq IS NOT NULL")
        ).scalar()
    # it may still learn the batch it claimed ahead while it held the lock (in memory
    # only: the second learner released that claim); its next claim is fenced
    turns = [runner.turn() for _ in range(3)]
    assert turns[1:] == [None, None], turns
    assert runner.health.state == "standby"
    with engine.connect() as conn:
        assert (
            conn.execute(
                text("SELECT count(*) FROM decisions WHERE credit_seq IS NOT NULL")
            ).scalar()
            == claimed_before
        )
    second.run_until_idle()
    second.stop()
    _drain(runner)  # the lock is free again: the first learner resumes from the snapshot
    first.stop()
    snap, credited = final_state(first)
    assert credited == ref_credited
    assert snap["events_applied"] == ref_snap["events_applied"]
    assert_same_learner(ref_snap["state"], snap["state"], cfg.featurizer.dim)
    eng.dispose()


def test_the_learner_thread_survives_repeated_connection_kills(engine, db_url):
    """The runner's own thread, as LearnerService runs it: every learner connection killed
    three times while it learns; it recovers each time, reports it, and ends exact."""
    cfg = learning_config(poll_interval_s=0.02)
    write_traffic(engine, cfg, 8)
    ref_snap, ref_credited = _reference(engine, cfg)

    eng, app = tagged_engine(db_url, pool_size=4)
    loop = LearnerLoop(eng, cfg, clock=now)
    runner = LearnerRunner(loop, max_backoff_s=0.2).start()
    try:
        for _ in range(3):
            wait_until(lambda: runner.health.state == "learning", timeout_s=30)
            kill(engine, app)
            wait_until(lambda: runner.health.errors > 0, timeout_s=30)
        wait_until(lambda: final_state(loop)[1] == ref_credited, timeout_s=60)
        report = runner.health.report()
        assert report["alive"] and report["healthy"] and report["restarts"] >= 1, report
    finally:
        runner.stop()
    assert not runner.health.report()["alive"]
    snap, credited = final_state(loop)
    assert credited == ref_credited
    assert snap["events_applied"] == ref_snap["events_applied"]
    assert_same_learner(ref_snap["state"], snap["state"], cfg.featurizer.dim)
    eng.dispose()
