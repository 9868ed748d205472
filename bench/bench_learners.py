"""LinUCB throughput: decisions plus updates per second on one thread.

    .venv/bin/python bench/bench_learners.py --dim 64 --arms 11 --steps 20000

Set OMP_NUM_THREADS/OPENBLAS_NUM_THREADS=1 (done below before numpy loads) so
the figure is for one thread.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    import numpy as np

    from learners import RewardEvent, make_learner

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--arms", type=int, default=11)
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--kinds", default="linucb,lints,greenserv,vw")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    arms = [f"arm{i}" for i in range(args.arms)]
    X = rng.standard_normal((args.steps, args.dim)) / np.sqrt(args.dim)
    R = rng.random((args.steps, 4))
    meta: dict[str, object] = {"arms": arms}
    for kind in args.kinds.split(","):
        learner = make_learner({"kind": kind}, args.dim, {"quality": 1.0, "cost_usd": -30.0})
        steps = args.steps if kind != "vw" else min(args.steps, 5000)
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(steps):
            d = learner.select(X[i], arms, rng)
            learner.update([RewardEvent(X[i], d.arm, R[i], d.propensity, meta)])
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(
            f"{kind:<10} d={args.dim} arms={args.arms}: {steps / dt:,.0f} decisions+updates/s "
            f"wall, {steps / cpu:,.0f}/s per CPU-second ({steps} steps, "
            f"{1e6 * dt / steps:.1f} us wall each; load average {os.getloadavg()[0]:.1f})"
        )


if __name__ == "__main__":
    main()
