"""The batched writer: everything accepted lands once; failures are whole-batch."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from feedback import models as m
from feedback.errors import WriterFull
from feedback.repositories import arms as arms_repo
from feedback.repositories import request_log
from feedback.writer import DecisionLogWriter
from tests.feedback.factories import ARMS, decision, outcome


@pytest.fixture
def arms(engine):
    with engine.begin() as conn:
        arms_repo.upsert_arms(conn, ARMS)
    return engine


def _counts(engine) -> tuple[int, int]:
    with engine.connect() as conn:
        nd = conn.execute(select(func.count()).select_from(m.decisions)).scalar_one()
        no = conn.execute(select(func.count()).select_from(m.outcomes)).scalar_one()
    return nd, no


def test_background_writer_lands_everything_accepted(arms):
    w = DecisionLogWriter(arms, max_batch=64, flush_interval_s=0.01).start()
    for i in range(500):
        d = decision(seed=i)
        w.log_decision(d)
        w.log_outcome(outcome(d))
    assert w.close(timeout_s=60)
    assert _counts(arms) == (500, 500)
    s = w.stats
    assert (s.accepted, s.written_decisions, s.written_outcomes, s.buffered) == (1000, 500, 500, 0)
    assert s.flushes >= 1000 // 64


def test_transient_failure_midway_is_retried_without_half_batches(arms, monkeypatch):
    calls = {"n": 0}
    real = request_log.write_outcomes

    def flaky(conn, records):
        calls["n"] += 1
        if calls["n"] <= 2:  # the decisions of this batch are already inserted, uncommitted
            raise OperationalError("INSERT", {}, Exception("server closed the connection"))
        return real(conn, records)

    monkeypatch.setattr(request_log, "write_outcomes", flaky)
    sleeps: list[float] = []
    w = DecisionLogWriter(arms, max_batch=100, sleep=sleeps.append)
    ds = [decision(seed=i) for i in range(30)]
    for d in ds:
        w.log_decision(d)
        w.log_outcome(outcome(d))
    assert w.flush_once_sync() == 60
    assert _counts(arms) == (30, 30)
    assert w.stats.retries == 2 and sleeps == [0.05, 0.1]
    assert w.stats.written_decisions == 30  # the rolled-back attempts counted nothing


def test_invalid_records_are_isolated_and_counted_the_rest_lands(arms):
    w = DecisionLogWriter(arms, max_batch=100)
    good = [decision(seed=i) for i in range(20)]
    bad = decision(arm="retired-long-ago")
    for d in good[:10] + [bad] + good[10:]:
        w.log_decision(d)
    w.log_outcome(outcome(bad))  # its outcome cannot land either
    w.flush_once_sync()
    assert _counts(arms) == (20, 0)
    assert w.stats.invalid == 2 and w.stats.buffered == 0
    assert "fk_outcomes_request_id_decisions" in (w.stats.last_error or "")


def test_full_buffer_refuses_instead_of_dropping(arms):
    w = DecisionLogWriter(arms, max_buffer=10, max_batch=10)
    for i in range(10):
        w.log_decision(decision(seed=i))
    with pytest.raises(WriterFull):
        w.log_decision(decision(seed=99))
    assert w.stats.rejected == 1 and w.stats.buffered == 10
    w.flush_once_sync()
    w.log_decision(decision(seed=100))  # room again
    w.flush_once_sync()
    assert _counts(arms) == (11, 0)
