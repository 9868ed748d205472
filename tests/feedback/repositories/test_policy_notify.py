"""Every saved snapshot is announced with NOTIFY banditctl_policy when its transaction
commits, and only then."""

from __future__ import annotations

import psycopg

from feedback.repositories import snapshots

SNAP = {"learner_kind": "linucb", "config": {}, "state": b"x", "watermark": 0,
        "events_applied": 0, "summary": {}}  # fmt: skip


def listening(engine) -> psycopg.Connection:
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    conn = psycopg.connect(url, autocommit=True)
    conn.execute(f"LISTEN {snapshots.POLICY_CHANNEL}")
    return conn


def test_notify_is_sent_only_when_the_snapshot_commits(engine):
    with listening(engine) as listener:
        with engine.connect() as conn:
            snapshots.save_snapshot(conn, **SNAP)
            conn.rollback()  # never published: nothing heard
        assert list(listener.notifies(timeout=0.3)) == []
        with engine.begin() as conn:
            version = snapshots.save_snapshot(conn, **SNAP)
        heard = list(listener.notifies(timeout=2, stop_after=1))
    assert [(n.channel, n.payload) for n in heard] == [(snapshots.POLICY_CHANNEL, str(version))]


def test_a_rollback_is_announced_with_its_new_version(engine):
    with engine.begin() as conn:
        snapshots.save_snapshot(conn, **SNAP)
        snapshots.save_snapshot(conn, **SNAP)
    with listening(engine) as listener:
        with engine.begin() as conn:
            version = snapshots.publish_rollback(conn, 1)
        heard = list(listener.notifies(timeout=2, stop_after=1))
    assert version == 3 and [n.payload for n in heard] == ["3"]
