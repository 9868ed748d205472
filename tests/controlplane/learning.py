"""Shared by the learner tests: a learner service config, logged traffic with delayed
and out-of-order feedback, and checks on the learner's final state."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import text

from controlplane.cli.demo import demo_config
from controlplane.learner_loop import LearnerLoop, arm_records
from feedback.records import DecisionRecord, FeedbackInput, OutcomeRecord
from feedback.repositories import arms as arms_repo
from feedback.repositories import feedback, request_log, reward_stream, snapshots
from learners import load_learner

N = 240


def learning_config(**svc):
    cfg = demo_config()
    return cfg.model_copy(
        update={
            "learner_service": cfg.learner_service.model_copy(
                update={
                    "batch_size": 25,
                    "snapshot_every_events": 60,  # a snapshot every 60 events: no relative
                    "snapshot_min_change": 0.0,  # threshold, no rate limit, no time trigger
                    "min_snapshot_interval_s": 0.0,
                    "snapshot_every_s": 1e9,
                    **svc,
                }
            )
        }
    )


def write_traffic(engine, cfg, seed: int) -> None:
    """N decided, served requests; 80% get feedback (some before others: out of order)."""
    rng = np.random.default_rng(seed)
    arms = [a.name for a in cfg.arms]
    t0 = datetime.now(UTC) - timedelta(seconds=5)
    ds, os_, fbs = [], [], []
    for i in range(N):
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


def reset_learning(engine) -> None:
    with engine.begin() as conn:
        reward_stream.release_claims_after(conn, 0)
        conn.execute(text("DELETE FROM policy_snapshots"))


def final_state(loop: LearnerLoop):
    with loop.engine.connect() as conn:
        snap = snapshots.latest_snapshot(conn)
        credited = conn.execute(
            text(
                "SELECT count(*), count(DISTINCT credit_seq) FROM decisions WHERE credit_seq IS NOT NULL"
            )
        ).one()
    return snap, tuple(credited)


def assert_same_learner(a: bytes, b: bytes, dim: int) -> None:
    la, lb = load_learner(a), load_learner(b)
    sa, sb = la.arm_summary(), lb.arm_summary()
    assert sa.keys() == sb.keys()
    for arm in sa:
        np.testing.assert_allclose(
            list(sa[arm].values()), list(sb[arm].values()), rtol=1e-9, equal_nan=True
        )
    xs = np.random.default_rng(7).normal(size=(5, dim))
    arms = sorted(sa)
    for x in xs:
        for got, want in zip(lb.estimates(x, arms), la.estimates(x, arms), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-9)
