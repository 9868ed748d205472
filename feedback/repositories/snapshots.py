"""Policy snapshots: versioned learner state with the stream position it reached.

Versions are handed out under a table lock; a rollback publishes an old
version's state as a new version. Every version saved is announced with
``NOTIFY banditctl_policy, '<version>'`` in the same transaction, so listeners
hear of it when it commits (and never of one rolled back).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, select, text

from feedback import models as m
from feedback.errors import NotFound


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
    cols = [c for c in m.policy_snapshots.c if c.name != "state"]
    q = select(*cols).order_by(m.policy_snapshots.c.version.desc()).limit(limit)
    return [dict(r._mapping) for r in conn.execute(q)]


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
