"""``banditctl simulate``: replay a routing data set against learners, offline."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from controlplane.cli.commands import split_names
from controlplane.cli.progress import progress_bar

# routerbench_zs beside the checkout (../shared/data), looked for from the working
# directory and from the checkout that holds this file; BANDITCTL_DATASET overrides it
DEFAULT_NAME = "routerbench_zs"
_BESIDE = Path("..") / "shared" / "data" / DEFAULT_NAME
SEMANTIC = ("minilm", "minilm-static")
LINEAR_KINDS = ("linucb", "lints", "greenserv")
DEFAULT_STRENGTH = 1.0

DESCRIPTION = (
    "Stream a full-information routing data set in a seeded random order; each learner sees "
    "only the reward of the model it chose. Prints mean reward, quality, cost and regret per "
    "learner with 95% intervals over seeds, against hindsight references (best fixed model, "
    "per-task best, per-prompt oracle)."
)
EPILOG = """\
data sets (the format is judged by content, not by the file name):
  JSONL    one JSON object per line: {"prompt": ..., "task": ..., "models": {NAME:
           {"quality": 0..1, "cost_usd": ..., "latency_ms": ..., "energy_j": ...}}};
           the full schema is in learners/datasets.py (python -m pydoc learners.datasets)
  CSV      a RouterBench CSV file or folder: a <model> quality column and a
           <model>|total_cost column per model
  synthetic  the bundled synthetic scenario (learners/replay/synthetic.py)
  The default is routerbench_zs at $BANDITCTL_DATASET, else ../shared/data/routerbench_zs
  beside the working directory or the checkout.

objective: comma-separated NAME=WEIGHT over quality, energy_j (energy), latency_ms
  (latency), cost_usd (cost); the reward is the weighted sum, e.g. quality=1,cost_usd=-30.

