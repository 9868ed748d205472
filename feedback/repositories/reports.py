"""Read-only queries behind the dashboard, the metrics, ``status`` and ``demo``.

Nothing here writes; each function is one report over the tables the other
repositories fill.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, text

from feedback import models as m
from feedback.objective import Objective


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


def counts_since(conn: Connection, since: datetime) -> dict[str, int]:
    """Rows written since ``since``: decisions, their outcomes, feedback rows, policy
    versions, and decisions credited to the learner."""
    q = {
        "decisions": "SELECT count(*) FROM decisions WHERE created_at >= :t",
        "outcomes": "SELECT count(*) FROM outcomes o JOIN decisions d USING (request_id) WHERE d.created_at >= :t",
        "feedback_rows": "SELECT count(*) FROM feedback WHERE created_at >= :t",
        "policy_versions": "SELECT count(*) FROM policy_snapshots WHERE created_at >= :t",
        "events_credited": "SELECT count(*) FROM decisions WHERE created_at >= :t AND credit_seq IS NOT NULL",
    }
    return {k: int(conn.execute(text(v), {"t": since}).scalar_one()) for k, v in q.items()}


# -- windowed reports (the dashboard) -------------------------------------------
# ``since``: the window's start (None: all time). Decisions are bounded by
# ``created_at >= :since`` (ix_decisions_created_at) or by a LIMIT on the newest.


def _since(col: str, since: datetime | None) -> str:
    return "TRUE" if since is None else f"{col} >= :since"


def arm_stats(
    conn: Connection, objective: Objective, since: datetime | None = None
) -> list[dict[str, Any]]:
    """Per arm, over the decisions made since ``since`` (None: all time): decisions,
    answers ok, errors, credited events with a quality (``rewarded``), the mean reward of
    those (``mean_reward``, with its count ``reward_n`` and sample standard deviation
    ``reward_sd``), and means of quality, cost, energy and latency (ok answers)."""
    reward, params = _reward_sql(objective)
    rows = conn.execute(
        text(
            f"""
            SELECT d.arm_id AS arm, count(*) AS decisions,
                   count(*) FILTER (WHERE o.status = 'ok') AS ok,
                   count(*) FILTER (WHERE o.status <> 'ok') AS errors,
                   count(*) FILTER (WHERE d.credit_quality IS NOT NULL) AS rewarded,
                   count({reward}) FILTER (WHERE d.credit_quality IS NOT NULL) AS reward_n,
                   avg({reward}) FILTER (WHERE d.credit_quality IS NOT NULL) AS reward,
                   stddev_samp({reward}) FILTER (WHERE d.credit_quality IS NOT NULL) AS reward_sd,
                   avg(d.credit_quality) AS quality,
                   avg(o.cost_usd) FILTER (WHERE o.status = 'ok') AS cost_usd,
                   avg(o.energy_j) FILTER (WHERE o.status = 'ok') AS energy_j,
                   avg(o.latency_ms) FILTER (WHERE o.status = 'ok') AS latency_ms,
                   sum(o.cost_usd) FILTER (WHERE o.status = 'ok') AS total_cost_usd,
                   sum(o.energy_j) FILTER (WHERE o.status = 'ok') AS total_energy_j
            FROM decisions d LEFT JOIN outcomes o ON o.request_id = d.request_id
            WHERE {_since("d.created_at", since)}
            GROUP BY d.arm_id ORDER BY d.arm_id
            """
        ),
        {**params, "since": since},
    ).all()
    return [
        {
            "arm": r.arm,
            "decisions": int(r.decisions),
            "ok": int(r.ok),
            "errors": int(r.errors),
            "rewarded": int(r.rewarded),
            "reward_n": int(r.reward_n),
            "mean_reward": _f(r.reward),
            "reward_sd": _f(r.reward_sd),
            "mean_quality": _f(r.quality),
            "mean_cost_usd": _f(r.cost_usd),
            "mean_energy_j": _f(r.energy_j),
            "mean_latency_ms": _f(r.latency_ms),
            "total_cost_usd": _f(r.total_cost_usd) or 0.0,
            "total_energy_j": _f(r.total_energy_j) or 0.0,
        }
        for r in rows
    ]


def feedback_since(conn: Connection, since: datetime | None = None) -> int:
    """Feedback rows received since ``since``."""
    sql = f"SELECT count(*) FROM feedback WHERE {_since('created_at', since)}"
    return int(conn.execute(text(sql), {"since": since}).scalar_one())


def recent_feedback_since(
    conn: Connection, limit: int = 50, since: datetime | None = None
) -> list[dict[str, Any]]:
    """The newest ``limit`` feedback rows received since ``since``, with the arm judged."""
    q = (
        select(m.feedback, m.decisions.c.arm_id)
        .join(m.decisions, m.decisions.c.request_id == m.feedback.c.request_id, isouter=True)
        .order_by(m.feedback.c.id.desc())
        .limit(limit)
    )
    if since is not None:
        q = q.where(m.feedback.c.created_at >= since)
    return [dict(r._mapping) for r in conn.execute(q)]


def recent_decisions_since(
    conn: Connection, limit: int = 200, since: datetime | None = None
) -> list[dict[str, Any]]:
    """The newest ``limit`` decisions made since ``since``: id, route, arm, propensity,
    policy version and context."""
    d = m.decisions.c
    q = (
        select(d.request_id, d.route, d.arm_id, d.propensity, d.policy_version, d.context)
        .order_by(d.created_at.desc())
        .limit(limit)
    )
    if since is not None:
        q = q.where(d.created_at >= since)
    return [dict(r._mapping) for r in conn.execute(q)]


def routing_sample(
    conn: Connection, objective: Objective, since: datetime | None = None, limit: int = 5000
) -> list[dict[str, Any]]:
    """The newest ``limit`` decisions made since ``since`` (one backward index scan):
    task, arm, whether credited with a quality, its reward, and the context bytes."""
    reward, params = _reward_sql(objective)
    rows = conn.execute(
        text(
            f"""
            WITH recent AS (
                SELECT request_id, created_at, task, arm_id, context, credit_quality
                FROM decisions WHERE {_since("created_at", since)}
                ORDER BY created_at DESC LIMIT :limit
            )
            SELECT d.task, d.arm_id AS arm, d.context,
                   d.credit_quality IS NOT NULL AS credited,
                   CASE WHEN d.credit_quality IS NOT NULL THEN {reward} END AS reward
            FROM recent d LEFT JOIN outcomes o ON o.request_id = d.request_id
            ORDER BY d.created_at DESC
            """
        ),
        {**params, "since": since, "limit": limit},
    ).all()
    return [dict(r._mapping) for r in rows]


def reward_curve_by_arm(
    conn: Connection, objective: Objective, buckets: int = 40, since: datetime | None = None
) -> tuple[float, float, list[dict[str, Any]]]:
    """The decisions made since ``since``, cut into ``buckets`` equal time slices from
    the first to the last: the first slice's start (epoch seconds), the slice width in
    seconds, and per (slice, arm) the counts and sums behind its means."""
    where = _since("created_at", since)
    span = conn.execute(
        text(f"SELECT min(created_at), max(created_at) FROM decisions WHERE {where}"),
        {"since": since},
    ).one()
    if span[0] is None:
        return 0.0, 0.0, []
    t0: datetime = span[0]
    width = max((span[1] - t0).total_seconds() / max(buckets, 1), 1e-3)
    reward, params = _reward_sql(objective)
    credited = "d.credit_quality IS NOT NULL"
    ok = "o.status = 'ok'"
    rows = conn.execute(
        text(
            f"""
            SELECT LEAST(floor(extract(epoch FROM d.created_at - CAST(:t0 AS timestamptz))
                               / :width), :last) AS k,
                   d.arm_id AS arm, count(*) AS n,
                   count({reward}) FILTER (WHERE {credited}) AS reward_n,
                   coalesce(sum({reward}) FILTER (WHERE {credited}), 0) AS reward_sum,
                   count(d.credit_quality) AS quality_n,
                   coalesce(sum(d.credit_quality), 0) AS quality_sum,
                   count(*) FILTER (WHERE {ok}) AS ok_n,
                   coalesce(sum(o.energy_j) FILTER (WHERE {ok}), 0) AS energy_j_sum,
                   coalesce(sum(o.latency_ms) FILTER (WHERE {ok}), 0) AS latency_ms_sum,
                   coalesce(sum(o.cost_usd) FILTER (WHERE {ok}), 0) AS cost_usd_sum
            FROM decisions d LEFT JOIN outcomes o ON o.request_id = d.request_id
            WHERE {_since("d.created_at", since)}
            GROUP BY 1, 2 ORDER BY 1, 2
            """
        ),
        {**params, "t0": t0, "width": width, "last": buckets - 1, "since": since},
    ).all()
    return t0.timestamp(), width, [dict(r._mapping) for r in rows]


def residency_epochs_since(
    conn: Connection, since: datetime | None = None, limit: int = 500
) -> list[dict[str, Any]]:
    """The newest ``limit`` residency epochs still open or ended since ``since``."""
    t = m.residency_epochs
    q = select(t).order_by(t.c.epoch.desc(), t.c.replica).limit(limit)
    if since is not None:
        q = q.where(t.c.ended_at.is_(None) | (t.c.ended_at >= since))
    return [dict(r._mapping) for r in conn.execute(q)]


def residency_totals_since(conn: Connection, since: datetime | None = None) -> list[dict[str, Any]]:
    """Per replica, over the epochs still open or ended since ``since`` (None: all):
    epochs recorded and the sums of page-ins, hits and misses."""
    where = "TRUE" if since is None else "(ended_at IS NULL OR ended_at >= :since)"
    rows = conn.execute(
        text(
            f"""
            SELECT replica, count(*) AS epochs, coalesce(sum(page_ins), 0) AS page_ins,
                   coalesce(sum(hits), 0) AS hits, coalesce(sum(misses), 0) AS misses
            FROM residency_epochs WHERE {where} GROUP BY replica ORDER BY replica
            """
        ),
        {"since": since},
    ).all()
    return [dict(r._mapping) for r in rows]


def latest_snapshot_head(conn: Connection) -> dict[str, Any] | None:
    """The latest snapshot's version, watermark, events applied and time, without its
    state: one row by primary key, whatever the number of snapshots or decisions."""
    row = conn.execute(
        text(
            "SELECT version, watermark, events_applied, created_at FROM policy_snapshots "
            "ORDER BY version DESC LIMIT 1"
        )
    ).first()
    return None if row is None else dict(row._mapping)
