"""The batched writer: everything accepted lands once; failures are whole-batch."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from feedback.errors import WriterFull
from feedback.repositories import request_log
from feedback.writer import DecisionLogWriter
from tests.feedback.factories import decision, log_counts, outcome


def test_background_writer_lands_everything_accepted(arms):
    w = DecisionLogWriter(arms, max_batch=64, flush_interval_s=0.01).start()
    for i in range(500):
        d = decision(seed=i)
        w.log_decision(d)
        w.log_outcome(outcome(d))
    assert w.close(timeout_s=60)
    assert log_counts(arms) == (500, 500)
    s = w.stats
    assert (s.accepted, s.written_decisions, s.written_outcomes, s.buffered) == (1000, 500, 500, 0)
    assert s.flushes >= 1000 // 64


def test_transient_failure_midway_is_retried_without_half_batches(arms, monkeypatch):
    calls = {"n": 0}
    real = request_log.write_outcomes

    def flaky(conn, records, **kw):
        calls["n"] += 1
        if calls["n"] <= 2:  # the decisions of this batch are already inserted, uncommitted
            raise OperationalError("INSERT", {}, Exception("server closed the connection"))
        return real(conn, records, **kw)

    monkeypatch.setattr(request_log, "write_outcomes", flaky)
    sleeps: list[float] = []
    w = DecisionLogWriter(arms, max_batch=100, sleep=sleeps.append)
    ds = [decision(seed=i) for i in range(30)]
    for d in ds:
        w.log_decision(d)
        w.log_outcome(outcome(d))
    assert w.flush_once_sync() == 60
    assert log_counts(arms) == (30, 30)
    assert w.stats.retries == 2 and sleeps == [0.05, 0.1]
    assert w.stats.written_decisions == 30  # the rolled-back attempts counted nothing


def test_a_batch_partly_written_already_lands_once(arms):
    # a batch retried after its commit was acknowledged late: the unguarded COPY fails on
    # the rows already there, and the batch is written again skipping them
    ds = [decision(seed=i) for i in range(20)]
    os_ = [outcome(d) for d in ds]
    with arms.begin() as conn:
        request_log.write_decisions(conn, ds[:10])
        request_log.write_outcomes(conn, os_[:5])
    w = DecisionLogWriter(arms, max_batch=100)
    for d, o in zip(ds, os_, strict=True):
        w.log_decision(d)
        w.log_outcome(o)
    assert w.flush_once_sync() == 40
    assert log_counts(arms) == (20, 20)
    s = w.stats
    assert (s.written_decisions, s.written_outcomes, s.invalid, s.retries) == (10, 15, 0, 0)
    for i in range(3):  # a batch of new rows only
        w.log_decision(decision(seed=200 + i, arm="large"))
    assert w.flush_once_sync() == 3
    assert log_counts(arms) == (23, 20) and w.stats.written_decisions == 13


def test_invalid_records_are_isolated_and_counted_the_rest_lands(arms):
    w = DecisionLogWriter(arms, max_batch=100)
    good = [decision(seed=i) for i in range(20)]
    bad = decision(arm="retired-long-ago")
    for d in good[:10] + [bad] + good[10:]:
        w.log_decision(d)
    w.log_outcome(outcome(bad))  # its outcome cannot land either
    w.flush_once_sync()
    assert log_counts(arms) == (20, 0)
    assert w.stats.invalid == 2 and w.stats.buffered == 0
    assert "fk_outcomes_request_id_decisions" in (w.stats.last_error or "")


def test_full_buffer_refuses_instead_of_dropping(arms):
    """A decision needs room for itself and its outcome; an outcome is never refused, so
    no answered request is logged without one."""
    w = DecisionLogWriter(arms, max_buffer=10, max_batch=10)
    ds = [decision(seed=i) for i in range(9)]
    for d in ds:
        w.log_decision(d)
    with pytest.raises(WriterFull):
        w.log_decision(decision(seed=99))  # 9 + itself + its outcome > 10
    for d in ds[:3]:
        w.log_outcome(outcome(d))  # over max_buffer: the decisions kept room for them
    assert w.stats.rejected == 1 and w.stats.buffered == 12
    while w.flush_once_sync():
        pass
    w.log_decision(decision(seed=100))  # room again
    w.flush_once_sync()
    assert log_counts(arms) == (10, 3)


def test_unencodable_text_is_dropped_and_the_writer_thread_goes_on(arms):
    """An unpaired surrogate cannot be encoded for COPY: that record is dropped and
    counted, its batch's other records land, and the background thread keeps writing."""
    from dataclasses import replace

    w = DecisionLogWriter(arms, max_batch=64, flush_interval_s=0.01).start()
    good = [decision(seed=i) for i in range(10)]
    bad = replace(decision(seed=99), tenant="team-\ud800")
    nul = replace(decision(seed=98), task="a\x00b")
    for d in good[:5] + [bad, nul] + good[5:]:
        w.log_decision(d)
    assert w.flush(timeout_s=30)
    assert w._thread is not None and w._thread.is_alive()
    later = [decision(seed=100 + i) for i in range(5)]
    for d in later:
        w.log_decision(d)
        w.log_outcome(outcome(d))
    assert w.close(timeout_s=30)
    assert log_counts(arms) == (15, 5)
    assert w.stats.invalid == 2
    report = w.health.report()
    assert report["errors"] >= 2 and report["last_error"] is not None
    assert "\ud800" not in report["last_error"]


