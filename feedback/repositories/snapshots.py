"""Policy snapshots: versioned learner state with the stream position it reached.

Versions are handed out under a table lock; a rollback publishes an old
version's state as a new version. Retention (:func:`prune_snapshots`) compacts
old versions: their state is deleted, their row (time, watermark, event
counts, summary) stays. Every version saved is announced with
``NOTIFY banditctl_policy, '<version>'`` in the same transaction, so listeners
hear of it when it commits (and never of one rolled back).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, select, text, update

from feedback import models as m
from feedback.errors import Compacted, NotFound

ADOPTED_REASONS = ("rollback", "promotion")  # versions others publish for the learner


def lock_snapshots(conn: Connection) -> None:
    """The lock :func:`save_snapshot` takes: version numbers are handed out one at a time."""
    conn.execute(text("LOCK TABLE policy_snapshots IN SHARE ROW EXCLUSIVE MODE"))


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
    lock_snapshots(conn)
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
    notify_policy(conn, version)
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
    """The newest versions without their state; ``compacted`` is true where retention
    deleted it."""
    t = m.policy_snapshots
    cols = [c for c in t.c if c.name != "state"]
    q = (
        select(*cols, t.c.state.is_(None).label("compacted"))
        .order_by(t.c.version.desc())
        .limit(limit)
    )
    return [dict(r._mapping) for r in conn.execute(q)]


def storage(conn: Connection) -> dict[str, int]:
    """Versions stored, those still holding a state, and the bytes of those states."""
    t = m.policy_snapshots
    r = conn.execute(
        select(
            func.count(),
            func.count(t.c.state),
            func.coalesce(func.sum(func.octet_length(t.c.state)), 0),
        )
    ).one()
    return {"versions": int(r[0]), "with_state": int(r[1]), "state_bytes": int(r[2])}


def publish_rollback(conn: Connection, version: int) -> int:
    """Publish a new snapshot holding ``version``'s learner state (reason ``rollback``).

    The stream position (watermark, events applied) is the latest snapshot's,
    not the old one's: the learner continues from there with the old state.
    Raises :class:`NotFound` for an unknown version and :class:`Compacted` for
    one whose state retention deleted.
    """
    lock_snapshots(conn)
    old = get_snapshot(conn, version)
    if old["state"] is None:
        raise Compacted(version)
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
    """The newest snapshot above ``after_version`` if it is a rollback or a promotion
    (published from outside the learner, which adopts it), else None."""
    r = conn.execute(
        select(m.policy_snapshots)
        .where(m.policy_snapshots.c.version > after_version)
        .where(m.policy_snapshots.c.reason.in_(ADOPTED_REASONS))
        .order_by(m.policy_snapshots.c.version.desc())
        .limit(1)
    ).first()
    return None if r is None else dict(r._mapping)


# -- retention ----------------------------------------------------------------


@dataclass(frozen=True)
class RetentionPlan:
    """What :func:`retention_plan` decided for the versions still holding a state.

    ``kept``: version -> the rules that keep it (``last``, ``served``, ``rollback``);
    ``compact``: the versions no rule keeps, oldest first, and ``compact_bytes`` their
    state's size."""

    kept: dict[int, tuple[str, ...]] = field(default_factory=dict)
    compact: tuple[int, ...] = ()
    compact_bytes: int = 0


_RETENTION_SQL = text(
    """
    WITH rollback_ends AS (
        -- the version a rollback restored, and the one it replaced (to undo it)
        SELECT r.parent_version AS version FROM policy_snapshots r
        WHERE r.reason IN ('rollback', 'promotion') AND r.parent_version IS NOT NULL
        UNION
        SELECT (SELECT max(p.version) FROM policy_snapshots p WHERE p.version < r.version)
        FROM policy_snapshots r WHERE r.reason IN ('rollback', 'promotion')
    ),
    newest AS (SELECT version FROM policy_snapshots ORDER BY version DESC LIMIT :keep_last)
    SELECT s.version, octet_length(s.state) AS state_bytes,
           s.version IN (SELECT version FROM newest) AS last,
           s.version IN (SELECT version FROM rollback_ends WHERE version IS NOT NULL) AS rollback,
           (SELECT max(d.created_at) FROM decisions d
            WHERE d.policy_version = s.version) AS last_served
    FROM policy_snapshots s
    WHERE s.state IS NOT NULL
    ORDER BY s.version
    """
)


def retention_plan(
    conn: Connection, *, now: datetime, keep_served_s: float, keep_last: int
) -> RetentionPlan:
    """Decide, for every version still holding a state, whether a rule keeps it:

    - ``last``: it is one of the newest ``keep_last`` versions (at least the newest,
      which the learner and the gateways load);
    - ``served``: a decision made with it (``decisions.policy_version``) is younger
      than ``keep_served_s`` at ``now``;
    - ``rollback``: a rollback restored it, or it was the newest version when a
      rollback replaced it.

    One index descent on ``decisions (policy_version, created_at)`` per version.
    """
    if keep_last < 1:
        raise ValueError("keep_last must be at least 1: the newest version is always loaded")
    since = now - timedelta(seconds=keep_served_s)
    kept: dict[int, tuple[str, ...]] = {}
    compact: list[int] = []
    compact_bytes = 0
    for r in conn.execute(_RETENTION_SQL, {"keep_last": keep_last}):
        rules = tuple(
            name
            for name, holds in (
                ("last", r.last),
                ("served", r.last_served is not None and r.last_served >= since),
                ("rollback", r.rollback),
            )
            if holds
        )
        if rules:
            kept[int(r.version)] = rules
        else:
            compact.append(int(r.version))
            compact_bytes += int(r.state_bytes)
    return RetentionPlan(kept=kept, compact=tuple(compact), compact_bytes=compact_bytes)


def compact_versions(conn: Connection, versions: tuple[int, ...] | list[int]) -> int:
    """Delete the state of ``versions`` (their rows stay); returns how many lost one."""
    if not versions:
        return 0
    t = m.policy_snapshots
    result = conn.execute(
        update(t).where(t.c.version.in_(list(versions)), t.c.state.is_not(None)).values(state=None)
    )
    return int(result.rowcount)


def prune_snapshots(
    conn: Connection,
    *,
    now: datetime,
    keep_served_s: float,
    keep_last: int,
    dry_run: bool = False,
) -> RetentionPlan:
    """Compact every version :func:`retention_plan` keeps no rule for, under the
    snapshot lock (a rollback or a new version waits; the caller commits). With
    ``dry_run`` only the plan is made."""
    if not dry_run:
        lock_snapshots(conn)
    plan = retention_plan(conn, now=now, keep_served_s=keep_served_s, keep_last=keep_last)
    if not dry_run:
        compact_versions(conn, plan.compact)
    return plan


POLICY_CHANNEL = "banditctl_policy"


def notify_policy(conn: Connection, version: int) -> None:
    """``NOTIFY banditctl_policy, '<version>'``, delivered when the caller's transaction commits."""
    conn.execute(
        text("SELECT pg_notify(:channel, :version)"),
        {"channel": POLICY_CHANNEL, "version": str(version)},
    )


def listen_policy(conn: Connection) -> None:
    """Subscribe ``conn`` (autocommit) to :data:`POLICY_CHANNEL`."""
    conn.execute(text(f"LISTEN {POLICY_CHANNEL}"))