examples:
  banditctl simulate --dataset synthetic --learners linucb,lints,random --seeds 3
  banditctl simulate --dataset routerbench/ --pattern '*_train.csv' --plot replay.png
  banditctl simulate --dataset bench.jsonl --objective quality=1 --json out.json
  banditctl simulate --hide-tasks --featurizer minilm --task-clusters 8 --learners lints
  banditctl simulate --known cost_usd --learners lints,linucb --seeds 3
  banditctl simulate --pattern '*_test.csv' --warm-start '*_train.csv' --learners lints
  banditctl simulate --pattern '*_test.csv' --metadata-prior 'fit:*_train.csv' --learners lints"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="replay a routing data set with bandit feedback and compare learners",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    p.add_argument(
        "--dataset",
        default=None,
        help="a JSONL file, a RouterBench CSV file or folder, or 'synthetic' "
        f"(default: {DEFAULT_NAME}, see below)",
    )
    p.add_argument(
        "--pattern",
        default="*.csv",
        help="file glob inside a CSV folder, e.g. '*_test.csv' (default: %(default)s)",
    )
    p.add_argument(
        "--learners",
        default="linucb,lints,vw,greenserv,random",
        help="comma-separated presets (learners/replay/presets.py) or fixed:<model> "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--learner-config",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help='override or add a learner, e.g. \'ucb2={"kind":"linucb","alpha":1}\'; '
        "repeatable (default: none)",
    )
    p.add_argument(
        "--objective",
        default="quality=1,cost_usd=-30",
        help="reward weights NAME=WEIGHT,... (see below; default: %(default)s)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=10,
        help="runs per learner, seeds 0..N-1 (default: %(default)s)",
    )
    p.add_argument(
        "--dim",
        type=int,
        default=None,
        help="context dimension (default: 64, plus one per task slot beyond 8, so the "
        "text block keeps its 44 positions)",
    )
    p.add_argument(
        "--task-slots",
        type=int,
        default=None,
        metavar="N",
        help="positions of the task one-hot; tasks past the first N (alphabetically) "
        "share slots by hash, and the output says which (default: one per task label of "
        "the data set and the --warm-start data, at least 8, and at least --task-clusters)",
    )
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default: %(default)s)")
    p.add_argument(
        "--known",
        default="",
        metavar="COMPONENTS",
        help="reward components known before the call (e.g. cost_usd: price table x tokens): "
        "learners get each arm's exact value and learn only the rest (default: none)",
    )
    p.add_argument(
        "--hide-tasks",
        action="store_true",
        help="drop the data set's task labels from the requests (references still use them)",
    )
    p.add_argument(
        "--featurizer",
        choices=("hashed", *SEMANTIC),
        default="hashed",
        help="hashed words (built in) or a semantic embedding of the prompt in the text "
        "block: minilm (all-MiniLM-L6-v2), minilm-static (its token table); the semantic "
        "ones need pip install 'banditctl[semantic]' (default: %(default)s)",
    )
    p.add_argument(
        "--task-clusters",
        type=int,
        default=0,
        metavar="K",
        help="online task inference: up to K clusters of prompt embeddings, learned in "
        "stream order, stand in for the task one-hot (K at most the task slots); 0 keeps "
        "the task labels (default: %(default)s)",
    )
    p.add_argument(
        "--cluster-threshold",
        type=float,
        default=None,
        help="cosine distance beyond which a prompt opens a new cluster (default: per "
        "featurizer, hashed 0.5, minilm 0.5, minilm-static 0.05)",
    )
    p.add_argument(
        "--warm-start",
        default=None,
        metavar="DATA",
        help="start every learner from an earlier policy version: before the run, each "
        "learner learns online (bandit feedback, its own seeded order) from DATA, a file "
        "glob in the --dataset folder (e.g. '*_train.csv') or a data set path; see "
        "--prior-weight (default: none, a cold start)",
    )
    p.add_argument(
        "--prior-weight",
        type=float,
        default=1.0,
        help="with --warm-start, the weight of each earlier observation in the new "
        "policy's prior, in [0, 1] (linear learners; other kinds only 1) "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--models",
        default="",
        metavar="MODELS",
        help="comma-separated: replay only these models of the data set (learners, "
        "references and --warm-start data alike); rows are kept or dropped as read with "
        "every model (default: all)",
    )
    p.add_argument(
        "--new-arms",
        default="",
        metavar="MODELS",
        help="with --warm-start, models the earlier policy version never saw: left out of "
        "its data, they join when the run starts, under the flat prior or, with "
        "--metadata-prior fit:DATA, one fitted on the other models that only they take "
        "(default: none)",
    )
    p.add_argument(
        "--metadata-prior",
        default=None,
        metavar="fit:DATA|FILE",
        help="start each arm of the linear learners at a prior from its metadata "
        "(learners/metadata_prior.py): 'fit:DATA' takes each model's price (mean cost per "
        "request) from DATA (a file glob in the --dataset folder, e.g. 'fit:*_train.csv', or a "
        "path) and fits its prior quality as logistic in the log price across models; FILE is "
        "a JSON metadata_prior object (features, intercept, coef, strength, arms) "
        "(default: none, the flat prior)",
    )
    p.add_argument(
        "--metadata-strength",
        type=float,
        default=None,
        metavar="W",
        help="with --metadata-prior, the pseudo-observations each arm's metadata prior is "
        f"worth (default: FILE's strength, or {DEFAULT_STRENGTH:g} with fit:)",
    )
    p.add_argument(
        "--save-metadata-prior",
        default=None,
        metavar="FILE",
        help="write the metadata prior used (fitted or read) as JSON, the object a linear "
        "learner's config takes under metadata_prior (default: none)",
    )
    p.add_argument(
        "--plot",
        help="write a PNG: regret curves and the quality/cost frontier (default: none)",
    )
    p.add_argument(
        "--json",
        dest="json_out",
        help="write the summary, with per-seed values, as JSON (default: none)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def default_dataset() -> Path | None:
    """Where the default data set is, or None."""
    env = os.environ.get("BANDITCTL_DATASET")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[3]
    for base in (Path.cwd(), checkout):
        if (base / _BESIDE).is_dir():
            return (base / _BESIDE).resolve()
    return None


def _resolve_dataset(arg: str | None) -> str:
    if arg:
        return arg
    found = default_dataset()
    if found is None:
        raise FileNotFoundError(
            f"no --dataset given and the default {DEFAULT_NAME} is not at {_BESIDE} from here "
            "or from the checkout (nor in BANDITCTL_DATASET): pass --dataset PATH (a JSONL "
            "file or a RouterBench CSV folder) or --dataset synthetic"
        )
    return str(found)


def run(args: argparse.Namespace) -> int:
    from learners.datasets import load_dataset
    from learners.replay.objective import format_objective, parse_objective
    from learners.replay.report import format_table, plot, require_pyplot
    from learners.replay.simulator import ReplayOptions, run_replay, summarize
    from learners.replay.synthetic import synthetic_dataset
    from learners.task_clusters import DEFAULT_THRESHOLD

    if args.plot:
        try:
            require_pyplot()  # fail before the run, not after it
        except ModuleNotFoundError as exc:
            print(f"simulate: {exc}", file=sys.stderr)
            return 2
    if args.seeds < 1:
        print("simulate: --seeds must be at least 1", file=sys.stderr)
        return 2
    if args.task_slots is not None and args.task_slots < 1:
        print("simulate: --task-slots must be at least 1", file=sys.stderr)
        return 2
    try:
        weights = parse_objective(args.objective)
        specs = _specs(args)  # names checked before the data set loads
        known = tuple(split_names(args.known))
        _check_warm(args, specs)
        if not args.metadata_prior and (
            args.metadata_strength is not None or args.save_metadata_prior
        ):
            raise ValueError("--metadata-strength and --save-metadata-prior need --metadata-prior")
        dataset = _resolve_dataset(args.dataset)
        ds = synthetic_dataset() if dataset == "synthetic" else load_dataset(dataset, args.pattern)
        only = split_names(args.models)
        if only:
            try:
                ds = ds.only_models(only)
            except ValueError as exc:
                raise ValueError(f"--models: {exc}") from None
        warm = _warm_dataset(dataset, args) if args.warm_start else None
        feat, X, E, notes, Xw = _contexts(ds, args, warm)
        specs = _specs(args, feat)  # the presets that read task slots read feat's
        new_arms = tuple(split_names(args.new_arms))
        unknown = [m for m in new_arms if m not in ds.models]
        if unknown:
            raise ValueError(f"--new-arms: {', '.join(unknown)} not among the data set's models")
        if new_arms and not args.warm_start:
            raise ValueError(
                "--new-arms needs --warm-start (arms that an earlier version never saw)"
            )
        if args.metadata_prior:
            notes.extend(_apply_metadata_prior(dataset, ds.models, args, specs, new_arms))
        Rw = None
        if warm is not None:
            Rw = _align(warm, ds.models)
            notes.append(
                f"warm start: every learner first learns online from {warm.source}"
                f"{'' if Path(args.warm_start).exists() else ' ' + args.warm_start} "
                f"({len(warm)} rows, bandit feedback, its own order per seed), then runs "
                f"from that state with prior weight {args.prior_weight:g}"
                + (f"; never saw {', '.join(new_arms)} (new arms)" if new_arms else "")
            )
    except (ValueError, FileNotFoundError, json.JSONDecodeError, ModuleNotFoundError) as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    threshold = args.cluster_threshold or DEFAULT_THRESHOLD[args.featurizer]
    try:
        options = ReplayOptions(
            known=known,
            contexts=X,
            embeddings=E,
            clusters=args.task_clusters,
            cluster_threshold=threshold,
            warm_contexts=Xw,
            warm_rewards=Rw,
            prior_weight=args.prior_weight,
            new_arms=new_arms,
        )
    except ValueError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    ds.notes.extend(notes)
    names = sorted(set(ds.tasks.tolist()))
    shown = ", ".join(names[:16]) + (", ..." if len(names) > 16 else "")
    print(
        f"{ds.source}: {len(ds)} complete rows, {len(ds.models)} models, {len(names)} tasks "
        f"({shown}); objective {format_objective(weights)}"
    )
    for note in ds.notes:
        print(f"note: {note}")
    total = len(ds) * len(specs) * args.seeds
    with progress_bar(total=total, unit="step", disable=args.no_progress, file=sys.stderr) as bar:

        def progress(k: int, name: str, seed: int) -> None:
            bar.set_postfix(learner=name, seed=seed, refresh=False)
            bar.update(k)

        result = run_replay(
            ds, specs, weights, range(args.seeds), featurizer=feat, jobs=args.jobs,
            progress=progress, options=options,
        )  # fmt: skip
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


def _specs(args: argparse.Namespace, featurizer: Any = None) -> dict[str, Any]:
    """The learners' configs: --learners presets for ``featurizer``'s layout, then
    --learner-config."""
    from learners.replay.presets import resolve

    specs = resolve(split_names(args.learners), featurizer)
    for item in args.learner_config:
        name, _, raw = item.partition("=")
        specs[name.strip()] = json.loads(raw)
    return specs


def _check_warm(args: argparse.Namespace, specs: dict[str, Any]) -> None:
    if args.prior_weight != 1.0 and not args.warm_start:
        raise ValueError("--prior-weight needs --warm-start")
    if not 0.0 <= args.prior_weight <= 1.0:
        raise ValueError(f"--prior-weight must lie in [0, 1], got {args.prior_weight:g}")
    if args.warm_start and args.task_clusters > 0:
        raise ValueError("--warm-start does not combine with --task-clusters")
    if args.prior_weight != 1.0:
        other = [n for n, c in specs.items() if c.get("kind") not in LINEAR_KINDS]
        if other:
            raise ValueError(
                f"--prior-weight below 1 applies to linear learners ({', '.join(LINEAR_KINDS)}) "
                f"only, not {', '.join(other)}"
            )


def _warm_dataset(dataset: str, args: argparse.Namespace) -> Any:
    """The --warm-start data: a path, else a file glob in the --dataset folder."""
    return _side_dataset(dataset, args.warm_start, "--warm-start")


def _side_dataset(dataset: str, spec: str, flag: str) -> Any:
    """Data besides the stream: a path, else a file glob in the --dataset folder."""
    from learners.datasets import load_dataset

    if Path(spec).exists():
        return load_dataset(spec, "*.csv")
    if Path(dataset).is_dir():
        return load_dataset(dataset, spec)
    raise FileNotFoundError(
        f"{flag} {spec!r} is neither a path nor a file glob in a --dataset folder"
    )


def _apply_metadata_prior(
    dataset: str,
    models: tuple[str, ...],
    args: argparse.Namespace,
    specs: dict[str, Any],
    new: tuple[str, ...] = (),
) -> list[str]:
    """Give every linear learner in ``specs`` the --metadata-prior (fitted or read);
    ``new``: the --new-arms. The notes say what it holds."""
    from learners.metadata_prior import MetadataPriorConfig, fit_metadata_prior

    spec: str = args.metadata_prior
    strength = args.metadata_strength
    if strength is not None and not strength >= 0:
        raise ValueError(f"--metadata-strength must be >= 0, got {strength:g}")
    linear = [n for n, c in specs.items() if c.get("kind") in LINEAR_KINDS]
    if not linear:
        raise ValueError(
            f"--metadata-prior applies to linear learners ({', '.join(LINEAR_KINDS)}); "
            "none was chosen"
        )
    if spec.startswith("fit:"):
        data = _side_dataset(dataset, spec[4:], "--metadata-prior fit:")
        missing = [m for m in models if m not in data.models]
        if missing:
            raise ValueError(f"the --metadata-prior fit data lacks models {', '.join(missing)}")
        # with --new-arms, the fit leaves out the new models' qualities (what it is to
        # guess) and only they take the prior: the others keep what the earlier version
        # learned under its own
        fitted = tuple(m for m in models if m not in new)
        cols = [data.models.index(m) for m in fitted]
        prior = fit_metadata_prior(
            fitted,
            data.quality[:, cols],
            data.cost_usd[:, cols],
            DEFAULT_STRENGTH if strength is None else strength,
        )
        origin = f"fitted on {data.source} {spec[4:]} ({len(data)} rows)"
        if new:
            price = {m: float(data.cost_usd[:, data.models.index(m)].mean()) for m in new}
            arms = {m: {"cost_usd": v} for m, v in price.items()}
            prior = MetadataPriorConfig.model_validate({**prior.model_dump(), "arms": arms})
            origin += f" without the new arms' qualities, for the new arms only ({', '.join(new)})"
    else:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"--metadata-prior {spec!r}: neither fit:DATA nor a JSON file")
        prior = MetadataPriorConfig.model_validate_json(path.read_text(encoding="utf-8"))
        if strength is not None:
            prior = MetadataPriorConfig.model_validate({**prior.model_dump(), "strength": strength})
        origin = f"read from {spec}"
    body = prior.model_dump(mode="json")
    for name in linear:
        specs[name] = {**specs[name], "metadata_prior": body}
    if args.save_metadata_prior:
        with open(args.save_metadata_prior, "w", encoding="utf-8") as fh:
            json.dump(body, fh, indent=2)
    model = " + ".join(
        [f"{prior.intercept:.3f}"]
        + [f"{c:.3f} ln {f}" for f, c in zip(prior.features, prior.coef, strict=True)]
    )
    per_arm = []
    for m in models:
        q = prior.quality(m)
        cost = prior.arms.get(m, {}).get("cost_usd")
        if q is None and cost is None:
            per_arm.append(f"{m} flat")
        else:
            parts = ([] if q is None else [f"q {q:.3f}"]) + (
                [] if cost is None else [f"cost {cost:.2e}"]
            )
            per_arm.append(f"{m} {' '.join(parts)}")
    others = [n for n in specs if n not in linear]
    return [
        f"metadata prior {origin}: quality = sigmoid({model}), strength {prior.strength:g} "
        f"pseudo-observations, for {', '.join(linear)}"
        + (f" (not {', '.join(others)})" if others else ""),
        "metadata prior per arm: " + "; ".join(per_arm),
    ]


