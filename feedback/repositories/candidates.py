"""Policy candidates, their shadows' picks and the release log (issue #12).

A candidate is registered with a spec (a learner config and/or objective weights) and
starts without a state; the learner service gives it a shadow learner, which learns
from the same credited reward events as the live learner and saves its state and
watermark in the live learner's snapshot transaction (:func:`save_shadow_state`). For
every credited decision it sees, the shadow records the arm it would have picked and
its probabilities (:func:`record_shadow_picks`); off-policy evaluation reads them back
with the decision's context (:func:`shadow_log`). Every registration, promotion,
refusal and rollback is a row of ``policy_releases`` (:func:`record_release`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, select, text, update
from sqlalchemy.dialects.postgresql import insert

from feedback import models as m
from feedback.errors import InvalidInput, NotFound

_C = m.policy_candidates
_R = m.policy_releases


@dataclass(frozen=True)
class ShadowPick:
    """What a shadow would have done on one credited decision."""

    request_id: uuid.UUID
    credit_seq: int
    created_at: datetime
    arm: str
    propensity: float
    logged_arm: str
    logged_propensity: float
    probs: dict[str, float]
    reward: float | None


def register_candidate(
    conn: Connection, name: str, spec: dict[str, Any], created_by: str | None
) -> int:
    """Insert a candidate (status ``shadow``, no state yet); 422 for a taken name."""
    row = conn.execute(
        insert(_C)
        .values(name=name, spec=spec, created_by=created_by)
        .on_conflict_do_nothing(index_elements=["name"])
        .returning(_C.c.id)
    ).first()
    if row is None:
        raise InvalidInput("name", f"a candidate named {name!r} exists already")
    return int(row[0])


def get_candidate(conn: Connection, candidate_id: int) -> dict[str, Any]:
    r = conn.execute(select(_C).where(_C.c.id == candidate_id)).first()
    if r is None:
        raise NotFound("candidate", candidate_id)
    return dict(r._mapping)


def list_candidates(
    conn: Connection, statuses: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    q = select(_C).order_by(_C.c.id)
    if statuses is not None:
        q = q.where(_C.c.status.in_(list(statuses)))
    return [dict(r._mapping) for r in conn.execute(q)]


def set_status(conn: Connection, candidate_id: int, status: str) -> None:
    conn.execute(update(_C).where(_C.c.id == candidate_id).values(status=status))


def save_shadow_state(
    conn: Connection,
    candidate_id: int,
    *,
    state: bytes,
    watermark: int,
    events_applied: int,
    started_at_seq: int,
) -> None:
    """Store a shadow's state with the stream position it reached (the live learner's
    snapshot transaction: both resume from the same watermark)."""
    conn.execute(
        update(_C)
        .where(_C.c.id == candidate_id)
        .values(
            state=state,
            watermark=watermark,
            events_applied=events_applied,
            started_at_seq=started_at_seq,
        )
    )


def drop_picks_after(conn: Connection, candidate_id: int, watermark: int) -> int:
    """Delete a shadow's picks above ``watermark``: their decisions were un-claimed and
    will be credited (and picked) again."""
    result = conn.execute(
        text("DELETE FROM shadow_decisions WHERE candidate_id = :c AND credit_seq > :wm"),
        {"c": candidate_id, "wm": watermark},
    )
    return int(result.rowcount)


_INSERT_PICKS = text(
    """
    INSERT INTO shadow_decisions (candidate_id, request_id, credit_seq, created_at, arm,
                                  propensity, logged_arm, logged_propensity, probs, reward)
    VALUES (:candidate_id, :request_id, :credit_seq, :created_at, :arm, :propensity,
            :logged_arm, :logged_propensity, CAST(:probs AS jsonb), :reward)
    ON CONFLICT (candidate_id, request_id) DO UPDATE
       SET credit_seq = EXCLUDED.credit_seq, arm = EXCLUDED.arm,
           propensity = EXCLUDED.propensity, logged_propensity = EXCLUDED.logged_propensity,
           probs = EXCLUDED.probs, reward = EXCLUDED.reward
    """
)


def record_shadow_picks(conn: Connection, candidate_id: int, picks: Sequence[ShadowPick]) -> None:
    """Insert picks (one statement, many parameter sets); a decision picked again
    (credited anew after a restart) replaces the earlier row."""
    if not picks:
        return
    conn.execute(
        _INSERT_PICKS,
        [
            {
                "candidate_id": candidate_id,
                "request_id": p.request_id,
                "credit_seq": p.credit_seq,
                "created_at": p.created_at,
                "arm": p.arm,
                "propensity": p.propensity,
                "logged_arm": p.logged_arm,
                "logged_propensity": p.logged_propensity,
                "probs": json.dumps(p.probs),
                "reward": p.reward,
            }
            for p in picks
        ],
    )


@dataclass(frozen=True)
class ShadowLog:
    """A candidate's picks with the logged decisions' contexts, in credit order."""

    contexts: np.ndarray  # (n, d) float64
    logged_arms: list[str]
    logged_propensities: np.ndarray
    rewards: np.ndarray
    probs: list[dict[str, float]]
    arms: list[str]  # the shadow's picks
    created_at: list[datetime]


def shadow_log(
    conn: Connection, candidate_id: int, *, since: datetime | None = None, limit: int = 20_000
) -> ShadowLog:
    """The candidate's newest ``limit`` picks with a reward (skip credits left out),
    oldest first, each with its decision's context."""
    rows = conn.execute(
        text(
            """
            SELECT * FROM (
                SELECT d.context, s.logged_arm, s.logged_propensity, s.reward, s.probs, s.arm,
                       s.created_at, s.credit_seq
                FROM shadow_decisions s JOIN decisions d ON d.request_id = s.request_id
                WHERE s.candidate_id = :c AND s.reward IS NOT NULL
                  AND (CAST(:since AS timestamptz) IS NULL OR s.created_at >= :since)
                ORDER BY s.credit_seq DESC LIMIT :limit
            ) t ORDER BY credit_seq
            """
        ),
        {"c": candidate_id, "since": since, "limit": limit},
    ).all()
    dim = len(rows[0][0]) // 4 if rows else 0
    return ShadowLog(
        contexts=np.array(
            [np.frombuffer(r[0], dtype="<f4") for r in rows], dtype=np.float64
        ).reshape(len(rows), dim),
        logged_arms=[r[1] for r in rows],
        logged_propensities=np.array([float(r[2]) for r in rows]),
        rewards=np.array([float(r[3]) for r in rows]),
        probs=[dict(r[4]) for r in rows],
        arms=[r[5] for r in rows],
        created_at=[r[6] for r in rows],
    )


