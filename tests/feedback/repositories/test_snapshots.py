"""Policy snapshots on the real server: versions increase, state and watermark commit together."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from feedback.errors import Compacted, NotFound
from feedback.repositories import request_log, snapshots
from tests.feedback.factories import decision


def _snap(conn, state: bytes, wm: int, **kw) -> int:
    return snapshots.save_snapshot(
        conn,
        learner_kind="linucb",
        config={"alpha": 1.0},
        state=state,
        watermark=wm,
        events_applied=wm,
        summary={"arms": {}},
        **kw,
    )


def test_snapshot_versions_increase_and_load_back(engine):
    with engine.begin() as conn:
        v1 = _snap(conn, b"one", 10)
        v2 = _snap(conn, b"two", 25)
    assert (v1, v2) == (1, 2)
    with engine.connect() as conn:
        latest = snapshots.latest_snapshot(conn)
        assert latest is not None
        assert (latest["version"], latest["state"], latest["watermark"]) == (2, b"two", 25)
        assert snapshots.get_snapshot(conn, 1)["state"] == b"one"
        assert [s["version"] for s in snapshots.list_snapshots(conn)] == [2, 1]
        with pytest.raises(NotFound):
            snapshots.get_snapshot(conn, 99)


def test_state_and_watermark_commit_together_or_not_at_all(engine):
    with pytest.raises(RuntimeError), engine.begin() as conn:
        _snap(conn, b"half", 7)
        raise RuntimeError("crash between state and commit")
    with engine.connect() as conn:
        assert snapshots.latest_snapshot(conn) is None
        assert conn.execute(text("SELECT count(*) FROM policy_snapshots")).scalar() == 0


# -- retention ----------------------------------------------------------------

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOUR = 3600.0


def _served(conn, version: int, ago_s: float) -> None:
    """A decision made with ``version`` ``ago_s`` seconds before NOW."""
    d = dataclasses.replace(decision(at=NOW - timedelta(seconds=ago_s)), policy_version=version)
    request_log.write_decisions(conn, [d])


def _history(db) -> None:
    """Versions 1-30 (updates), decisions made with some of them, then a rollback to 10
    (version 31, replacing 30)."""
    with db.begin() as conn:
        for v in range(1, 31):
            assert _snap(conn, f"state-{v}".encode(), v) == v
        _served(conn, 3, 10 * 60)  # in the window
        _served(conn, 4, 2 * HOUR)  # only before it
        _served(conn, 7, 3 * HOUR)
        _served(conn, 7, 30 * 60)  # served again later: in the window
        _served(conn, 12, 1 * HOUR + 1)  # just outside
        _served(conn, 0, 60)  # a gateway's start-up policy: no snapshot
        assert snapshots.publish_rollback(conn, 10) == 31


def _plan(conn, **kw):
    return snapshots.retention_plan(
        conn, now=NOW, keep_served_s=kw.get("keep_served_s", HOUR), keep_last=kw.get("keep_last", 5)
    )


def test_retention_keeps_last_n_served_and_rollback_ends(db):
    _history(db)
    with db.connect() as conn:
        plan = _plan(conn)
    assert plan.kept == {
        3: ("served",),
        7: ("served",),
        10: ("rollback",),  # rolled back to
        27: ("last",),
        28: ("last",),
        29: ("last",),
        30: ("last", "rollback"),  # replaced by the rollback: kept to undo it
        31: ("last",),
    }
    assert plan.compact == (1, 2, 4, 5, 6, 8, 9, *range(11, 27))
    assert plan.compact_bytes == sum(len(f"state-{v}".encode()) for v in plan.compact)


def test_prune_compacts_the_rest_and_keeps_every_row(db):
    _history(db)
    with db.begin() as conn:
        done = snapshots.prune_snapshots(conn, now=NOW, keep_served_s=HOUR, keep_last=5)
    with db.connect() as conn:
        listed = {s["version"]: s for s in snapshots.list_snapshots(conn)}
        assert sorted(listed) == list(range(1, 32))  # every version still listed by time
        assert {v for v, s in listed.items() if s["compacted"]} == set(done.compact)
        assert all(listed[v]["events_applied"] == v for v in range(1, 31))
        assert snapshots.get_snapshot(conn, 4)["state"] is None
        assert snapshots.get_snapshot(conn, 3)["state"] == b"state-3"
        assert snapshots.latest_snapshot(conn)["state"] == b"state-10"  # type: ignore[index]
        assert snapshots.storage(conn) == {
            "versions": 31,
            "with_state": 8,
            "state_bytes": sum(len(f"state-{v}".encode()) for v in (3, 7, 10, 27, 28, 29, 30, 10)),
        }
        again = _plan(conn)
    assert again.compact == () and again.kept == done.kept  # nothing left to compact


def test_dry_run_changes_nothing(db):
    _history(db)
    with db.begin() as conn:
        plan = snapshots.prune_snapshots(
            conn, now=NOW, keep_served_s=HOUR, keep_last=5, dry_run=True
        )
    assert len(plan.compact) == 23
    with db.connect() as conn:
        assert snapshots.storage(conn)["with_state"] == 31


def test_served_window_and_keep_last_are_the_knobs(db):
    _history(db)
    with db.connect() as conn:
        wide = _plan(conn, keep_served_s=4 * HOUR, keep_last=1)
        none_served = _plan(conn, keep_served_s=0, keep_last=1)
    assert {v for v, why in wide.kept.items() if "served" in why} == {3, 4, 7, 12}
    assert none_served.kept == {10: ("rollback",), 30: ("rollback",), 31: ("last",)}
    with pytest.raises(ValueError, match="keep_last"), db.connect() as conn:
        _plan(conn, keep_last=0)


def test_rollback_to_a_compacted_version_is_refused(db):
    _history(db)
    with db.begin() as conn:
        snapshots.prune_snapshots(conn, now=NOW, keep_served_s=HOUR, keep_last=5)
    with pytest.raises(Compacted, match="version 4 was compacted"), db.begin() as conn:
        snapshots.publish_rollback(conn, 4)
    with db.begin() as conn:
        assert snapshots.publish_rollback(conn, 3) == 32  # a kept one still rolls back
