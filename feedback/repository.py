"""Every SQL statement of banditctl lives here.

Functions take a SQLAlchemy ``Connection`` and never commit: the caller owns
the transaction (``with engine.begin() as conn: ...``), so a batch is written
whole or not at all. Bulk paths use COPY into a temporary table followed by
``INSERT ... ON CONFLICT DO NOTHING``, which makes a retried batch idempotent.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
from sqlalchemy import Connection, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError, IntegrityError

from feedback import models as m
from feedback.errors import NotFound
from feedback.objective import Objective
from feedback.records import (
    ArmRecord,
    DecisionRecord,
    FeedbackInput,
    FeedbackResult,
    OutcomeRecord,
    RewardRow,
)

LEARNER_LOCK_KEY = 0x62616E6469  # "bandi": one learner per database

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
)
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


# ---------------------------------------------------------------- arms


def upsert_arms(conn: Connection, arms: Iterable[ArmRecord]) -> None:
    rows = [
        {
            "id": a.id,
            "model": a.model,
            "adapter": a.adapter,
            "backend": a.backend,
            "active": a.active,
            "meta": a.meta,
        }
        for a in arms
    ]
    if not rows:
        return
    stmt = pg_insert(m.arms).values(rows)
    stmt = stmt.on_conflict_do_update(
        index_elements=[m.arms.c.id],
        set_={
            "model": stmt.excluded.model,
            "adapter": stmt.excluded.adapter,
            "backend": stmt.excluded.backend,
            "active": stmt.excluded.active,
            "meta": stmt.excluded.meta,
            "retired_at": None,
        },
    )
    conn.execute(stmt)


def retire_arm(conn: Connection, arm_id: str) -> None:
    result = conn.execute(
        m.arms.update().where(m.arms.c.id == arm_id).values(active=False, retired_at=func.now())
    )
    if result.rowcount == 0:
        raise NotFound("arm", arm_id)


def list_arms(conn: Connection, active_only: bool = False) -> list[ArmRecord]:
    q = select(m.arms).order_by(m.arms.c.id)
    if active_only:
        q = q.where(m.arms.c.active.is_(True))
    return [
        ArmRecord(
            id=r.id,
            model=r.model,
            adapter=r.adapter,
            backend=r.backend,
            active=r.active,
            meta=r.meta,
        )
        for r in conn.execute(q)
    ]


# ---------------------------------------------------------------- decisions and outcomes


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


def _copy_into(
    conn: Connection, target: str, cols: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    statement = f"COPY {target} ({', '.join(cols)}) FROM STDIN"
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        with cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
    except psycopg.Error as exc:  # surface driver errors as SQLAlchemy's, like every other call
        raise DBAPIError.instance(statement, None, exc, psycopg.Error) from exc
    finally:
        cursor.close()


def _copy_insert(
    conn: Connection,
    table: str,
    cols: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    returning: str | None = None,
) -> list[Any]:
    """COPY rows into a temp twin of ``table``, then insert them, skipping known keys.

    Returns the ``returning`` expression of each inserted row (empty if None).
    """
    if not rows:
        return []
    tmp = f"_in_{table}"
    collist = ", ".join(cols)
    conn.execute(
        text(
            f"CREATE TEMP TABLE IF NOT EXISTS {tmp} ON COMMIT DELETE ROWS AS "
            f"SELECT {collist} FROM {table} WITH NO DATA"
        )
    )
    conn.execute(text(f"TRUNCATE {tmp}"))
    _copy_into(conn, tmp, cols, rows)
    sql = f"INSERT INTO {table} ({collist}) SELECT {collist} FROM {tmp} ON CONFLICT DO NOTHING"
    if returning:
        return list(conn.execute(text(f"{sql} RETURNING {returning}")))
    return [None] * int(conn.execute(text(sql)).rowcount)


def _bulk_insert(
    conn: Connection, table: str, cols: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> int:
    """COPY straight into ``table``; if a key already exists (a batch retried after
    its commit was acknowledged late), redo it through the conflict-skipping path."""
    if not rows:
        return 0
    try:
        with conn.begin_nested():
            _copy_into(conn, table, cols, rows)
        return len(rows)
    except IntegrityError as exc:
        if getattr(exc.orig, "sqlstate", None) != "23505":  # not a unique violation: bad data
            raise
    return len(_copy_insert(conn, table, cols, rows))


def write_decisions(conn: Connection, records: Sequence[DecisionRecord]) -> int:
    """Bulk insert; returns rows inserted (a retried batch inserts 0)."""
    return _bulk_insert(conn, "decisions", _DECISION_COLS, [_decision_row(d) for d in records])


def write_outcomes(conn: Connection, records: Sequence[OutcomeRecord]) -> int:
    return _bulk_insert(conn, "outcomes", _OUTCOME_COLS, [_outcome_row(o) for o in records])


def insert_decision(conn: Connection, d: DecisionRecord) -> None:
    """Single-row insert (the slow path, for comparison and one-off tools)."""
    conn.execute(
        pg_insert(m.decisions)
        .values(dict(zip(_DECISION_COLS, _decision_row(d), strict=True)))
        .on_conflict_do_nothing()
    )


def decision_exists(conn: Connection, request_id: uuid.UUID) -> bool:
    q = select(m.decisions.c.request_id).where(m.decisions.c.request_id == request_id)
    return conn.execute(q).first() is not None


# ---------------------------------------------------------------- feedback


def record_feedback(
    conn: Connection, fb: FeedbackInput, *, require_known: bool = True
) -> FeedbackResult:
    """Store feedback once per (request id, source).

    ``require_known``: the decision must already be in the database (else
    :class:`NotFound`, nothing written). The HTTP layer turns it off when a
    valid signed feedback token proves the request was served but its
    decision may still sit in a gateway's write buffer.
    """
    if require_known and not decision_exists(conn, fb.request_id):
        raise NotFound("request_id", str(fb.request_id))
    stmt = (
        pg_insert(m.feedback)
        .values(
            request_id=fb.request_id,
            source=fb.source,
            quality=fb.quality,
            raw_rating=fb.raw_rating,
            comment=fb.comment,
        )
        .on_conflict_do_nothing(index_elements=["request_id", "source"])
        .returning(m.feedback.c.id)
    )
    new_id = conn.execute(stmt).scalar()
    return FeedbackResult(fb.request_id, fb.source, duplicate=new_id is None, feedback_id=new_id)


def record_feedback_many(conn: Connection, items: Sequence[FeedbackInput]) -> list[FeedbackResult]:
    """Batch form: one statement; reports duplicates per item (within the batch too)."""
    if not items:
        return []
    ids = list({fb.request_id for fb in items})
    known = {
        r[0]
        for r in conn.execute(
            select(m.decisions.c.request_id).where(m.decisions.c.request_id.in_(ids))
        )
    }
    missing = [str(i) for i in ids if i not in known]
    if missing:
        raise NotFound("request_id", missing[0])
    seen: set[tuple[uuid.UUID, str]] = set()
    rows = []
    for fb in items:
        key = (fb.request_id, fb.source)
        if key not in seen:
            seen.add(key)
            rows.append((fb.request_id, fb.source, fb.quality, fb.raw_rating, fb.comment))
    cols = ("request_id", "source", "quality", "raw_rating", "comment")
    returned = _copy_insert(conn, "feedback", cols, rows, returning="id, request_id, source")
    inserted = {(r.request_id, r.source): r.id for r in returned}
    results = []
    reported: set[tuple[uuid.UUID, str]] = set()
    for fb in items:
        key = (fb.request_id, fb.source)
        new_id = inserted.get(key) if key not in reported else None
        reported.add(key)
        results.append(
            FeedbackResult(fb.request_id, fb.source, duplicate=new_id is None, feedback_id=new_id)
        )
    return results


def recent_feedback(conn: Connection, limit: int = 50) -> list[dict[str, Any]]:
    q = (
        select(m.feedback, m.decisions.c.arm_id)
        .join(m.decisions, m.decisions.c.request_id == m.feedback.c.request_id, isouter=True)
        .order_by(m.feedback.c.id.desc())
        .limit(limit)
    )
    return [dict(r._mapping) for r in conn.execute(q)]


# ---------------------------------------------------------------- reward events (the learner's stream)

_READY_SQL = """
    FROM decisions d
    JOIN outcomes o ON o.request_id = d.request_id
    LEFT JOIN LATERAL (
        -- the first feedback row (by id) that arrived before the deadline; an
        -- aggregate, so the plan is a lookup on (request_id, source), never a
        -- walk of the feedback table in id order
        SELECT (array_agg(f.quality ORDER BY f.id))[1] AS quality FROM feedback f
        WHERE f.request_id = d.request_id
          AND f.created_at < d.created_at + make_interval(secs => :window)
    ) fb ON true
    WHERE d.credit_seq IS NULL
      AND (o.status <> 'ok' OR fb.quality IS NOT NULL
           OR d.created_at <= CAST(:now AS timestamptz) - make_interval(secs => :window))
