"""The learner's claim while decisions wait for their feedback: a sweep against the
bounded claim, side by side, with N decisions inside their feedback window.

    python bench/bench_claim.py [--database-url URL] [--waiting 1000,10000,100000]

A learner that keeps up finds, on each poll (every ``learner_service.poll_interval_s``),
few decisions ready among those still inside their feedback window: traffic x window of
them (100 requests/s and the default 300 s window: 30,000). A sweep reads each of them
every poll; the bounded claim reads the decisions past their deadline and those with
feedback or a failure that arrived since its frontier. Each size: N waiting decisions
with their outcomes, 10 ready ones (feedback after the frontier), median of the claims'
wall times (each claim rolled back, so every one finds the same rows), and what the
polls cost per request at the rate that keeps N decisions waiting (N / window requests/s).
Without a URL (and no DATABASE_URL) an embedded PostgreSQL starts in a temp dir.
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

from controlplane.cli.demo import demo_config  # noqa: E402
from controlplane.learner_loop import arm_records  # noqa: E402
from feedback.records import DecisionRecord, FeedbackInput, OutcomeRecord  # noqa: E402
from feedback.repositories import arms as arms_repo  # noqa: E402
from feedback.repositories import feedback, request_log, reward_stream  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    ap.add_argument("--waiting", default="1000,10000,100000",
                    help="decisions inside their feedback window, per run")  # fmt: skip
    ap.add_argument("--claims", type=int, default=15, help="claims timed per size and kind")
    args = ap.parse_args()
    cfg = demo_config()
    objective = cfg.objective.model_copy(update={"feedback_window_s": 300.0})
    polls = 1.0 / cfg.learner_service.poll_interval_s
    arms = [a.name for a in cfg.arms]
    rng = np.random.default_rng(0)
    with scratch_database(args.database_url, "banditctl_benchclaim") as (url, where):
        window = objective.feedback_window_s
        print(f"server: {where}; feedback window {window:.0f} s, {polls:.0f} polls/s")
        engine = create_engine(url)
        with engine.begin() as conn:
            arms_repo.upsert_arms(conn, arm_records(cfg))
        print(f"{'waiting':>9} {'sweep ms':>10} {'bounded ms':>11} {'ratio':>7} {'req/s':>7}"
              f" {'per request: sweep':>20} {'bounded':>9}")  # fmt: skip
        written, all_rated = 0, []
        for n in [int(float(x)) for x in args.waiting.split(",")]:
            now = datetime.now(UTC)
            ds, os_ = [], []
            for i in range(written, n):  # inside the window: they wait
                rid = uuid.uuid4()
                at = now - timedelta(seconds=60, microseconds=-i)
                x = rng.normal(size=cfg.featurizer.dim).astype(np.float32)
                ds.append(DecisionRecord(rid, at, "auto", arms[i % len(arms)], x, 0.5, 1, "linucb"))  # fmt: skip
                os_.append(OutcomeRecord(rid, at, "ok", 300.0, energy_j=5.0, cost_usd=0.001))
            with engine.begin() as conn:
                request_log.write_decisions(conn, ds)
                request_log.write_outcomes(conn, os_)
                frontier = reward_stream.frontier_now(conn, now)
                rated = [d.request_id for d in ds[-10:]]  # the bounded claim finds these
                feedback.record_feedback_many(conn, [FeedbackInput.validated(r, 0.8) for r in rated])  # fmt: skip
            all_rated += rated  # the sweep, these and the earlier sizes' (claims rolled back)
            written = n
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE decisions, outcomes, feedback"))
            times: dict[str, list[float]] = {"sweep": [], "bounded": []}
            for _ in range(args.claims):
                for kind, since in (("sweep", None), ("bounded", frontier)):
                    with engine.connect() as conn:
                        t0 = time.perf_counter()
                        got = reward_stream.claim_reward_events(
                            conn, objective, datetime.now(UTC), 5000, since=since
                        )
                        times[kind].append(time.perf_counter() - t0)
                        conn.rollback()
                    want = all_rated if since is None else rated
                    assert {e.request_id for e in got} == set(want), (kind, len(got))
            sweep, bounded = (float(np.median(times[k])) for k in ("sweep", "bounded"))
            rate = n / window
            print(f"{n:>9,} {sweep * 1e3:10.2f} {bounded * 1e3:11.2f} {sweep / bounded:7.1f} {rate:7.0f}"
                  f" {sweep * polls / rate * 1e3:17.3f} ms {bounded * polls / rate * 1e3:6.3f} ms")  # fmt: skip
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
