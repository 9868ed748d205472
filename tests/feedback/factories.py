"""Small builders for records, and helpers that write them, used across data-layer tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import Connection, Engine, Table, func, select

from feedback.records import ArmRecord, DecisionRecord, OutcomeRecord
from feedback.repositories import request_log

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
ARMS = [
    ArmRecord(id="small", model="small", backend="replay"),
    ArmRecord(id="large", model="large", backend="replay"),
    ArmRecord(id="base:sql", model="base", adapter="sql", backend="replay"),
]


def decision(
    arm: str = "small",
    at: datetime = T0,
    dim: int = 8,
    seed: int = 0,
    request_id: uuid.UUID | None = None,
) -> DecisionRecord:
    rng = np.random.default_rng(seed)
    return DecisionRecord(
        request_id=request_id or uuid.uuid4(),
        created_at=at,
        route="auto",
        arm_id=arm,
        context=rng.normal(size=dim).astype(np.float32),
        propensity=0.5,
        policy_version=1,
        learner="linucb",
    )


def outcome(d: DecisionRecord, status: str = "ok", after_s: float = 0.5) -> OutcomeRecord:
    return OutcomeRecord(
        request_id=d.request_id,
        created_at=d.created_at + timedelta(seconds=after_s),
        status=status,
        latency_ms=500.0,
        ttft_ms=80.0,
        prompt_tokens=12,
        completion_tokens=40,
        energy_j=3.5,
        cost_usd=0.002,
        error=None if status == "ok" else "upstream 500",
    )


def write_served(engine: Engine, at: datetime | None = None) -> DecisionRecord:
    """Commit one decision (at ``at``, default now) and its ok outcome; return the decision."""
    d = decision(at=at or datetime.now(UTC))
    with engine.begin() as conn:
        request_log.write_decisions(conn, [d])
        request_log.write_outcomes(conn, [outcome(d)])
    return d


def count_rows(conn: Connection, table: Table) -> int:
    return conn.execute(select(func.count()).select_from(table)).scalar_one()


def log_counts(engine: Engine) -> tuple[int, int]:
    """(decisions, outcomes) in the request log."""
    from feedback import models as m

    with engine.connect() as conn:
        return count_rows(conn, m.decisions), count_rows(conn, m.outcomes)
