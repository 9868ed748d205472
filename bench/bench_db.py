"""Data-layer throughput on whatever PostgreSQL it is pointed at.

    python bench/bench_db.py [--database-url URL] [--decisions 50000]

Without a URL (and no DATABASE_URL) it starts an embedded server in a
temporary directory. It creates a scratch database, migrates it, and prints,
side by side: decisions written per second batched (COPY, the writer's path)
and one by one (one INSERT and commit each, the naive path), feedback rows
per second (one by one and batched), and reward events claimed per second
(the learner's read path). The scratch database is dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scratch import scratch_database  # noqa: E402

from feedback.objective import Objective  # noqa: E402
from feedback.records import ArmRecord, DecisionRecord, FeedbackInput, OutcomeRecord  # noqa: E402
from feedback.repositories import arms as arms_repo  # noqa: E402
from feedback.repositories import feedback, request_log, reward_stream  # noqa: E402


def make_decisions(n: int, dim: int, arms: list[str], t0: datetime, rng: np.random.Generator):
    ctx = rng.normal(size=(n, dim)).astype(np.float32)
    picks = rng.integers(0, len(arms), size=n)
    return [
        DecisionRecord(
            request_id=uuid.uuid4(),
            created_at=t0 + timedelta(microseconds=i),
            route="auto",
            arm_id=arms[picks[i]],
            context=ctx[i],
            propensity=0.9,
            policy_version=1,
            learner="linucb",
        )
        for i in range(n)
    ]


def outcome_for(d: DecisionRecord) -> OutcomeRecord:
    return OutcomeRecord(
        request_id=d.request_id,
        created_at=d.created_at,
        status="ok",
        latency_ms=420.0,
        prompt_tokens=30,
        completion_tokens=80,
        energy_j=12.0,
        cost_usd=0.001,
    )


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>12,.0f} /s  ({n:,} in {seconds:.2f} s)"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    ap.add_argument("--decisions", type=int, default=50_000)
    ap.add_argument("--single", type=int, default=2_000, help="decisions written one by one")
    ap.add_argument("--batch", type=int, default=5_000)
    ap.add_argument("--dim", type=int, default=64)
    args = ap.parse_args()

    with scratch_database(args.database_url, "banditctl_bench") as (url, where):
        engine = create_engine(url)
        with engine.begin() as conn:
            version = conn.execute(text("SHOW server_version")).scalar()
        print(f"server: {where}, PostgreSQL {version}; context dim {args.dim}, batch {args.batch}")
        arms = [f"model-{i}" for i in range(11)]
        with engine.begin() as conn:
            arms_repo.upsert_arms(conn, [ArmRecord(id=a, model=a, backend="replay") for a in arms])
        rng = np.random.default_rng(0)
        t0 = datetime.now(UTC) - timedelta(hours=1)
        ds = make_decisions(args.decisions, args.dim, arms, t0, rng)

        start = time.perf_counter()
        for i in range(0, len(ds), args.batch):
            with engine.begin() as conn:
                request_log.write_decisions(conn, ds[i : i + args.batch])
        batched = time.perf_counter() - start

        singles = make_decisions(args.single, args.dim, arms, t0, rng)
        start = time.perf_counter()
        for d in singles:
            with engine.begin() as conn:
                request_log.insert_decision(conn, d)
        single = time.perf_counter() - start

        outs = [outcome_for(d) for d in ds]
        start = time.perf_counter()
        for i in range(0, len(outs), args.batch):
            with engine.begin() as conn:
                request_log.write_outcomes(conn, outs[i : i + args.batch])
        outcome_s = time.perf_counter() - start

        fb_single = [FeedbackInput.validated(str(d.request_id), 0.7) for d in ds[: args.single]]
        start = time.perf_counter()
        for fb in fb_single:
            with engine.begin() as conn:
                feedback.record_feedback(conn, fb)
        fb_one = time.perf_counter() - start
        fb_batch_items = [
            FeedbackInput.validated(str(d.request_id), 0.4) for d in ds[args.single :]
        ]
        start = time.perf_counter()
        for i in range(0, len(fb_batch_items), 1000):
            with engine.begin() as conn:
                feedback.record_feedback_many(conn, fb_batch_items[i : i + 1000])
        fb_many = time.perf_counter() - start

        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))  # what autovacuum does to a table in steady state
        objective = Objective(feedback_window_s=60)
        now = datetime.now(UTC)
        claimed = 0
        start = time.perf_counter()
        while True:
            with engine.begin() as conn:
                got = reward_stream.claim_reward_events(conn, objective, now, limit=args.batch)
            if not got:
                break
            claimed += len(got)
        read_s = time.perf_counter() - start
        engine.dispose()

        print(f"decisions, batched (COPY)      {rate(len(ds), batched)}")
        print(f"decisions, one by one          {rate(len(singles), single)}")
        print(
            f"  batched / one-by-one         {(len(ds) / batched) / (len(singles) / single):>12.1f} x"
        )
        print(f"outcomes, batched (COPY)       {rate(len(outs), outcome_s)}")
        print(f"feedback, one by one           {rate(len(fb_single), fb_one)}")
        print(f"feedback, batches of 1000      {rate(len(fb_batch_items), fb_many)}")
        print(f"reward events claimed (read)   {rate(claimed, read_s)}")
        target = len(ds) / batched >= 20_000
        print(f"target >= 20,000 decisions/s batched: {'met' if target else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