def test_an_unexpected_error_in_a_turn_does_not_kill_the_writer(arms, monkeypatch):
    """A turn that raises outside the batch write (a bug) is counted as a restart; the
    batch stays queued and lands on a later turn."""
    real = DecisionLogWriter.flush_once_sync
    calls = {"n": 0}

    def broken_once(self):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return real(self)

    monkeypatch.setattr(DecisionLogWriter, "flush_once_sync", broken_once)
    w = DecisionLogWriter(arms, max_batch=64, flush_interval_s=0.01, sleep=lambda _s: None).start()
    d = decision(seed=1)
    w.log_decision(d)
    assert w.flush(timeout_s=30)
    assert log_counts(arms) == (1, 0)
    h = w.health.report()
    assert h["alive"] and h["healthy"] and h["restarts"] == 1 and h["last_error"] == "RuntimeError"
    w.close()


def test_health_reports_a_dead_or_stuck_writer(arms):
    clock = {"t": 0.0}
    w = DecisionLogWriter(arms, max_batch=64, flush_interval_s=0.01, stale_after_s=5)
    w.health._clock = lambda: clock["t"]
    w.health.beat()
    clock["t"] = 6.0
    assert w.health.report()["healthy"]  # not started: neither stuck nor dead
    assert w.health.report()["state"] == "not started"
    w.health.alive = lambda: True  # a live thread that makes no progress
    assert w.health.report()["problem"].startswith("stuck")
    w.health.beat()
    assert w.health.report()["healthy"]
    w.start()
    w.close()
    assert w.health.report()["problem"] == "dead"


def test_written_waits_for_the_rows_and_asks_for_them_at_once(arms):
    """``written`` returns once every record appended before it is in the table, long
    before the thread's own interval (an hour here); and False, the records kept, while
    the thread cannot write them."""
    import asyncio

    w = DecisionLogWriter(arms, flush_interval_s=3600).start()
    d = decision(seed=1)
    w.log_decision(d)
    w.log_outcome(outcome(d))
    assert asyncio.run(w.written(timeout_s=30))
    assert log_counts(arms) == (1, 1)  # no close, no flush: written asked for them
    assert asyncio.run(w.written(timeout_s=0.01))  # nothing new: at once
    w.close(timeout_s=30)

    idle = DecisionLogWriter(arms, flush_interval_s=3600)  # no thread: nothing writes
    idle.log_decision(decision(seed=2))
    assert not asyncio.run(idle.written(timeout_s=0.05))
    assert idle.stats.buffered == 1
    assert log_counts(arms) == (1, 1)
