"""Soak: the whole control plane on a local Ray Serve under steady chat + feedback load
for N minutes, at the concurrency where its throughput peaks, with throughput, p50/p99,
errors and the resident memory (RSS) of the gateway, learner and pool processes at the
start and the end (and every ``--sample-s`` along the way).

    python bench/bench_soak.py [--minutes 10] [--concurrency N] [--database-url URL]

Without ``--concurrency`` a sweep (``--sweep 2,4,8,16``, ``--sweep-s`` each) picks the
level with the most answers per second first. Without a URL (and no DATABASE_URL) an
embedded PostgreSQL starts in a temp dir. The load generator (threads, httpx, one chat
then its feedback per turn, as ``tests/reliability/load.py``) runs in this process, on
the same machine as everything else. Afterwards it waits for the learner to credit every
decision and checks that each answered request has its decision and outcome rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scratch import scratch_database  # noqa: E402

from controlplane.cli.launch import init_ray, stop_ray  # noqa: E402
from tests.cluster.nodes import free_ports  # noqa: E402
from tests.reliability.deployed_app import (  # noqa: E402
    credit_check,
    deploy_app,
    missing_rows,
    probe_config,
    uncredited,
    wait_for,
)
from tests.reliability.load import Load, tally  # noqa: E402
from tests.reliability.soak import soak  # noqa: E402


def sweep(base_url: str, levels: list[int], seconds: float) -> int:
    """The concurrency with the most answers per second (each level ``seconds``)."""
    best, best_rps = levels[0], -1.0
    print(f"{'concurrency':>11} {'answered/s':>10} {'errors':>6}")
    for c in levels:
        load = Load(base_url, concurrency=c, seed=100 + c).start()
        time.sleep(seconds)
        calls = load.stop()
        t = tally(calls)
        rps = t["answered"] / seconds
        print(f"{c:>11} {rps:>10.1f} {t['sent'] - t['answered']:>6}", flush=True)
        if rps > best_rps:
            best, best_rps = c, rps
    return best


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=None)
    ap.add_argument("--sweep", default="2,4,8,16")
    ap.add_argument("--sweep-s", type=float, default=15.0)
    ap.add_argument("--warmup-s", type=float, default=20.0)
    ap.add_argument("--sample-s", type=float, default=60.0)
    ap.add_argument("--adapters", action="store_true",
                    help="two LoRA adapter arms under POLAR too (a cache controller runs)")  # fmt: skip
    ap.add_argument("--json", default=None, help="write the summary there as JSON")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with scratch_database(args.database_url, "banditctl_soak") as (url, where):
        print(f"server: {where}")
        node = init_ray(None)
        try:
            cfg = probe_config(free_ports(1)[0], adapters=args.adapters)
            cfg = cfg.model_copy(
                update={
                    "learner_service": cfg.learner_service.model_copy(
                        update={"outcome_timeout_s": 900.0}
                    )
                }
            )
            app = deploy_app(cfg, url)
            concurrency = args.concurrency or sweep(
                app.base_url, [int(x) for x in args.sweep.split(",")], args.sweep_s
            )
            seconds = args.minutes * 60.0
            print(f"soak: {args.minutes:g} min at concurrency {concurrency}", flush=True)
            print(
                f"{'t_s':>7} "
                + " ".join(f"{r + '_MB':>11}" for r in ("gateway", "learner", "pools"))
            )

            def progress(t: float, rss: dict[str, float]) -> None:
                print(f"{t:>7.0f} " + " ".join(f"{v:>11.1f}" for v in rss.values()), flush=True)

            result = soak(
                app.base_url,
                list(cfg.base_models),
                seconds=seconds,
                concurrency=concurrency,
                warmup_s=args.warmup_s,
                sample_every_s=args.sample_s,
                progress=progress,
            )
            summary = result.summary()
            engine = app.engine()
            answered = [c.request_id for c in result.calls if c.answered and c.request_id]
            t0 = time.monotonic()
            wait_for(lambda: uncredited(engine) == 0, 300, "the learner to catch up")
            summary["learner_caught_up_s"] = round(time.monotonic() - t0, 1)
            summary["decisions_missing"] = len(missing_rows(engine, answered, "decisions"))
            summary["outcomes_missing"] = len(missing_rows(engine, answered, "outcomes"))
            summary.update(credit_check(engine))
            engine.dispose()
        finally:
            stop_ray(node)
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
