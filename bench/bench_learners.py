"""Learner throughput on one thread: select-only, update-only, select+update, batched.

    .venv/bin/python bench/bench_learners.py --dim 64 --arms 11 --steps 20000

BLAS and OpenMP are pinned to one thread (set below, before numpy loads), so
the figures are for one thread. Each row prints operations per second of wall
time and per CPU-second of this process (the second is the steadier figure on
a shared machine), and the load average while it ran.

- ``select``: decisions on a state warmed by ``--steps`` updates, no updates.
- ``update``: one-event updates (uniformly random arms).
- ``select+update``: the online loop, a decision then its update.
- ``select_many``: batched decisions, ``--batch`` contexts per call (linear learners).

Each figure but ``update`` (which warms the state the others read) is the median
of ``--repeats`` runs; ``select+update`` also prints the slowest and fastest run.

``--featurizers hashed,minilm-static,minilm`` (``--kinds ''`` to skip the learners)
then times the context of one request on one thread, per prompt: p50 and p99 of
the first call (embedding computed) and of a repeat (the per-prompt cache), over
``--prompts`` distinct prompts of routerbench_zs (``--dataset``; the synthetic
scenario's when it is absent). The semantic ones need the ``semantic`` extra.
``--max-tokens 256,64,32`` times the semantic ones at each truncation (the prompt's
first N tokens encoded; 256 is the default); ``first cpu p99`` is the p99 of this
process's CPU time per first call, steadier than wall time on a loaded machine.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable


def _timed(fn: Callable[[], int], repeats: int) -> tuple[int, float, float, float, float]:
    """Operations, wall seconds and CPU seconds of the median of ``repeats`` runs (by
    wall), and the slowest and fastest run's operations per wall second."""
    runs = []
    for _ in range(max(1, repeats)):
        t0, c0 = time.perf_counter(), time.process_time()
        n = fn()
        runs.append((n, time.perf_counter() - t0, max(time.process_time() - c0, 1e-9)))
    runs.sort(key=lambda r: r[1] / r[0])
    n, dt, cpu = runs[len(runs) // 2]
    return n, dt, cpu, runs[-1][0] / runs[-1][1], runs[0][0] / runs[0][1]


def main() -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    import numpy as np

    from learners import RewardEvent, make_learner
    from learners.linear import LinearLearner

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--arms", type=int, default=11)
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--kinds", default="linucb,lints,greenserv,vw")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--target", type=float, default=20_000.0, help="linucb select+update/s")
    ap.add_argument("--featurizers", default="", help="e.g. hashed,minilm-static,minilm")
    ap.add_argument("--prompts", type=int, default=300)
    ap.add_argument("--max-tokens", default="256", help="semantic truncations, e.g. 256,64,32")
    ap.add_argument("--dataset", default="../shared/data/routerbench_zs")
    args = ap.parse_args()
    if args.featurizers:
        bench_featurizers(args)
    if not args.kinds:
        return
    reps = max(1, args.repeats)
    rng = np.random.default_rng(0)
    arms = [f"arm{i}" for i in range(args.arms)]
    X = rng.standard_normal((args.steps, args.dim)) / np.sqrt(args.dim)
    X[:, 0] = 1.0
    R = rng.random((args.steps, 4))
    meta: dict[str, object] = {"arms": arms}
    W = {"quality": 1.0, "cost_usd": -30.0}
    print(
        f"d={args.dim}, {args.arms} arms, one thread; ops/s wall | per CPU-second "
        f"(load average at start {os.getloadavg()[0]:.1f})"
    )
    print(
        f"{'learner':<10} {'select':>19} {'update':>19} {'select+update':>19} {'select_many':>19}"
    )
    for kind in args.kinds.split(","):
        steps = args.steps if kind in ("linucb", "greenserv") else min(args.steps, 5000)
        pick = rng.integers(args.arms, size=steps)
        events = [RewardEvent(X[i], arms[pick[i]], R[i], 1.0, meta) for i in range(steps)]

        warm = make_learner({"kind": kind}, args.dim, W)

        def update_only(learner=warm, steps=steps, events=events) -> int:
            for i in range(steps):
                learner.update([events[i]])
            return steps

        n_u, dt_u, cpu_u, *_ = _timed(update_only, repeats=1)

        def select_only(learner=warm, steps=steps) -> int:
            for i in range(steps):
                learner.select(X[i], arms, rng)
            return steps

        n_s, dt_s, cpu_s, *_ = _timed(select_only, reps)

        def loop(steps=steps, kind=kind) -> int:
            learner = make_learner({"kind": kind}, args.dim, W)
            for i in range(steps):
                d = learner.select(X[i], arms, rng)
                learner.update([RewardEvent(X[i], d.arm, R[i], d.propensity, meta)])
            return steps

        n_l, dt_l, cpu_l, lo_l, hi_l = _timed(loop, reps)
        many = "-"
        if isinstance(warm, LinearLearner):  # batched selection: the linear learners only
            b = args.batch

            def batched(learner=warm, steps=steps, b=b) -> int:
                for i in range(0, steps - b + 1, b):
                    learner.select_many(X[i : i + b], arms, rng)
                return steps - steps % b

            n_m, dt_m, cpu_m, *_ = _timed(batched, reps)
            many = f"{n_m / dt_m:>8,.0f} | {n_m / cpu_m:>8,.0f}"
        print(
            f"{kind:<10} {n_s / dt_s:>8,.0f} | {n_s / cpu_s:>8,.0f} "
            f"{n_u / dt_u:>8,.0f} | {n_u / cpu_u:>8,.0f} "
            f"{n_l / dt_l:>8,.0f} | {n_l / cpu_l:>8,.0f} {many}"
        )
        if kind == "linucb":
            ok = n_l / dt_l >= args.target
            print(
                f"  linucb select+update {n_l / dt_l:,.0f}/s wall "
                f"({1e6 * dt_l / n_l:.1f} us each; median of {reps}, slowest {lo_l:,.0f}/s, "
                f"fastest {hi_l:,.0f}/s), {n_l / cpu_l:,.0f} per CPU-second: "
                f"{'meets' if ok else 'below'} the {args.target:,.0f}/s target"
            )
    print(f"load average at end {os.getloadavg()[0]:.1f}")


