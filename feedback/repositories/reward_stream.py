"""The learner's reward stream: decisions become reward events once their quality is known.

A ready decision is claimed by giving it the next ``credit_seq``, the credit
kind and the quality it was credited with, by the rule documented in
``feedback.objective`` (:meth:`Objective.resolve_quality`); the SQL here is
that rule's production form, checked against it in
``tests/feedback/repositories/test_reward_stream.py``. One learner per
database consumes the stream, under an advisory lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import Connection, text

from feedback.objective import Objective
from feedback.records import RewardRow

LEARNER_LOCK_KEY = 0x62616E6469  # "bandi": one learner per database

_FIRST_FEEDBACK = """
    LEFT JOIN LATERAL (
        -- the first feedback row (by id) that arrived before the deadline; an
        -- aggregate, so the plan is a lookup on (request_id, source), never a
        -- walk of the feedback table in id order
        SELECT (array_agg(f.quality ORDER BY f.id))[1] AS quality,
               (array_agg(f.created_at ORDER BY f.id))[1] AS stored_at FROM feedback f
        WHERE f.request_id = d.request_id
          AND f.created_at < d.created_at + make_interval(secs => :window)
    ) fb ON true
"""

_PAST_DEADLINE = "d.created_at <= CAST(:now AS timestamptz) - make_interval(secs => :window)"

_READY_WHERE = f"""
    d.credit_seq IS NULL
      AND (o.status <> 'ok' OR fb.quality IS NOT NULL OR {_PAST_DEADLINE})
"""

# Uncredited decisions with their outcome, past their deadline: ready whatever their
# feedback, read from the uncredited index's ready end (a cost that grows with them only)
_OVERDUE_SQL = f"""
    FROM decisions d
    JOIN outcomes o ON o.request_id = d.request_id
    WHERE d.credit_seq IS NULL AND {_PAST_DEADLINE}
"""

# Every uncredited decision, ready or still waiting for its feedback: a sweep reads
# each decision inside the feedback window, so its cost grows with traffic x window.
_READY_SQL = f"""
    FROM decisions d
    JOIN outcomes o ON o.request_id = d.request_id
    {_FIRST_FEEDBACK}
    WHERE {_READY_WHERE}
"""

# The same rule over the decisions that can have become ready since a frontier: those
# past their deadline (the oldest ``limit``, in the uncredited index's order), those
# with feedback rows newer than the frontier's id, and those with a failure logged
# since its time. A decision still waiting is not read.
_BOUNDED_READY_SQL = f"""
    FROM (
        (SELECT d.request_id {_OVERDUE_SQL} ORDER BY d.created_at, d.request_id LIMIT :limit)
        UNION
        SELECT f.request_id FROM feedback f WHERE f.id > :feedback_after
        UNION
        SELECT o.request_id FROM outcomes o
         WHERE o.status <> 'ok' AND o.created_at >= CAST(:failed_since AS timestamptz)
    ) c
    JOIN decisions d ON d.request_id = c.request_id
    JOIN outcomes o ON o.request_id = d.request_id
    {_FIRST_FEEDBACK}
    WHERE {_READY_WHERE}
"""


def _claim_sql(ready_from: str) -> str:
    return f"""
WITH ready AS (
    SELECT d.request_id, d.created_at,
           CASE WHEN o.status <> 'ok' THEN 'error'
                WHEN fb.quality IS NOT NULL THEN 'feedback'
                WHEN :missing = 'prior' THEN 'prior' ELSE 'skip' END AS kind,
           CASE WHEN o.status <> 'ok' THEN CAST(:error_q AS double precision)
                WHEN fb.quality IS NOT NULL THEN fb.quality
                WHEN :missing = 'prior' THEN CAST(:prior_q AS double precision)
                ELSE NULL END AS quality,
           o.latency_ms, o.energy_j, o.cost_usd,
           -- a feedback credit: seconds from its rating's row (the server's clock) to now
           CASE WHEN o.status = 'ok' AND fb.quality IS NOT NULL
                THEN CAST(extract(epoch FROM clock_timestamp() - fb.stored_at)
                          AS double precision) END AS feedback_wait_s
    {ready_from}
    ORDER BY d.created_at, d.request_id
    LIMIT :limit
), numbered AS (
    SELECT r.*, nextval('reward_credit_seq') AS seq
    FROM (SELECT * FROM ready ORDER BY created_at, request_id) r
)
UPDATE decisions d
   SET credit_seq = n.seq, credit_kind = n.kind, credit_quality = n.quality
  FROM numbered n
 WHERE d.request_id = n.request_id
