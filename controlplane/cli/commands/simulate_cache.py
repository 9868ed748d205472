"""``banditctl simulate-cache``: POLAR against LRU/LFU/static/oracle on a scenario."""

from __future__ import annotations

import argparse
import os

from controlplane.cli.commands import split_names


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("simulate-cache", help="simulate adapter residency policies")
    p.add_argument("--scenario", default="drift", help="drift | shift | stationary")
    p.add_argument("--policies", default="polar,polar+,lru,lfu,static,oracle")
    p.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1")
    p.add_argument(
        "--horizon", type=int, default=None, help="requests per run (default: scenario's)"
    )
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--json", default=None, help="write the summary here")
    p.add_argument("--plot", default=None, help="write the figure here (png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cache_manager.config import POLICY_REGISTRY
    from cache_manager.sim.report import plot, run_all, write_json
    from cache_manager.sim.scenarios import get_scenario
    from learners.replay.report import require_pyplot

    if args.plot:
        try:
            require_pyplot()  # fail before the runs, not after them
        except ModuleNotFoundError as exc:
            raise SystemExit(f"simulate-cache: {exc}") from exc
    policies = split_names(args.policies)
    unknown = [p for p in policies if p not in POLICY_REGISTRY]
    if unknown:
        raise SystemExit(
            f"unknown policies: {', '.join(unknown)}; known: {', '.join(POLICY_REGISTRY)}"
        )
    scenario = get_scenario(args.scenario, **({"horizon": args.horizon} if args.horizon else {}))
    seeds = list(range(args.seeds))
    summaries, ts = run_all(scenario, policies, seeds, workers=args.workers)
    print(
        f"scenario {scenario.name}: {scenario.description}; T={scenario.horizon}, seeds={len(seeds)}"
    )
    header = f"{'policy':8} {'reward':>8} {'page_ins':>9} {'paging_s':>9} {'hit':>6} {'regret':>9} {'exp':>6}"
    print(header)
    for name, s in summaries.items():
        print(
            f"{name:8} {s.mean_reward:8.4f} {s.page_ins:9.1f} {s.paging_s:9.2f} {s.hit_rate:6.3f}"
            f" {s.regret:9.1f} {s.regret_exponent:6.3f}"
        )
    if args.json:
        write_json(args.json, scenario, seeds, summaries)
    if args.plot:
        plot(args.plot, scenario, summaries, ts, len(seeds))
    return 0
