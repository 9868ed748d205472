"""The learner service's loop on real Postgres: exactly-once through a crash."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import text

from controlplane.cli.demo import demo_config
from controlplane.learner_loop import LearnerBusy, LearnerLoop, arm_records
from feedback.records import DecisionRecord, FeedbackInput, OutcomeRecord
from feedback.repositories import arms as arms_repo
from feedback.repositories import feedback, request_log, reward_stream, snapshots
from learners import load_learner

N = 240


def _config(**svc):
    cfg = demo_config()
    return cfg.model_copy(
        update={
            "learner_service": cfg.learner_service.model_copy(
                update={
                    "batch_size": 25,
                    "snapshot_every_events": 60,
                    "snapshot_every_s": 1e9,
                    **svc,
                }
            )
        }
    )


def _traffic(engine, cfg, seed: int) -> None:
    """N decided, served requests; 80% get feedback (some before others: out of order)."""
    rng = np.random.default_rng(seed)
    arms = [a.name for a in cfg.arms]
    t0 = datetime.now(UTC) - timedelta(seconds=5)
    ds, os_, fbs = [], [], []
    for i in range(N):
        import uuid

        rid = uuid.UUID(int=int(rng.integers(1, 2**62)) + i)
        x = rng.normal(size=cfg.featurizer.dim).astype(np.float32)
        arm = arms[int(rng.integers(len(arms)))]
        at = t0 + timedelta(milliseconds=i)
        ds.append(DecisionRecord(rid, at, "auto", arm, x, 0.25, 1, "linucb"))
        os_.append(OutcomeRecord(rid, at, "ok", latency_ms=float(rng.uniform(50, 500)),
                                 energy_j=float(rng.uniform(1, 9)), cost_usd=float(rng.uniform(0, 0.01))))  # fmt: skip
        if rng.random() < 0.8:
            fbs.append(FeedbackInput.validated(rid, float(rng.random())))
    rng.shuffle(fbs)  # feedback arrives in another order than the decisions
    with engine.begin() as conn:
        arms_repo.upsert_arms(conn, arm_records(cfg))
        request_log.write_decisions(conn, ds)
        request_log.write_outcomes(conn, os_)
        feedback.record_feedback_many(conn, fbs)


def _reset_learning(engine) -> None:
    with engine.begin() as conn:
        reward_stream.release_claims_after(conn, 0)
        conn.execute(text("DELETE FROM policy_snapshots"))


def _final(loop: LearnerLoop):
    with loop.engine.connect() as conn:
        snap = snapshots.latest_snapshot(conn)
        credited = conn.execute(
            text(
                "SELECT count(*), count(DISTINCT credit_seq) FROM decisions WHERE credit_seq IS NOT NULL"
            )
        ).one()
    return snap, tuple(credited)


def _assert_same_learner(a: bytes, b: bytes, dim: int) -> None:
    la, lb = load_learner(a), load_learner(b)
    sa, sb = la.arm_summary(), lb.arm_summary()
    assert sa.keys() == sb.keys()
    for arm in sa:
        np.testing.assert_allclose(
            [v for v in sa[arm].values()], [v for v in sb[arm].values()], rtol=1e-9, equal_nan=True
        )
    xs = np.random.default_rng(7).normal(size=(5, dim))
    arms = sorted(sa)
    for x in xs:
        for got, want in zip(lb.estimates(x, arms), la.estimates(x, arms), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crash_and_restart_applies_every_event_once(engine, seed):
    cfg = _config()
    _traffic(engine, cfg, seed)
    now = lambda: datetime.now(UTC)  # noqa: E731  (feedback window 30 s: unrated ones wait)

    # the reference: one uninterrupted learner
    ref = LearnerLoop(engine, cfg, clock=now)
    ref.start()
    ref.run_until_idle()
    ref.stop()
    ref_snap, ref_credited = _final(ref)
    rated = ref_credited[0]
    assert rated == ref_snap["events_applied"] and 0.7 * N < rated < 0.9 * N

    _reset_learning(engine)
    first = LearnerLoop(engine, cfg, clock=now)
    first.start()
    for _ in range(5):  # 125 events claimed, snapshots at 60 and 120: 5 claimed past it
        first.step()
    assert first.pending > 0
    unapplied = first.pending + first.claimed_ahead()  # a full batch also claimed the next
    # crash: the process dies holding claims past its last snapshot, no stop()
    first._lock_conn.invalidate()  # type: ignore[union-attr]

    second = LearnerLoop(engine, cfg, clock=now)
    second.start(wait_s=10)  # the server drops the dead session's lock
    assert second.stats["released_on_start"] == unapplied
    second.run_until_idle()
    second.stop()
    snap, credited = _final(second)
    assert credited == (rated, rated)  # each rated decision credited once, none lost
    assert snap["events_applied"] == rated
    _assert_same_learner(ref_snap["state"], snap["state"], cfg.featurizer.dim)


def test_only_one_learner_consumes_a_database(engine):
    cfg = _config()
    a = LearnerLoop(engine, cfg)
    a.start()
    with pytest.raises(LearnerBusy):
        LearnerLoop(engine, cfg).start()
    a.stop()


def test_snapshots_publish_on_event_count_and_on_time(engine):
    cfg = _config(snapshot_every_events=100, snapshot_every_s=5.0)
    _traffic(engine, cfg, 3)
    t = {"now": 0.0}
    loop = LearnerLoop(engine, cfg, clock=lambda: datetime.now(UTC), monotonic=lambda: t["now"])
    loop.start()
    assert loop.version == 1  # the initial policy
    for _ in range(4):
        loop.step()  # 100 events: one snapshot by count
    assert loop.version == 2
    loop.step()
    assert loop.version == 2 and loop.pending == 25
    t["now"] += 5.0
    loop.step()  # due by time
    assert loop.version == 3 and loop.pending == 0
    loop.stop()