def _align(warm: Any, models: tuple[str, ...]) -> Any:
    """The warm data set's reward vectors with its models in ``models``' order."""
    missing = [m for m in models if m not in warm.models]
    if missing:
        raise ValueError(f"the --warm-start data lacks models {', '.join(missing)}")
    return warm.rewards()[:, [warm.models.index(m) for m in models]]


def _featurizer(args: argparse.Namespace, labels: tuple[str, ...]) -> Any:
    """The featurizer for the run: one task slot per label (at least the default and
    --task-clusters) unless --task-slots says otherwise; ``labels`` are sorted and listed
    in that order, so past --task-slots the rest share slots by hash."""
    from pydantic import ValidationError

    from learners.featurize import N_TASK_SLOTS, Featurizer

    slots = args.task_slots or max(N_TASK_SLOTS, len(labels), args.task_clusters)
    if args.task_clusters > slots:
        raise ValueError(
            f"--task-clusters {args.task_clusters} exceeds the {slots} task slots "
            "(--task-slots): at most one cluster per slot"
        )
    dim = args.dim if args.dim is not None else 64 + max(0, slots - N_TASK_SLOTS)
    try:
        return Featurizer(dim=dim, task_slots=slots, tasks=labels[:slots])
    except ValidationError as exc:  # the layout's own words: dim too small for the slots
        raise ValueError(f"--dim / --task-slots: {exc.errors()[0]['msg']}") from None


