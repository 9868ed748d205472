"""Rolling a policy back: a new snapshot with the old state, adopted by the learner
without applying any reward event twice."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from sqlalchemy import text

from controlplane.learner_loop import LearnerLoop, snapshot_learner
from feedback.repositories import snapshots
from learners import RewardEvent
from tests.controlplane.learning import (
    assert_same_learner,
    final_state,
    learning_config,
    write_traffic,
)


def _now() -> datetime:
    return datetime.now(UTC)


def _events_after(loop: LearnerLoop, watermark: int) -> list[RewardEvent]:
    """The reward events credited past ``watermark``, as the loop turns them into events."""
    with loop.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT d.context, d.arm_id, d.credit_quality, o.energy_j, o.latency_ms, "
                "o.cost_usd, d.propensity FROM decisions d JOIN outcomes o USING (request_id) "
                "WHERE d.credit_seq > :wm AND d.credit_quality IS NOT NULL ORDER BY d.credit_seq"
            ),
            {"wm": watermark},
        ).all()
    return [
        RewardEvent(
            context=np.frombuffer(r[0], dtype="<f4").astype(np.float64),
            arm=r[1],
            reward=loop.objective.normalize(np.array([r[2], r[3], r[4], r[5]])),
            propensity=float(r[6]),
        )
        for r in rows
    ]


def test_rollback_is_adopted_and_every_event_is_applied_once(engine):
    cfg = learning_config()  # batches of 25, a snapshot every 60 events
    write_traffic(engine, cfg, 5)
    loop = LearnerLoop(engine, cfg, clock=_now)
    loop.start()
    for _ in range(3):
        loop.step()
    assert loop.version == 2  # 75 events
    for _ in range(3):
        loop.step()
    assert loop.version == 3  # 150 events
    loop.step()  # 25 more claimed, not yet in a snapshot
    assert loop.pending == 25
    unapplied = loop.pending + loop.claimed_ahead()  # and the next batch, claimed ahead
    with engine.connect() as conn:
        v2 = snapshots.get_snapshot(conn, 2)
        v3 = snapshots.get_snapshot(conn, 3)

    with engine.begin() as conn:
        new = snapshots.publish_rollback(conn, 2)
    assert new == 4
    with engine.connect() as conn:
        rb = snapshots.get_snapshot(conn, 4)
    assert rb["reason"] == "rollback" and rb["parent_version"] == 2
    assert rb["state"] == v2["state"]
    assert (rb["watermark"], rb["events_applied"]) == (v3["watermark"], v3["events_applied"])

    loop.step()  # adopts the rollback first: its unsnapshotted claims are released
    assert loop.stats["rollbacks"] == 1 and loop.stats["released_on_rollback"] == unapplied
    loop.run_until_idle()
    loop.stop()

    snap, credited = final_state(loop)
    assert snap["version"] > 4 and snap["reason"] == "update"
    rated = credited[0]
    assert credited == (rated, rated)  # each credited once
    assert snap["events_applied"] == rated
    # the final state is v2's state plus exactly the events credited after v3's watermark
    want = snapshot_learner(cfg, v2["state"])
    want.update(_events_after(loop, int(v3["watermark"])))
    assert_same_learner(want.state_bytes(), snap["state"], cfg.featurizer.dim)


def test_a_snapshot_never_overwrites_a_newer_rollback(engine):
    cfg = learning_config(snapshot_every_events=1000)
    write_traffic(engine, cfg, 6)
    loop = LearnerLoop(engine, cfg, clock=_now)
    loop.start()
    loop.step()
    assert loop.version == 1 and loop.pending == 25
    with engine.begin() as conn:
        rb = snapshots.publish_rollback(conn, 1)
    assert loop.snapshot() == rb  # adopted, nothing written over it
    with engine.connect() as conn:
        assert snapshots.latest_version(conn) == rb
        assert snapshots.latest_snapshot(conn)["reason"] == "rollback"  # type: ignore[index]
    assert loop.watermark == 0 and loop.events_applied == 0 and loop.pending == 0
    loop.stop()


def test_rollback_to_an_unknown_version_is_not_found(engine):
    import pytest

    from feedback.errors import NotFound

    with pytest.raises(NotFound), engine.begin() as conn:
        snapshots.publish_rollback(conn, 7)
