"""Request log retention on the real server: what a prune may take, its bounded batches,
the archive it writes (restored, it gives back the same rows), and a learner that
resumes after a prune exactly as before it."""

from __future__ import annotations

import gzip
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from controlplane.learner_loop import LearnerLoop
from feedback import log_pruner
from feedback.objective import Objective
from feedback.records import FeedbackInput
from feedback.repositories import arms, feedback, log_retention, request_log, reward_stream
from feedback.repositories import snapshots as snaps
from tests.conftest import truncate_all
from tests.controlplane.learning import assert_same_learner, learning_config, write_traffic
from tests.feedback.factories import ARMS, decision, outcome

OBJ = Objective(feedback_window_s=60.0)
NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=10)
CUTOFF = NOW - timedelta(days=7)


@pytest.fixture
def db(engine):
    with engine.begin() as conn:
        arms.upsert_arms(conn, ARMS)
    return engine


def _served(db, n: int, at: datetime, rated: bool = True) -> list[uuid.UUID]:
    ds = [decision(at=at + timedelta(seconds=i), seed=i) for i in range(n)]
    with db.begin() as conn:
        request_log.write_decisions(conn, ds)
        request_log.write_outcomes(conn, [outcome(d) for d in ds])
        if rated:
            feedback.record_feedback_many(
                conn, [FeedbackInput.validated(str(d.request_id), 0.5) for d in ds]
            )
    return [d.request_id for d in ds]


def _credit_all(db) -> int:
    """Claim every ready event (as the learner does); the highest credit_seq."""
    with db.begin() as conn:
        rows = reward_stream.claim_reward_events(conn, OBJ, NOW, limit=100_000)
    return max(r.credit_seq for r in rows)


def _snapshot(db, watermark: int) -> None:
    with db.begin() as conn:
        snaps.save_snapshot(
            conn, learner_kind="linucb", config={}, state=b"s", watermark=watermark,
            events_applied=watermark, summary={},
        )  # fmt: skip


def _ids(db, table: str) -> set[uuid.UUID]:
    with db.connect() as conn:
        return {r[0] for r in conn.execute(text(f"SELECT request_id FROM {table}"))}


def test_prune_takes_only_old_decisions_a_snapshot_credited_in_bounded_batches(db):
    old_done = _served(db, 7, OLD)  # credited, and the snapshot below holds their credit
    wm = _credit_all(db)
    _snapshot(db, wm)
    old_after_snapshot = _served(db, 3, OLD + timedelta(minutes=1))  # credited after it
    _credit_all(db)
    old_waiting = [decision(at=OLD, seed=99)]  # its outcome never came: never credited
    with db.begin() as conn:
        request_log.write_decisions(conn, old_waiting)
    recent = _served(db, 4, NOW - timedelta(days=1))
    _snapshot(db, _credit_all(db))  # recent ones credited too: young, so kept
    # the latest snapshot's watermark now covers old_after_snapshot as well
    later = _served(db, 2, OLD + timedelta(minutes=2))
    _credit_all(db)  # above the latest snapshot: a restart could release them

    with db.begin() as conn:  # a candidate's shadow picks of an old and a recent decision
        cid = conn.execute(
            text("INSERT INTO policy_candidates (name, spec) VALUES ('c', '{}') RETURNING id")
        ).scalar_one()
        for rid in (old_done[0], recent[0]):
            conn.execute(
                text(
                    "INSERT INTO shadow_decisions (candidate_id, request_id, credit_seq, "
                    "created_at, arm, propensity, logged_arm, logged_propensity, probs) "
                    "SELECT :c, request_id, credit_seq, created_at, arm_id, 1, arm_id, 0.5, "
                    "'{}' FROM decisions WHERE request_id = :r"
                ),
                {"c": cid, "r": rid},
            )
    with db.connect() as conn:
        plan = log_retention.plan(conn, CUTOFF)
    assert plan.decisions == 10
    assert plan.kept_uncredited == 1 and plan.kept_unsnapshotted == 2

    sizes: list[int] = []
    total = log_pruner.prune_log(
        db, before=CUTOFF, batch=3, on_batch=lambda r, _s: sizes.append(r.decisions)
    )
    assert sizes == [3, 3, 3, 1]
    assert (total.decisions, total.outcomes, total.feedback, total.batches) == (10, 10, 10, 4)
    assert total.shadow_decisions == 1 and _ids(db, "shadow_decisions") == {recent[0]}
    gone = set(old_done) | set(old_after_snapshot)
    kept = {old_waiting[0].request_id, *recent, *later}
    assert _ids(db, "decisions") == kept
    assert _ids(db, "outcomes") == set(recent) | set(later)
    assert _ids(db, "feedback") == set(recent) | set(later)
    assert not gone & (_ids(db, "decisions") | _ids(db, "outcomes") | _ids(db, "feedback"))
    # nothing is left to take; a second run deletes nothing
    assert log_pruner.prune_log(db, before=CUTOFF, batch=3).decisions == 0


