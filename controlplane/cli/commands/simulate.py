"""``banditctl simulate``: replay a routing data set against learners, offline."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from controlplane.cli.progress import progress_bar

DEFAULT_DATASET = "../shared/data/routerbench_zs"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="replay a routing data set with bandit feedback and compare learners",
        description=(
            "Stream a full-information routing data set (JSONL schema or RouterBench CSV "
            "folder; see learners.datasets) in a seeded random order; each learner sees only "
            "the reward of the model it chose. Prints mean reward, quality, cost and regret "
            "per learner with 95%% intervals over seeds."
        ),
    )
    p.add_argument(
        "--dataset",
        default=DEFAULT_DATASET,
        help="a .jsonl file, a RouterBench CSV file or folder, or 'synthetic' (default: %(default)s)",
    )
    p.add_argument(
        "--pattern", default="*.csv", help="file glob inside a CSV folder (default: all)"
    )
    p.add_argument("--learners", default="linucb,lints,vw,greenserv,random")
    p.add_argument(
        "--learner-config",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help='override or add a learner, e.g. \'ucb2={"kind":"linucb","alpha":1}\'',
    )
    p.add_argument("--objective", default="quality=1,cost_usd=-30")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--dim", type=int, default=64, help="featurizer dimension")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--plot", help="write a PNG: regret curves and the quality/cost frontier")
    p.add_argument("--json", dest="json_out", help="write the summary as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from learners.datasets import load_dataset
    from learners.featurize import Featurizer
    from learners.replay.objective import format_objective, parse_objective
    from learners.replay.presets import resolve
    from learners.replay.report import format_table, plot, require_pyplot
    from learners.replay.simulator import run_replay, summarize
    from learners.replay.synthetic import synthetic_dataset

    if args.plot:
        try:
            require_pyplot()  # fail before the run, not after it
        except ModuleNotFoundError as exc:
            print(f"simulate: {exc}", file=sys.stderr)
            return 2
    try:
        weights = parse_objective(args.objective)
        specs = resolve([n.strip() for n in args.learners.split(",") if n.strip()])
        for item in args.learner_config:
            name, _, raw = item.partition("=")
            specs[name.strip()] = json.loads(raw)
        if args.dataset == "synthetic":
            ds = synthetic_dataset()
        else:
            ds = load_dataset(args.dataset, args.pattern)
    except (ValueError, FileNotFoundError, json.JSONDecodeError) as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    tasks = tuple(sorted(set(ds.tasks.tolist())))[:8]
    featurizer = Featurizer(dim=args.dim, tasks=tasks)
    print(
        f"{ds.source}: {len(ds)} complete rows, {len(ds.models)} models, tasks {list(tasks)}; "
        f"objective {format_objective(weights)}"
    )
    for note in ds.notes:
        print(f"note: {note}")
    total = len(ds) * len(specs) * args.seeds
    with progress_bar(total=total, unit="step", disable=args.no_progress, file=sys.stderr) as bar:
        result = run_replay(
            ds, specs, weights, range(args.seeds), featurizer, jobs=args.jobs, progress=bar.update
        )
    summary = summarize(result)
    print(format_table(summary))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2)
        print(f"wrote {args.json_out}")
    if args.plot:
        plot(result, summary, args.plot)
        print(f"wrote {args.plot}")
    return 0
