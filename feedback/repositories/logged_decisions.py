"""Logged decisions with the reward they were credited with, for off-policy evaluation.

A decision counts once the learner has credited it with a quality (``credit_quality``
set; a ``skip`` credit carries none and is left out): its reward vector is that
quality with the outcome's energy, latency and cost, as the learner learned it. Rows
come in time order (``created_at``, then request id), within an optional window and
route. Read-only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, text


@dataclass(frozen=True)
class LoggedDecision:
    created_at: datetime
    route: str
    arm_id: str
    context: np.ndarray  # float32 as stored
    propensity: float
    policy_version: int
    learner: str
    quality: float
    energy_j: float
    latency_ms: float
    cost_usd: float


def _where(since: datetime | None, until: datetime | None, route: str | None) -> str:
    parts = ["TRUE"]
    if since is not None:
        parts.append("d.created_at >= :since")
    if until is not None:
        parts.append("d.created_at < :until")
    if route is not None:
        parts.append("d.route = :route")
    return " AND ".join(parts)


def credited_decisions(
    conn: Connection,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    route: str | None = None,
    limit: int = 200_000,
) -> list[LoggedDecision]:
    """Credited decisions in ``[since, until)`` (and ``route``), oldest first, at most
    ``limit`` (the oldest ones)."""
    sql = f"""
        SELECT d.created_at, d.route, d.arm_id, d.context, d.propensity, d.policy_version,
               d.learner, d.credit_quality, o.energy_j, o.latency_ms, o.cost_usd
        FROM decisions d JOIN outcomes o ON o.request_id = d.request_id
        WHERE d.credit_quality IS NOT NULL AND {_where(since, until, route)}
        ORDER BY d.created_at, d.request_id
        LIMIT :limit
    """
    params: dict[str, Any] = {"since": since, "until": until, "route": route, "limit": limit}
    return [
        LoggedDecision(
            created_at=r[0],
            route=r[1],
            arm_id=r[2],
            context=np.frombuffer(r[3], dtype="<f4"),
            propensity=float(r[4]),
            policy_version=int(r[5]),
            learner=r[6],
            quality=float(r[7]),
            energy_j=float(r[8]),
            latency_ms=float(r[9]),
            cost_usd=float(r[10]),
        )
        for r in conn.execute(text(sql), params)
    ]


def window_counts(
    conn: Connection,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    route: str | None = None,
) -> dict[str, int]:
    """Decisions in the window: all, credited with a quality, credited without one
    (``skip``), not credited yet."""
    sql = f"""
        SELECT count(*),
               count(*) FILTER (WHERE d.credit_quality IS NOT NULL),
               count(*) FILTER (WHERE d.credit_seq IS NOT NULL AND d.credit_quality IS NULL),
               count(*) FILTER (WHERE d.credit_seq IS NULL)
        FROM decisions d WHERE {_where(since, until, route)}
    """
    r = conn.execute(text(sql), {"since": since, "until": until, "route": route}).one()
    return {
        "decisions": int(r[0]),
        "credited": int(r[1]),
        "skipped": int(r[2]),
        "pending": int(r[3]),
    }
