"""The request log: one decision and one outcome per attempt of a served request (a
request that fell back to other arms has one per arm it tried, linked by ``fallback_of``).

Written in batches by the gateway's writer (COPY in its binary format, idempotent on
retry); the cache manager reads recent decisions' contexts back.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from feedback import models as m
from feedback.records import DecisionRecord, OutcomeRecord
from feedback.repositories._sql import bulk_insert, is_duplicate

_DECISION_COLS = (
    "request_id",
    "created_at",
    "route",
    "arm_id",
    "context",
    "context_dim",
    "propensity",
    "policy_version",
    "learner",
    "tenant",
    "task",
    "key_id",
    "attempt",
    "fallback_of",
    "client_request_id",
)
# the columns' types, for COPY's binary format (tests check them against the tables)
_DECISION_TYPES = (
    "uuid", "timestamptz", "text", "text", "bytea", "int2", "float8", "int4", "text", "text",
    "text", "text", "int2", "uuid", "text",
)  # fmt: skip
_OUTCOME_COLS = (
    "request_id",
    "created_at",
    "status",
    "error",
    "latency_ms",
    "ttft_ms",
    "prompt_tokens",
    "completion_tokens",
    "energy_j",
    "cost_usd",
)
_OUTCOME_TYPES = (
    "uuid", "timestamptz", "text", "text", "float8", "float8", "int4", "int4", "float8", "float8",
)  # fmt: skip


def _decision_row(d: DecisionRecord) -> tuple[Any, ...]:
    ctx = np.ascontiguousarray(d.context, dtype="<f4")
    return (
        d.request_id,
        d.created_at,
        d.route,
        d.arm_id,
        ctx.tobytes(),
        ctx.shape[0],
        float(d.propensity),
        int(d.policy_version),
        d.learner,
        d.tenant,
        d.task,
        d.key_id,
        int(d.attempt),
        d.fallback_of,
        d.client_request_id,
    )


def _outcome_row(o: OutcomeRecord) -> tuple[Any, ...]:
    return (
        o.request_id,
        o.created_at,
        o.status,
        o.error,
        float(o.latency_ms),
        None if o.ttft_ms is None else float(o.ttft_ms),
        int(o.prompt_tokens),
        int(o.completion_tokens),
        float(o.energy_j),
        float(o.cost_usd),
    )


def write_decisions(
    conn: Connection, records: Sequence[DecisionRecord], *, guarded: bool = True
) -> int:
    """Bulk insert; returns rows inserted (a retried batch inserts 0). ``guarded=False``:
    a retried batch fails the transaction instead (:func:`already_written`; see
    :func:`feedback.repositories._sql.bulk_insert`)."""
    rows = [_decision_row(d) for d in records]
    return bulk_insert(
        conn, "decisions", _DECISION_COLS, rows, guarded=guarded, types=_DECISION_TYPES
    )


def write_outcomes(
    conn: Connection, records: Sequence[OutcomeRecord], *, guarded: bool = True
) -> int:
    """As :func:`write_decisions`, for outcomes."""
    rows = [_outcome_row(o) for o in records]
    return bulk_insert(conn, "outcomes", _OUTCOME_COLS, rows, guarded=guarded, types=_OUTCOME_TYPES)


def already_written(exc: BaseException) -> bool:
    """Whether an unguarded write failed on a row that is there already (a retried batch)."""
    return is_duplicate(exc)


def insert_decision(conn: Connection, d: DecisionRecord) -> None:
    """Single-row insert (the slow path, for comparison and one-off tools)."""
    conn.execute(
        pg_insert(m.decisions)
        .values(dict(zip(_DECISION_COLS, _decision_row(d), strict=True)))
        .on_conflict_do_nothing()
    )


def contexts_since(
    conn: Connection, since: datetime, limit: int = 10_000
) -> tuple[np.ndarray, list[str], datetime | None]:
    """Contexts and arms of decisions made after ``since`` (oldest first), and the newest time."""
    X, arms, _routes, newest = demand_since(conn, since, limit)
    return X, arms, newest


def demand_since(
    conn: Connection, since: datetime, limit: int = 10_000
) -> tuple[np.ndarray, list[str], list[str], datetime | None]:
    """Contexts, arms and routes (the ``model`` each request asked for) of decisions made
    after ``since`` (oldest first), and the newest time."""
    rows = conn.execute(
        text(
            "SELECT context, arm_id, route, created_at FROM decisions WHERE created_at > :t "
            "ORDER BY created_at LIMIT :n"
        ),
        {"t": since, "n": limit},
    ).all()
    if not rows:
        return np.zeros((0, 0)), [], [], None
    X = np.stack([np.frombuffer(r[0], dtype="<f4") for r in rows]).astype(np.float64)
    return X, [r[1] for r in rows], [r[2] for r in rows], rows[-1][3]


def database_oid(conn: Connection) -> int:
    """The connected database's oid (a database dropped and created again gets a new one)."""
    return int(
        conn.execute(
            text("SELECT oid FROM pg_database WHERE datname = current_database()")
        ).scalar_one()
    )
