"""Policy versions written and kept under a steady stream of reward events.

    python bench/bench_snapshots.py [--database-url URL] [--rate 20] [--minutes 6]

On a simulated clock (no sleeping), a gateway makes ``rate`` decisions a second
with the current policy version, each rated at once, and the central learner
(``LearnerLoop``) steps once a simulated second. Side by side: the snapshot rule
before retention (a version every 500 events or every 2 s with events pending)
and the defaults of ``learner_service`` (changed enough or 15 min passed, at
least 2 s apart). For each: versions written, their state bytes, and what the
retention defaults keep right after the run and 8 days later. Each rule runs in
a scratch database of its own (dropped at the end).
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import create_engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scratch import scratch_database  # noqa: E402

from controlplane.cli.demo import demo_config  # noqa: E402
from controlplane.config import BanditConfig  # noqa: E402
from controlplane.learner_loop import LearnerLoop, arm_records  # noqa: E402
from feedback.records import DecisionRecord, FeedbackInput, OutcomeRecord  # noqa: E402
from feedback.repositories import arms as arms_repo  # noqa: E402
from feedback.repositories import feedback, request_log, snapshots  # noqa: E402

BEFORE = {
    "snapshot_every_events": 500,
    "snapshot_min_change": 0.0,
    "snapshot_every_s": 2.0,
    "min_snapshot_interval_s": 0.0,
}


def with_rule(cfg: BanditConfig, rule: dict[str, Any]) -> BanditConfig:
    return cfg.model_copy(update={"learner_service": cfg.learner_service.model_copy(update=rule)})


def stream(url: str, cfg: BanditConfig, rate: int, seconds: int, seed: int) -> dict[str, Any]:
    engine = create_engine(url)
    rng = np.random.default_rng(seed)
    arms = [a.name for a in cfg.arms]
    t0 = datetime.now(UTC)
    clock = {"t": 0.0}
    loop = LearnerLoop(
        engine,
        cfg,
        clock=lambda: t0 + timedelta(seconds=clock["t"]),
        monotonic=lambda: clock["t"],
    )
    with engine.begin() as conn:
        arms_repo.upsert_arms(conn, arm_records(cfg))
    loop.start()
    for s in range(seconds):
        ds, os_, fbs = [], [], []
        for i in range(rate):
            at = t0 + timedelta(seconds=s + i / rate)
            x = rng.normal(size=cfg.featurizer.dim).astype(np.float32)
            arm = arms[int(rng.integers(len(arms)))]
            d = DecisionRecord(uuid.uuid4(), at, "auto", arm, x, 0.25, loop.version, "linucb")
            ds.append(d)
            os_.append(OutcomeRecord(d.request_id, at, "ok", latency_ms=200.0, cost_usd=0.001))
            fbs.append(FeedbackInput.validated(d.request_id, float(rng.random())))
        with engine.begin() as conn:
            request_log.write_decisions(conn, ds)
            request_log.write_outcomes(conn, os_)
            feedback.record_feedback_many(conn, fbs)
        clock["t"] = s + 1.0
        loop.run_until_idle()
    loop.stop()
    end = t0 + timedelta(seconds=seconds)
    ret = cfg.learner_service.retention
    with engine.connect() as conn:
        written = snapshots.storage(conn)
        now = snapshots.retention_plan(
            conn, now=end, keep_served_s=ret.keep_served_s, keep_last=ret.keep_last
        )
        later = snapshots.retention_plan(
            conn,
            now=end + timedelta(days=8),
            keep_served_s=ret.keep_served_s,
            keep_last=ret.keep_last,
        )
    engine.dispose()
    return {
        "events": loop.events_applied,
        "versions": written["versions"],
        "state_mb": written["state_bytes"] / 1e6,
        "mean_kb": written["state_bytes"] / max(written["versions"], 1) / 1e3,
        "kept_now": len(now.kept),
        "kept_8d": len(later.kept),
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    ap.add_argument("--rate", type=int, default=20, help="rated decisions per second")
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = demo_config()
    seconds = int(args.minutes * 60)
    svc = cfg.learner_service
    rules = {
        "before (500 events or 2 s)": BEFORE,
        (
            f"now (max({svc.snapshot_every_events}, {svc.snapshot_min_change:g} n) events"
            f" or {svc.snapshot_every_s:g} s, >= {svc.min_snapshot_interval_s:g} s apart)"
        ): {},
    }
    print(
        f"steady stream: {args.rate} rated decisions/s for {args.minutes:g} min, "
        f"{len(cfg.arms)} arms, context dim {cfg.featurizer.dim}; retention: keep_last "
        f"{svc.retention.keep_last}, keep_served_s {svc.retention.keep_served_s:g}"
    )
    for name, rule in rules.items():
        with scratch_database(args.database_url, "banditctl_snapbench") as (url, _where):
            r = stream(url, with_rule(cfg, rule), args.rate, seconds, args.seed)
        print(
            f"{name}\n    events {r['events']:,}  versions written {r['versions']}  "
            f"state {r['state_mb']:.1f} MB ({r['mean_kb']:.0f} KB each)  "
            f"kept at the end {r['kept_now']}  kept 8 days later {r['kept_8d']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