def _slot_notes(feat: Any, labels: tuple[str, ...], hidden: bool) -> list[str]:
    """What the task slots hold, and which names share one."""
    sharing = feat.task_sharing()
    shared = sharing["shared_slots"]
    if hidden or not labels:
        head = f"task slots: {feat.task_slots}, for the keyword guess of each prompt's task"
    elif len(labels) <= feat.task_slots:
        head = f"task slots: {feat.task_slots}, one per task ({len(labels)} tasks)"
    else:
        head = (
            f"task slots: {feat.task_slots} for {len(labels)} tasks: the first "
            f"{feat.task_slots} (alphabetically) have their own, the rest share by hash"
        )
    if not shared:
        return [head + "; no slot is shared"]
    parts = "; ".join(f"slot {s}: {', '.join(names)}" for s, names in shared.items())
    return [
        f"{head}; {sharing['shared_names']} names share {len(shared)} "
        f"slot{'s' if len(shared) > 1 else ''} ({parts}): "
        "raise --task-slots to separate them"
    ]


def _contexts(
    ds: Any, args: argparse.Namespace, warm: Any = None
) -> tuple[Any, Any, Any, list[str], Any]:
    """The featurizer, context vectors, the embeddings that task clusters read (or None),
    notes, and the warm-start data's context vectors (or None), featurized alike."""
    from learners.task_clusters import DEFAULT_THRESHOLD

    notes: list[str] = []
    labels = set(ds.tasks.tolist()) | (set() if warm is None else set(warm.tasks.tolist()))
    all_tasks = tuple(sorted(labels - {""}))
    requests = list(ds.requests) + ([] if warm is None else list(warm.requests))
    if args.hide_tasks:
        requests = [_without_task(r) for r in requests]
        notes.append("task labels hidden from the learners (--hide-tasks); references use them")
    feat = _featurizer(args, () if args.hide_tasks else all_tasks)
    X = feat.featurize_many(requests)
    if args.task_clusters > 0:
        notes.append(
            f"task slots: {feat.task_slots}, holding up to {args.task_clusters} online clusters"
        )
    else:
        notes.extend(_slot_notes(feat, all_tasks, args.hide_tasks))
    start = feat.text_start
    E = X[:, start:].copy()
    if args.featurizer in SEMANTIC:
        from learners.semantic import SemanticFeaturizer

        sem = SemanticFeaturizer(kind=args.featurizer, dim=X.shape[1] - start)
        E = sem.embed_many(requests)
        X[:, start:] = sem.project(E) * feat.text_scale
        notes.append(f"text block: {sem.describe()}")
    if args.task_clusters > 0:
        notes.append(
            f"task one-hot: online clusters (up to {args.task_clusters}, threshold "
            f"{args.cluster_threshold or DEFAULT_THRESHOLD[args.featurizer]}) of the "
            f"{args.featurizer} embeddings, learned in stream order"
        )
    n = len(ds)
    Xw = None if warm is None else X[n:]
    return feat, X[:n], (E[:n] if args.task_clusters > 0 else None), notes, Xw


def _without_task(request: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in request.items() if k != "task"}
    if isinstance(out.get("metadata"), dict):
        out["metadata"] = {k: v for k, v in out["metadata"].items() if k != "task"}
    return out