"""


def claim_reward_events(
    conn: Connection, objective: Objective, now: datetime, limit: int = 5000
) -> list[RewardRow]:
    """Claim up to ``limit`` ready reward events, in decision order.

    Each claimed decision gets the next ``credit_seq`` (the learner's
    watermark), the credit kind and the quality it was credited with, by the
    rule documented in ``feedback.objective``. Call with the learner lock held.
    """
    sql = f"""
    WITH ready AS (
        SELECT d.request_id, d.created_at,
               CASE WHEN o.status <> 'ok' THEN 'error'
                    WHEN fb.quality IS NOT NULL THEN 'feedback'
                    WHEN :missing = 'prior' THEN 'prior' ELSE 'skip' END AS kind,
               CASE WHEN o.status <> 'ok' THEN CAST(:error_q AS double precision)
                    WHEN fb.quality IS NOT NULL THEN fb.quality
                    WHEN :missing = 'prior' THEN CAST(:prior_q AS double precision)
                    ELSE NULL END AS quality,
               o.latency_ms, o.energy_j, o.cost_usd
        {_READY_SQL}
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
              d.policy_version, n.kind, n.quality, n.latency_ms, n.energy_j, n.cost_usd
    """
    rows = conn.execute(
        text(sql),
        {
            "window": objective.feedback_window_s,
            "now": now,
            "missing": objective.missing_quality,
            "prior_q": objective.prior_quality,
            "error_q": objective.error_quality,
            "limit": limit,
        },
    ).all()
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
        )
        for r in rows
    ]
    out.sort(key=lambda e: e.credit_seq)
    return out


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


def try_learner_lock(conn: Connection) -> bool:
    """Session-level advisory lock: at most one learner consumes the stream."""
    return bool(
        conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LEARNER_LOCK_KEY}).scalar()
    )


def release_learner_lock(conn: Connection) -> None:
    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LEARNER_LOCK_KEY})


# ---------------------------------------------------------------- policy snapshots


def save_snapshot(
    conn: Connection,
    *,
    learner_kind: str,
    config: dict[str, Any],
    state: bytes,
    watermark: int,
    events_applied: int,
    summary: dict[str, Any],
    reason: str = "update",
    parent_version: int | None = None,
) -> int:
    """Insert the next snapshot version (state and watermark in the caller's transaction)."""
    conn.execute(text("LOCK TABLE policy_snapshots IN SHARE ROW EXCLUSIVE MODE"))
    version = int(
        conn.execute(
            select(func.coalesce(func.max(m.policy_snapshots.c.version), 0) + 1)
        ).scalar_one()
    )
    conn.execute(
        m.policy_snapshots.insert().values(
            version=version,
            learner_kind=learner_kind,
            config=config,
            state=state,
            watermark=watermark,
            events_applied=events_applied,
            summary=summary,
            reason=reason,
            parent_version=parent_version,
        )
    )
    return version


def latest_snapshot(conn: Connection) -> dict[str, Any] | None:
    r = conn.execute(
        select(m.policy_snapshots).order_by(m.policy_snapshots.c.version.desc()).limit(1)
    ).first()
    return None if r is None else dict(r._mapping)


def latest_version(conn: Connection) -> int:
    return int(
        conn.execute(select(func.coalesce(func.max(m.policy_snapshots.c.version), 0))).scalar_one()
    )


def get_snapshot(conn: Connection, version: int) -> dict[str, Any]:
    r = conn.execute(
        select(m.policy_snapshots).where(m.policy_snapshots.c.version == version)
    ).first()
    if r is None:
        raise NotFound("policy version", version)
    return dict(r._mapping)


def list_snapshots(conn: Connection, limit: int = 200) -> list[dict[str, Any]]:
    cols = [c for c in m.policy_snapshots.c if c.name != "state"]
    q = select(*cols).order_by(m.policy_snapshots.c.version.desc()).limit(limit)
    return [dict(r._mapping) for r in conn.execute(q)]


# ---------------------------------------------------------------- residency epochs


def record_residency_epoch(
    conn: Connection,
    *,
    epoch: int,
    replica: str,
    adapters: Sequence[str],
    started_at: datetime,
    reason: str,
    status: str,
    error: str | None = None,
) -> None:
    stmt = pg_insert(m.residency_epochs).values(
        epoch=epoch,
        replica=replica,
        adapters=list(adapters),
        started_at=started_at,
        reason=reason,
        status=status,
        error=error,
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["epoch", "replica"],
        set_={
            "adapters": stmt.excluded.adapters,
            "status": stmt.excluded.status,
            "error": stmt.excluded.error,
        },
    )
    conn.execute(stmt)


def close_residency_epoch(
    conn: Connection,
    *,
    epoch: int,
    replica: str,
    ended_at: datetime,
    page_ins: int,
    hits: int,
    misses: int,
) -> None:
    conn.execute(
        m.residency_epochs.update()
        .where((m.residency_epochs.c.epoch == epoch) & (m.residency_epochs.c.replica == replica))
        .values(ended_at=ended_at, page_ins=page_ins, hits=hits, misses=misses)
    )


def list_residency_epochs(conn: Connection, limit: int = 500) -> list[dict[str, Any]]:
    q = (
        select(m.residency_epochs)
        .order_by(m.residency_epochs.c.epoch.desc(), m.residency_epochs.c.replica)
        .limit(limit)
    )
    return [dict(r._mapping) for r in conn.execute(q)]


# ---------------------------------------------------------------- status


def table_counts(conn: Connection) -> dict[str, int]:
    names = ["arms", "decisions", "outcomes", "feedback", "policy_snapshots", "residency_epochs"]
    sql = " UNION ALL ".join(f"SELECT '{n}', count(*) FROM {n}" for n in names)
    return {r[0]: int(r[1]) for r in conn.execute(text(sql))}


def traffic_by_arm(conn: Connection) -> dict[str, dict[str, float | None]]:
    """Per arm: decisions, share of traffic, and mean outcome components so far."""
    rows = conn.execute(
        text(
            """
            SELECT d.arm_id, count(*) AS n,
                   avg(o.latency_ms) AS latency_ms, avg(o.energy_j) AS energy_j,
                   avg(o.cost_usd) AS cost_usd, avg(d.credit_quality) AS quality
            FROM decisions d LEFT JOIN outcomes o ON o.request_id = d.request_id
            GROUP BY d.arm_id
            """
        )
    ).all()
    total = sum(int(r.n) for r in rows) or 1
    return {
        r.arm_id: {
            "decisions": float(r.n),
            "share": int(r.n) / total,
            "mean_latency_ms": _f(r.latency_ms),
            "mean_energy_j": _f(r.energy_j),
            "mean_cost_usd": _f(r.cost_usd),
            "mean_quality": _f(r.quality),
        }
        for r in rows
    }


def _f(v: Any) -> float | None:
    return None if v is None else float(v)


# ---------------------------------------------------------------- rollback


def lock_snapshots(conn: Connection) -> None:
    """The lock :func:`save_snapshot` takes: version numbers are handed out one at a time."""
    conn.execute(text("LOCK TABLE policy_snapshots IN SHARE ROW EXCLUSIVE MODE"))


def publish_rollback(conn: Connection, version: int) -> int:
    """Publish a new snapshot holding ``version``'s learner state (reason ``rollback``).

    The stream position (watermark, events applied) is the latest snapshot's,
    not the old one's: the learner continues from there with the old state.
    Raises :class:`NotFound` for an unknown version.
    """
    lock_snapshots(conn)
    old = get_snapshot(conn, version)
    latest = latest_snapshot(conn)
    assert latest is not None  # ``old`` exists
    return save_snapshot(
        conn,
        learner_kind=old["learner_kind"],
        config=old["config"],
        state=old["state"],
        watermark=int(latest["watermark"]),
        events_applied=int(latest["events_applied"]),
        summary=old["summary"],
        reason="rollback",
        parent_version=version,
    )


def newer_rollback(conn: Connection, after_version: int) -> dict[str, Any] | None:
    """The newest snapshot above ``after_version`` if it is a rollback, else None."""
    r = conn.execute(
        select(m.policy_snapshots)
        .where(m.policy_snapshots.c.version > after_version)
        .where(m.policy_snapshots.c.reason == "rollback")
        .order_by(m.policy_snapshots.c.version.desc())
        .limit(1)
    ).first()
    return None if r is None else dict(r._mapping)


# ---------------------------------------------------------------- dashboard and metrics


def _reward_sql(objective: Objective) -> tuple[str, dict[str, float]]:
    """The objective's scalar reward of a credited decision as SQL over ``d`` and ``o``.

    Mirrors :meth:`Objective.scalarize`: weights times components, each
    component min-max normalised and clipped when the objective bounds it.
    """
    cols = {
        "quality": "d.credit_quality",
        "energy_j": "o.energy_j",
        "latency_ms": "o.latency_ms",
        "cost_usd": "o.cost_usd",
    }
    terms, params = [], {}
    for i, (name, col) in enumerate(cols.items()):
        w = float(objective.weights.get(name, 0.0))
        if w == 0.0:
            continue
        params[f"w{i}"] = w
        expr = col
        if name in objective.bounds:
            lo, hi = objective.bounds[name]
            params[f"lo{i}"], params[f"span{i}"] = float(lo), float(hi - lo)
            expr = f"LEAST(GREATEST(({col} - :lo{i}) / :span{i}, 0.0), 1.0)"
        terms.append(f"CAST(:w{i} AS double precision) * {expr}")
    return (" + ".join(terms) or "0.0"), params


def outcome_stats_by_arm(conn: Connection, objective: Objective) -> list[dict[str, Any]]:
    """Per arm: decisions, answers ok, errors, credited events with and without a quality,
    and means of reward (credited with a quality), quality, cost, energy, latency (ok answers)."""
    reward, params = _reward_sql(objective)
    rows = conn.execute(
        text(
            f"""
            SELECT d.arm_id AS arm, count(*) AS decisions,
                   count(*) FILTER (WHERE o.status = 'ok') AS ok,
                   count(*) FILTER (WHERE o.status <> 'ok') AS errors,
                   count(*) FILTER (WHERE d.credit_quality IS NOT NULL) AS rewarded,
                   avg({reward}) FILTER (WHERE d.credit_quality IS NOT NULL) AS reward,
                   avg(d.credit_quality) AS quality,
                   avg(o.cost_usd) FILTER (WHERE o.status = 'ok') AS cost_usd,
                   avg(o.energy_j) FILTER (WHERE o.status = 'ok') AS energy_j,
                   avg(o.latency_ms) FILTER (WHERE o.status = 'ok') AS latency_ms,
                   sum(o.cost_usd) FILTER (WHERE o.status = 'ok') AS total_cost_usd,
                   sum(o.energy_j) FILTER (WHERE o.status = 'ok') AS total_energy_j
            FROM decisions d LEFT JOIN outcomes o ON o.request_id = d.request_id
            GROUP BY d.arm_id ORDER BY d.arm_id
            """
        ),
        params,
    ).all()
    return [
        {
            "arm": r.arm,
            "decisions": int(r.decisions),
            "ok": int(r.ok),
            "errors": int(r.errors),
            "rewarded": int(r.rewarded),
            "mean_reward": _f(r.reward),
            "mean_quality": _f(r.quality),
            "mean_cost_usd": _f(r.cost_usd),
            "mean_energy_j": _f(r.energy_j),
            "mean_latency_ms": _f(r.latency_ms),
            "total_cost_usd": _f(r.total_cost_usd) or 0.0,
            "total_energy_j": _f(r.total_energy_j) or 0.0,
        }
        for r in rows
    ]


def reward_curve(conn: Connection, objective: Objective, buckets: int = 40) -> list[dict[str, Any]]:
    """Decisions cut into ``buckets`` equal time slices from the first to the last:
    per slice, counts and the means of the reward and of each component."""
    span = conn.execute(text("SELECT min(created_at), max(created_at) FROM decisions")).one()
    if span[0] is None:
        return []
    t0: datetime = span[0]
    width = max((span[1] - t0).total_seconds() / max(buckets, 1), 1e-3)
    reward, params = _reward_sql(objective)
    rows = conn.execute(
        text(
            f"""
            SELECT LEAST(floor(extract(epoch FROM d.created_at - CAST(:t0 AS timestamptz))
                               / :width), :last) AS k,
                   count(*) AS n,
                   count(*) FILTER (WHERE d.credit_quality IS NOT NULL) AS rewarded,
                   avg({reward}) FILTER (WHERE d.credit_quality IS NOT NULL) AS reward,
                   avg(d.credit_quality) AS quality,
                   avg(o.energy_j) FILTER (WHERE o.status = 'ok') AS energy_j,
                   avg(o.latency_ms) FILTER (WHERE o.status = 'ok') AS latency_ms,
                   avg(o.cost_usd) FILTER (WHERE o.status = 'ok') AS cost_usd
            FROM decisions d LEFT JOIN outcomes o ON o.request_id = d.request_id
            GROUP BY 1 ORDER BY 1
            """
        ),
        {**params, "t0": t0, "width": width, "last": buckets - 1},
    ).all()
    return [
        {
            "start": (t0.timestamp() + int(r.k) * width),
            "n": int(r.n),
            "rewarded": int(r.rewarded),
            "reward": _f(r.reward),
            "quality": _f(r.quality),
            "energy_j": _f(r.energy_j),
            "latency_ms": _f(r.latency_ms),
            "cost_usd": _f(r.cost_usd),
        }
        for r in rows
    ]


def recent_decisions(conn: Connection, limit: int = 200) -> list[dict[str, Any]]:
    """The newest decisions: route, arm, propensity, policy version and context bytes."""
    q = (
        select(
            m.decisions.c.request_id,
            m.decisions.c.route,
            m.decisions.c.arm_id,
            m.decisions.c.propensity,
            m.decisions.c.policy_version,
            m.decisions.c.context,
        )
        .order_by(m.decisions.c.created_at.desc())
        .limit(limit)
    )
    return [dict(r._mapping) for r in conn.execute(q)]


def decision_counts(conn: Connection) -> list[tuple[str, str, int]]:
    """(arm, route, decisions) over all decisions."""
    rows = conn.execute(
        text("SELECT arm_id, route, count(*) FROM decisions GROUP BY arm_id, route ORDER BY 1, 2")
    ).all()
    return [(r[0], r[1], int(r[2])) for r in rows]


def reward_sums_by_arm(conn: Connection) -> list[dict[str, Any]]:
    """Per arm and credit kind: events credited and the sums of each reward component."""
    rows = conn.execute(
        text(
            """
            SELECT d.arm_id AS arm, d.credit_kind AS kind, count(*) AS n,
                   coalesce(sum(d.credit_quality), 0) AS quality,
                   coalesce(sum(o.energy_j), 0) AS energy_j,
                   coalesce(sum(o.latency_ms), 0) AS latency_ms,
                   coalesce(sum(o.cost_usd), 0) AS cost_usd
            FROM decisions d JOIN outcomes o ON o.request_id = d.request_id
            WHERE d.credit_seq IS NOT NULL
            GROUP BY d.arm_id, d.credit_kind ORDER BY 1, 2
            """
        )
    ).all()
    return [dict(r._mapping) for r in rows]


def feedback_counts(conn: Connection) -> dict[str, int]:
    """Feedback rows stored, per source."""
    rows = conn.execute(text("SELECT source, count(*) FROM feedback GROUP BY source")).all()
    return {r[0]: int(r[1]) for r in rows}


def learner_progress(conn: Connection, window_s: float = 60.0) -> dict[str, float]:
    """The latest snapshot's version, watermark and events applied, and the events
    applied per second between it and the oldest snapshot within ``window_s`` before it."""
    row = conn.execute(
        text(
            """
            WITH last AS (SELECT version, watermark, events_applied, created_at
                          FROM policy_snapshots ORDER BY version DESC LIMIT 1),
                 first AS (SELECT p.events_applied, p.created_at FROM policy_snapshots p, last
                           WHERE p.created_at >= last.created_at - make_interval(secs => :w)
                           ORDER BY p.version LIMIT 1)
            SELECT last.version, last.watermark, last.events_applied,
                   last.events_applied - first.events_applied,
                   extract(epoch FROM last.created_at - first.created_at)
            FROM last, first
            """
        ),
        {"w": window_s},
    ).first()
    if row is None:
        return {"version": 0.0, "watermark": 0.0, "events_applied": 0.0, "events_per_s": 0.0}
    dt = float(row[4] or 0.0)
    return {
        "version": float(row[0]),
        "watermark": float(row[1]),
        "events_applied": float(row[2]),
        "events_per_s": float(row[3]) / dt if dt > 0 else 0.0,
    }


def residency_totals(conn: Connection) -> list[dict[str, Any]]:
    """Per replica: epochs recorded and the sums of page-ins, hits and misses."""
    rows = conn.execute(
        text(
            """
            SELECT replica, count(*) AS epochs, coalesce(sum(page_ins), 0) AS page_ins,
                   coalesce(sum(hits), 0) AS hits, coalesce(sum(misses), 0) AS misses
            FROM residency_epochs GROUP BY replica ORDER BY replica
            """
        )
    ).all()
    return [dict(r._mapping) for r in rows]


def contexts_since(
    conn: Connection, since: datetime, limit: int = 10_000
) -> tuple[np.ndarray, list[str], datetime | None]:
    """Contexts and arms of decisions made after ``since`` (oldest first), and the newest time."""
    rows = conn.execute(
        text(
            "SELECT context, arm_id, created_at FROM decisions WHERE created_at > :t "
            "ORDER BY created_at LIMIT :n"
        ),
        {"t": since, "n": limit},
    ).all()
    if not rows:
        return np.zeros((0, 0)), [], None
    X = np.stack([np.frombuffer(r[0], dtype="<f4") for r in rows]).astype(np.float64)
    return X, [r[1] for r in rows], rows[-1][2]


def resident_adapters(conn: Connection) -> dict[str, list[str]]:
    """Per replica, the adapters of its latest applied epoch."""
    rows = conn.execute(
        text(
            "SELECT DISTINCT ON (replica) replica, adapters FROM residency_epochs "
            "WHERE status = 'applied' ORDER BY replica, epoch DESC"
        )
    ).all()
    return {r[0]: list(r[1]) for r in rows}


def add_epoch_traffic(
    conn: Connection, *, epoch: int, replica: str, hits: int, misses: int
) -> None:
    """Add an epoch's request traffic; each miss was a page-in on the request path."""
    conn.execute(
        m.residency_epochs.update()
        .where((m.residency_epochs.c.epoch == epoch) & (m.residency_epochs.c.replica == replica))
        .values(
            hits=m.residency_epochs.c.hits + hits,
            misses=m.residency_epochs.c.misses + misses,
            page_ins=m.residency_epochs.c.page_ins + misses,
        )
    )
