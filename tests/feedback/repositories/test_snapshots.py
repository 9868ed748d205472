"""Policy snapshots on the real server: versions increase, state and watermark commit together."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from feedback.errors import NotFound
from feedback.repositories import snapshots


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