def bench_featurizers(args: argparse.Namespace) -> None:
    """p50/p99 per prompt of each featurizer, first call and cached, one thread."""
    from pathlib import Path

    import numpy as np

    from learners.featurize import Featurizer, last_user_text

    if Path(args.dataset).is_dir():
        from learners.datasets import read_routerbench

        ds = read_routerbench(args.dataset)
        source = args.dataset
    else:
        from learners.replay.synthetic import synthetic_dataset

        ds = synthetic_dataset()
        source = "the synthetic scenario"
    pick = np.random.default_rng(0).permutation(len(ds))[: args.prompts]
    texts = list(dict.fromkeys(last_user_text(ds.requests[i]["messages"]) for i in pick))
    chars = np.array([len(t) for t in texts])
    print(
        f"featurizer latency, one thread (load average {os.getloadavg()[0]:.1f}), "
        f"{len(texts)} distinct prompts of {source} "
        f"(median {np.median(chars):.0f} chars, p99 {np.percentile(chars, 99):.0f}); ms per prompt"
    )
    print(
        f"{'featurizer':<20} {'first p50':>10} {'first p99':>10} {'first cpu p99':>14} "
        f"{'cached p50':>11} {'cached p99':>11}  backend"
    )
    hashed = Featurizer(dim=args.dim)
    variants: list[tuple[str, int]] = []
    for name in args.featurizers.split(","):
        if name == "hashed":
            variants.append((name, 0))
        else:
            variants += [(name, int(m)) for m in args.max_tokens.split(",")]
    for name, max_tokens in variants:
        label = name if name == "hashed" else f"{name}@{max_tokens}"
        if name == "hashed":
            fn = lambda t: hashed.featurize({"messages": [{"role": "user", "content": t}]})  # noqa: E731
            backend, cached = "hashed words and bigrams (no cache: recomputed)", None
        else:
            from learners.semantic import SemanticFeaturizer

            sem = SemanticFeaturizer(name, dim=hashed.n_text, max_tokens=max_tokens)  # type: ignore[arg-type]
            fn, backend, cached = sem.featurize_text, sem.describe(), sem
        fn(texts[0])  # load, warm up
        if cached is not None:
            cached._cache.clear()
        first, first_cpu, again = [], [], []
        for t in texts:
            t0, c0 = time.perf_counter(), time.process_time()
            fn(t)
            first.append(time.perf_counter() - t0)
            first_cpu.append(time.process_time() - c0)
        for t in texts:
            t0 = time.perf_counter()
            fn(t)
            again.append(time.perf_counter() - t0)
        f, a, fc = 1e3 * np.array(first), 1e3 * np.array(again), 1e3 * np.array(first_cpu)
        print(
            f"{label:<20} {np.median(f):>10.3f} {np.percentile(f, 99):>10.3f} "
            f"{np.percentile(fc, 99):>14.3f} "
            f"{np.median(a):>11.4f} {np.percentile(a, 99):>11.4f}  {backend}"
        )


if __name__ == "__main__":
    main()