def pick_positions(conn: Connection) -> dict[int, tuple[int, int]]:
    """Per candidate: its picks and the highest credit_seq among them (what changes when
    it records more, or when picks are dropped and made again)."""
    rows = conn.execute(
        text(
            "SELECT candidate_id, count(*), max(credit_seq) FROM shadow_decisions "
            "GROUP BY candidate_id"
        )
    ).all()
    return {int(r[0]): (int(r[1]), int(r[2])) for r in rows}


def count_picks(conn: Connection, candidate_id: int) -> int:
    return int(
        conn.execute(
            text("SELECT count(*) FROM shadow_decisions WHERE candidate_id = :c"),
            {"c": candidate_id},
        ).scalar_one()
    )


# -- the release log ------------------------------------------------------------


def record_release(
    conn: Connection,
    action: str,
    *,
    key_id: str | None,
    reason: str | None = None,
    candidate_id: int | None = None,
    from_version: int | None = None,
    to_version: int | None = None,
    forced: bool = False,
    estimates: dict[str, Any] | None = None,
    watch: str | None = None,
) -> int:
    row = conn.execute(
        _R.insert()
        .values(
            action=action,
            key_id=key_id,
            reason=reason,
            candidate_id=candidate_id,
            from_version=from_version,
            to_version=to_version,
            forced=forced,
            estimates=estimates or {},
            watch=watch,
        )
        .returning(_R.c.id)
    ).one()
    return int(row[0])


def list_releases(conn: Connection, limit: int = 100) -> list[dict[str, Any]]:
    rows = conn.execute(select(_R).order_by(_R.c.id.desc()).limit(limit))
    return [dict(r._mapping) for r in rows]


def watched_promotion(conn: Connection) -> dict[str, Any] | None:
    """The promotion under watch for an automatic rollback, if any (the newest)."""
    r = conn.execute(
        select(_R)
        .where(_R.c.action == "promote", _R.c.watch == "watching")
        .order_by(_R.c.id.desc())
        .limit(1)
    ).first()
    return None if r is None else dict(r._mapping)


def end_watch(conn: Connection, release_id: int, outcome: str) -> None:
    conn.execute(update(_R).where(_R.c.id == release_id).values(watch=outcome))


def end_all_watches(conn: Connection, outcome: str) -> None:
    """A new promotion or a rollback by hand ends any watch still running."""
    conn.execute(update(_R).where(_R.c.watch == "watching").values(watch=outcome))


def credited_since_version(conn: Connection, version: int, limit: int) -> tuple[int, np.ndarray]:
    """The decisions served by ``version`` or later that the learner credited with a
    quality: how many there are, and the newest ``limit`` of them as (quality,
    energy_j, latency_ms, cost_usd) rows, newest first."""
    total = int(
        conn.execute(
            text(
                "SELECT count(*) FROM decisions WHERE policy_version >= :v "
                "AND credit_seq IS NOT NULL AND credit_quality IS NOT NULL"
            ),
            {"v": version},
        ).scalar_one()
    )
    rows = conn.execute(
        text(
            """
            SELECT d.credit_quality, o.energy_j, o.latency_ms, o.cost_usd
            FROM decisions d JOIN outcomes o ON o.request_id = d.request_id
            WHERE d.policy_version >= :v AND d.credit_seq IS NOT NULL
              AND d.credit_quality IS NOT NULL
            ORDER BY d.credit_seq DESC LIMIT :limit
            """
        ),
        {"v": version, "limit": limit},
    ).all()
    return total, np.array([tuple(map(float, r)) for r in rows]).reshape(len(rows), 4)


def release_summary(conn: Connection) -> dict[str, Any]:
    """For ``/v1/stats``: automatic rollbacks so far, the last one, the promotion under
    watch and the newest release row."""
    auto = conn.execute(
        select(_R).where(_R.c.action == "rollback", _R.c.key_id == "auto").order_by(_R.c.id.desc())
    ).all()
    watched = watched_promotion(conn)
    newest = list_releases(conn, 1)
    return {
        "auto_rollbacks": len(auto),
        "last_auto_rollback": release_view(dict(auto[0]._mapping)) if auto else None,
        "watching": None if watched is None else release_view(watched),
        "last_release": release_view(newest[0]) if newest else None,
        "candidates_in_shadow": int(
            conn.execute(
                text("SELECT count(*) FROM policy_candidates WHERE status = 'shadow'")
            ).scalar_one()
        ),
    }


def release_view(r: dict[str, Any]) -> dict[str, Any]:
    """A release row as JSON."""
    return {**r, "created_at": r["created_at"].isoformat()}
