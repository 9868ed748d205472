"""Measure load times of the fake LoRA adapters and fit the paging-latency model.

    .venv/bin/python bench/bench_adapter_load.py --repeats 40 --seed 0

For each rank it loads the adapter ``--repeats`` times (after one warm-up load),
prints the median, the sigma of log(seconds) and the seconds per MiB, and a fitted
lognormal whose median is proportional to size: these are the constants documented in
``cache_manager/paging.py``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from cache_manager.fake_adapter import FakeAdapterSpec, FakeAdapterStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="8,16,32,64")
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the measurements here")
    args = parser.parse_args()

    ranks = [int(r) for r in args.ranks.split(",")]
    specs = {f"rank{r}": FakeAdapterSpec(name=f"rank{r}", rank=r) for r in ranks}
    store = FakeAdapterStore(specs, np.random.default_rng(args.seed))
    rows = []
    for name, spec in specs.items():
        store.load(name)  # warm-up: host copy and allocator
        times = np.array([store.load(name)[1] for _ in range(args.repeats)])
        mib = spec.nbytes / 2**20
        logs = np.log(times)
        rows.append(
            {
                "rank": spec.rank,
                "mib": round(mib, 1),
                "median_ms": round(1e3 * float(np.median(times)), 2),
                "p95_ms": round(1e3 * float(np.quantile(times, 0.95)), 2),
                "sigma_log": round(float(logs.std(ddof=1)), 3),
                "ms_per_mib": round(1e3 * float(np.median(times)) / mib, 4),
            }
        )
    for row in rows:
        print(row)
    mib = np.array([r["mib"] for r in rows])
    med = np.array([r["median_ms"] for r in rows])
    slope = float(mib @ med / (mib @ mib))  # least squares through the origin
    sigma = float(np.sqrt(np.mean(np.square([r["sigma_log"] for r in rows]))))
    fit = {"ms_per_mib": round(slope, 4), "sigma_log": round(sigma, 3)}
    print("fit: median_ms = ms_per_mib * MiB, lognormal sigma_log:", fit)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"ranks": rows, "fit": fit}, fh, indent=2)


if __name__ == "__main__":
    main()