RETURNING n.seq, d.request_id, d.created_at, d.arm_id, d.context, d.propensity,
          d.policy_version, n.kind, n.quality, n.latency_ms, n.energy_j, n.cost_usd,
          n.feedback_wait_s
"""


_CLAIM_SQL = _claim_sql(_READY_SQL)
_BOUNDED_CLAIM_SQL = _claim_sql(_BOUNDED_READY_SQL)


@dataclass(frozen=True)
class ClaimFrontier:
    """Where a bounded claim looks for decisions that became ready by an event: feedback
    rows with an id above ``feedback_after``, failures logged at or after ``failed_since``
    (:func:`frontier_now` reads one). Decisions ready by their deadline need none."""

    feedback_after: int
    failed_since: datetime


def frontier_now(conn: Connection, now: datetime) -> ClaimFrontier:
    """The newest feedback id committed and ``now``: a later claim given this frontier
    reads only the feedback and failures that arrived after it (one index descent)."""
    newest = conn.execute(text("SELECT coalesce(max(id), 0) FROM feedback")).scalar_one()
    return ClaimFrontier(int(newest), now)


def claim_params(objective: Objective, now: datetime, limit: int) -> dict[str, object]:
    """The claim statement's parameters (``bench/bench_scaling.py`` explains its plan)."""
    return {
        "window": objective.feedback_window_s,
        "now": now,
        "missing": objective.missing_quality,
        "prior_q": objective.prior_quality,
        "error_q": objective.error_quality,
        "limit": limit,
    }


def claim_reward_events(
    conn: Connection,
    objective: Objective,
    now: datetime,
    limit: int = 5000,
    *,
    since: ClaimFrontier | None = None,
) -> list[RewardRow]:
    """Claim up to ``limit`` ready reward events, in decision order.

    Each claimed decision gets the next ``credit_seq`` (the learner's
    watermark), the credit kind and the quality it was credited with, by the
    rule documented in ``feedback.objective``. Call with the learner lock held.

    Without ``since`` it sweeps every uncredited decision: its cost grows with the
    decisions still inside their feedback window (traffic x window), ready or not.
    With ``since`` it reads only the decisions past their deadline and those with
    feedback or a failure that arrived after the frontier, by the same rule; a
    decision that became ready before the frontier and was not claimed then is
    claimed at its deadline, or by the next sweep.
    """
    params = claim_params(objective, now, limit)
    if since is None:
        rows = conn.execute(text(_CLAIM_SQL), params).all()
    else:
        params |= {"feedback_after": since.feedback_after, "failed_since": since.failed_since}
        rows = conn.execute(text(_BOUNDED_CLAIM_SQL), params).all()
    out = [
        RewardRow(
            credit_seq=int(r[0]),
            request_id=r[1],
            created_at=r[2],
            arm_id=r[3],
            context=np.frombuffer(r[4], dtype="<f4"),  # float32 as stored, read-only view
            propensity=float(r[5]),
            policy_version=int(r[6]),
            credit_kind=r[7],
            quality=None if r[8] is None else float(r[8]),
            latency_ms=float(r[9]),
            energy_j=float(r[10]),
            cost_usd=float(r[11]),
            feedback_wait_s=None if r[12] is None else max(0.0, float(r[12])),
        )
        for r in rows
    ]
    out.sort(key=lambda e: e.credit_seq)
    return out