def test_without_a_snapshot_nothing_goes(db):
    _served(db, 3, OLD)
    _credit_all(db)  # credited, but no snapshot holds it: a restart releases the claims
    assert log_pruner.prune_log(db, before=CUTOFF, batch=10).decisions == 0
    assert len(_ids(db, "decisions")) == 3


def _dump(db) -> dict[str, list[tuple]]:
    order = {"decisions": "request_id", "outcomes": "request_id", "feedback": "id"}
    with db.connect() as conn:
        return {
            t: [tuple(r) for r in conn.execute(text(f"SELECT * FROM {t} ORDER BY {o}"))]
            for t, o in order.items()
        }


def test_the_archive_restores_exactly_the_rows_deleted(db, tmp_path):
    _served(db, 5, OLD)
    failed = decision(at=OLD, seed=5)
    with db.begin() as conn:  # an error answer: credited without feedback
        request_log.write_decisions(conn, [failed])
        request_log.write_outcomes(conn, [outcome(failed, status="error")])
    _snapshot(db, _credit_all(db))
    before = _dump(db)
    with log_pruner.Archive(tmp_path / "arch") as archive:
        total = log_pruner.prune_log(db, before=CUTOFF, batch=2, archive=archive)
    assert total.decisions == 6 and total.batches == 3
    assert not _ids(db, "decisions")
    files = {p.name.split("-")[0]: p for p in (tmp_path / "arch").iterdir()}
    assert set(files) == {"decisions", "outcomes", "feedback", "shadow_decisions"}
    for table in ("decisions", "outcomes", "feedback"):  # parents first
        lines = gzip.decompress(files[table].read_bytes()).decode().splitlines()
        assert lines[0].split(",")[0] in ("request_id", "id")  # one header, then rows
        assert sum(1 for ln in lines if ln.startswith(lines[0])) == 1
        with db.begin() as conn:
            cursor = conn.connection.dbapi_connection.cursor()
            with cursor.copy(f"COPY {table} FROM STDIN WITH (FORMAT csv, HEADER true)") as cp:
                cp.write(gzip.decompress(files[table].read_bytes()))
    assert _dump(db) == before


def _learn(engine, cfg) -> None:
    loop = LearnerLoop(engine, cfg)
    loop.start()
    loop.run_until_idle()
    loop.stop()


def test_a_learner_resumes_after_a_prune_as_if_nothing_happened(engine):
    cfg = learning_config(batch_size=100, snapshot_every_events=100)
    # the reference: two rounds of traffic, learned, nothing pruned
    write_traffic(engine, cfg, 0)  # 240 requests, ~80% rated; the rest wait 30 s
    _learn(engine, cfg)
    write_traffic(engine, cfg, 1)
    _learn(engine, cfg)
    with engine.connect() as conn:
        ref = snaps.latest_snapshot(conn)
    assert ref is not None
    truncate_all(engine)

    write_traffic(engine, cfg, 0)
    _learn(engine, cfg)
    with engine.connect() as conn:
        snap = snaps.latest_snapshot(conn)
        credited, waiting = conn.execute(
            text("SELECT count(credit_seq), count(*) - count(credit_seq) FROM decisions")
        ).one()
    assert snap is not None and credited == snap["events_applied"] and waiting > 0

    total = log_pruner.prune_log(engine, before=datetime.now(UTC) + timedelta(hours=1), batch=50)
    assert (total.decisions, total.batches) == (credited, -(-credited // 50))
    with engine.connect() as conn:
        left = conn.execute(text("SELECT count(*), count(credit_seq) FROM decisions")).one()
    assert tuple(left) == (waiting, 0)  # those waiting for their reward stay

    again = LearnerLoop(engine, cfg)
    again.start()
    assert again.stats["released_on_start"] == 0
    assert (again.version, again.watermark) == (snap["version"], snap["watermark"])
    write_traffic(engine, cfg, 1)
    again.run_until_idle()
    again.stop()
    with engine.connect() as conn:
        final = snaps.latest_snapshot(conn)
    assert final is not None and final["events_applied"] == ref["events_applied"]
    assert_same_learner(ref["state"], final["state"], cfg.featurizer.dim)
