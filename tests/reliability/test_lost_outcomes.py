"""A gateway that dies between the batch holding a decision and the one holding its
outcome leaves a decision without an outcome: the learner closes it with an error
outcome once ``learner_service.outcome_timeout_s`` has passed, and credits it once."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import text

from controlplane.learner_loop import LearnerLoop, arm_records
from feedback.records import DecisionRecord, OutcomeRecord
from feedback.repositories import arms as arms_repo
from feedback.repositories import request_log, reward_stream
from tests.controlplane.learning import learning_config

pytestmark = pytest.mark.reliability

TIMEOUT_S = 5.0


class Clock:
    def __init__(self) -> None:
        self.mono = 1000.0

    def monotonic(self) -> float:
        return self.mono


def _decision(cfg, created_at: datetime, i: int) -> DecisionRecord:
    x = np.random.default_rng(i).normal(size=cfg.featurizer.dim).astype(np.float32)
    return DecisionRecord(
        uuid.uuid4(), created_at, "auto", cfg.arms[i % 4].name, x, 0.5, 1, "linucb"
    )


def _credits(engine, ids):
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT d.request_id, d.credit_seq, d.credit_kind, o.status, o.error "
                "FROM decisions d LEFT JOIN outcomes o USING (request_id) "
                "WHERE d.request_id = ANY(:ids)"
            ),
            {"ids": list(ids)},
        ).all()
    return {r[0]: r[1:] for r in rows}


def test_a_decision_without_outcome_is_closed_as_an_error_and_credited_once(engine):
    cfg = learning_config(outcome_timeout_s=TIMEOUT_S)
    now = datetime.now(UTC)
    served = [_decision(cfg, now - timedelta(seconds=60), i) for i in range(6)]
    lost = [_decision(cfg, now - timedelta(seconds=60), 10 + i) for i in range(3)]
    in_flight = _decision(cfg, now, 20)  # made just now: its outcome may still come
    with engine.begin() as conn:
        arms_repo.upsert_arms(conn, arm_records(cfg))
        request_log.write_decisions(conn, [*served, *lost, in_flight])
        request_log.write_outcomes(
            conn, [OutcomeRecord(d.request_id, now, "error", latency_ms=5.0) for d in served]
        )

    clock = Clock()
    loop = LearnerLoop(engine, cfg, clock=lambda: now, monotonic=clock.monotonic)
    loop.start()
    loop.run_until_idle()
    got = _credits(engine, [d.request_id for d in lost])
    # the loop has just taken the lock: the gateways' buffered outcomes may still land
    assert all(seq is None and status is None for seq, _k, status, _e in got.values()), got
    assert loop.events_applied == 6

    clock.mono += TIMEOUT_S + 0.1
    loop.run_until_idle()
    got = _credits(engine, [d.request_id for d in lost])
    assert {(kind, status, err) for _s, kind, status, err in got.values()} == {
        ("error", "error", reward_stream.LOST_OUTCOME_ERROR)
    }
    assert loop.stats["lost_outcomes"] == 3 and loop.events_applied == 9
    flying = _credits(engine, [in_flight.request_id])[in_flight.request_id]
    assert flying == (None, None, None, None)  # younger than the timeout: left alone

    # the outcome arriving after all (a gateway that was only slow) is a duplicate
    late = OutcomeRecord(lost[0].request_id, now, "ok", latency_ms=1.0)
    with engine.begin() as conn:
        request_log.write_outcomes(conn, [late])
    clock.mono += 2.0
    loop.run_until_idle()
    assert _credits(engine, [lost[0].request_id])[lost[0].request_id][1:3] == ("error", "error")
    assert loop.events_applied == 9
    loop.stop()


def test_after_a_recovery_the_sweep_waits_the_timeout_again(engine):
    cfg = learning_config(outcome_timeout_s=TIMEOUT_S)
    now = datetime.now(UTC)
    lost = _decision(cfg, now - timedelta(seconds=60), 1)
    with engine.begin() as conn:
        arms_repo.upsert_arms(conn, arm_records(cfg))
        request_log.write_decisions(conn, [lost])
    clock = Clock()
    loop = LearnerLoop(engine, cfg, clock=lambda: now, monotonic=clock.monotonic)
    loop.start()
    clock.mono += TIMEOUT_S - 1.0
    loop.recover()  # the database went away: the gateways' outcomes are buffered
    loop.start()
    clock.mono += TIMEOUT_S - 1.0  # the timeout since the start before, not since this one
    loop.run_until_idle()
    assert _credits(engine, [lost.request_id])[lost.request_id][0] is None
    clock.mono += 1.5
    loop.run_until_idle()
    assert _credits(engine, [lost.request_id])[lost.request_id][1] == "error"
    loop.stop()