LOST_OUTCOME_ERROR = "lost: no outcome was logged for this decision (its gateway stopped)"


def close_lost_decisions(conn: Connection, before: datetime, latency_ms: float) -> int:
    """Give an error outcome to each uncredited decision made before ``before`` that has
    none: its gateway stopped after the batch that held the decision and before the one
    that held its outcome, and without an outcome it would never be credited. Its
    latency is ``latency_ms`` (the time it waited, at least); an outcome written later
    for it is a duplicate (``ON CONFLICT DO NOTHING``). Returns how many were closed."""
    result = conn.execute(
        text(
            """
            INSERT INTO outcomes (request_id, created_at, status, error, latency_ms)
            SELECT d.request_id, now(), 'error', :error, :latency_ms
              FROM decisions d
             WHERE d.credit_seq IS NULL AND d.created_at < :before
               AND NOT EXISTS (SELECT 1 FROM outcomes o WHERE o.request_id = d.request_id)
            ON CONFLICT (request_id) DO NOTHING
            """
        ),
        {"before": before, "latency_ms": latency_ms, "error": LOST_OUTCOME_ERROR},
    )
    return int(result.rowcount)


def release_claims_after(conn: Connection, watermark: int) -> int:
    """Un-claim events credited after ``watermark`` (a restart's first step)."""
    result = conn.execute(
        text(
            "UPDATE decisions SET credit_seq = NULL, credit_kind = NULL, credit_quality = NULL "
            "WHERE credit_seq > :wm"
        ),
        {"wm": watermark},
    )
    return int(result.rowcount)


def learner_lag(conn: Connection, objective: Objective, now: datetime) -> dict[str, float]:
    """Events ready but not yet credited, and the age in seconds of the oldest."""
    row = conn.execute(
        text(f"SELECT count(*), min(d.created_at) {_READY_SQL}"),
        {"window": objective.feedback_window_s, "now": now},
    ).one()
    oldest = row[1]
    return {
        "events_behind": float(row[0]),
        "seconds_behind": 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds()),
    }


def overdue(conn: Connection, objective: Objective, now: datetime) -> dict[str, float]:
    """Decisions past their feedback deadline and not credited yet, and how long past it
    the oldest is: the part of :func:`learner_lag` that a stalled learner piles up, read
    from the uncredited index's ready end only (its cost grows with the lag, not with the
    decisions still waiting). A learner that keeps up leaves none; feedback-ready ones
    it claims within a poll."""
    row = conn.execute(
        text(f"SELECT count(*), min(d.created_at) {_OVERDUE_SQL}"),
        {"window": objective.feedback_window_s, "now": now},
    ).one()
    oldest = row[1]
    deadline_s = objective.feedback_window_s
    return {
        "events_behind": float(row[0]),
        "seconds_behind": 0.0
        if oldest is None
        else max(0.0, (now - oldest).total_seconds() - deadline_s),
    }


def try_learner_lock(conn: Connection) -> bool:
    """Session-level advisory lock: at most one learner consumes the stream."""
    return bool(
        conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LEARNER_LOCK_KEY}).scalar()
    )


def release_learner_lock(conn: Connection) -> None:
    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LEARNER_LOCK_KEY})


def holds_learner_lock(conn: Connection, backend_pid: int) -> bool:
    """Whether the session ``backend_pid`` (the learner's lock connection) holds the
    learner lock now. Checked inside each claim and snapshot transaction, so that a
    learner whose lock connection died (and whose lock another learner may have taken
    since) writes nothing."""
    row = conn.execute(
        text(
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid::bigint = :hi AND objid::bigint = :lo AND objsubid = 1 "
            "AND pid = :pid"
        ),
        {"hi": LEARNER_LOCK_KEY >> 32, "lo": LEARNER_LOCK_KEY & 0xFFFFFFFF, "pid": backend_pid},
    ).first()
    return row is not None
