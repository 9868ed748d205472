"""Shared by the policy release tests: two arms whose rewards differ, logged traffic
under a uniform logger (or any arm and propensity), and an app with admin keys."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from controlplane.config import BanditConfig
from controlplane.learner_loop import arm_records
from feedback.records import DecisionRecord, FeedbackInput, OutcomeRecord
from feedback.repositories import arms as arms_repo
from feedback.repositories import feedback, request_log
from tests.controlplane import gatekeeping

ADMIN, FEEDBACK_ONLY = "admin-key-0123456789", "feedback-key-0123456789"
QUALITY = {"cheap": 0.3, "dear": 0.9}  # the mean quality of each arm's answers
DIM = 32


def _sha(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def release_config(**releases: Any) -> BanditConfig:
    """The gatekeeping arms under a uniform live policy, quality-only rewards, fast
    snapshots, and the release knobs given."""
    return gatekeeping.config(
        learner={"kind": "random"},
        objective={"weights": {"quality": 1.0}},
        api_keys=[
            {"name": "ops", "key_sha256": _sha(ADMIN), "scopes": ["admin"]},
            {"name": "evals", "key_sha256": _sha(FEEDBACK_ONLY), "scopes": ["feedback"]},
        ],
        learner_service={
            "batch_size": 50,
            "snapshot_every_events": 100,
            "snapshot_min_change": 0.0,
            "min_snapshot_interval_s": 0.0,
            "snapshot_every_s": 1e9,
        },
        releases={"rollback_check_s": 0.0, **releases},
        auth={"open_chat": True},
    )


def log_traffic(
    engine: Any,
    cfg: BanditConfig,
    n: int,
    seed: int,
    *,
    version: int,
    arm: str | None = None,
    quality: dict[str, float] | None = None,
    t0: datetime | None = None,
) -> None:
    """``n`` decisions served and rated: each arm drawn uniformly (propensity 1/2), or
    always ``arm`` (propensity 1), by ``version``; quality around the arm's mean."""
    rng = np.random.default_rng(seed)
    q = quality or QUALITY
    names = [a.name for a in cfg.arms]
    t0 = t0 or datetime.now(UTC) - timedelta(seconds=30)
    ds, os_, fbs = [], [], []
    for i in range(n):
        rid = uuid.uuid4()
        x = rng.normal(size=DIM).astype(np.float32)
        a = arm or names[int(rng.integers(len(names)))]
        at = t0 + timedelta(milliseconds=i)
        ds.append(DecisionRecord(rid, at, "auto", a, x, 1.0 if arm else 0.5, version, "random"))
        os_.append(OutcomeRecord(rid, at, "ok", latency_ms=100.0, energy_j=1.0, cost_usd=0.001))
        fbs.append(FeedbackInput.validated(rid, float(np.clip(q[a] + rng.normal(0, 0.05), 0, 1))))
    with engine.begin() as conn:
        arms_repo.upsert_arms(conn, arm_records(cfg))
        request_log.write_decisions(conn, ds)
        request_log.write_outcomes(conn, os_)
        feedback.record_feedback_many(conn, fbs)


def admin(key: str = ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
