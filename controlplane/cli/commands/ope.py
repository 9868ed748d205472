"""``banditctl ope``: what would candidate policies have earned on logged decisions?

Two sources of logs:

- the request log in PostgreSQL (default): the decisions the learner credited with a
  quality, in a ``--since``/``--until`` window and ``--route``, each with the propensity it
  was logged with; rewards under the latest policy's objective (``--objective`` replaces
  its weights);
- ``--dataset PATH``: a full-information routing data set streamed under
  ``--logging-policy`` (one log per seed), so every estimate can be checked against the
  true value of the same picks.

Candidates (``--candidates``, comma-separated): learner specs (``linucb``,
``linucb:alpha=1``, ``lints``, ``epsilon:0.05``; see
:mod:`learners.replay.ope_policies`), ``fixed:ARM``, ``random``, and from the
database ``current`` and ``version:N`` (stored policies, evaluated frozen). Every
``--weights`` adds each learner and stored policy once more choosing by those
weights (``NAME@weights``), still scored under the evaluation objective. Estimators,
intervals and the pooling over seeds: :mod:`learners.ope`, :mod:`learners.replay.ope_eval`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from controlplane.cli.commands import split_names

if TYPE_CHECKING:
    import numpy as np

    from learners.replay.ope_eval import Log
    from learners.replay.ope_policies import Candidate

DEFAULT_OBJECTIVE = "quality=1,cost_usd=-30"


class UsageError(ValueError):
    """A bad argument: printed, exit 2."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "ope",
        help="estimate what candidate policies would have earned on logged decisions",
        description=(
            "Off-policy evaluation: IPS, clipped IPS, SNIPS, DR and Switch-DR estimates of "
            "each candidate's mean reward per decision, with 95% normal intervals and "
            "effective sample sizes, on the PostgreSQL request log (DATABASE_URL) or on a "
            "full-information data set logged under --logging-policy (with the true values)."
        ),
    )
    src = p.add_argument_group("logs")
    src.add_argument(
        "--dataset",
        help="a routing data set (.jsonl, RouterBench CSV file or folder, or 'synthetic') "
        "instead of the database",
    )
    src.add_argument("--pattern", default="*.csv", help="file glob inside a CSV folder")
    src.add_argument("--rows", type=int, help="use this many rows of the data set (seeded)")
    src.add_argument(
        "--logging-policy",
        default="random",
        help="the policy that writes the data set's log: random, epsilon:0.1, fixed:ARM or "
        "a learner spec (default: %(default)s)",
    )
    src.add_argument(
        "--since", help="database: decisions from this time (ISO 8601, or 24h, 7d: ago)"
    )
    src.add_argument("--until", help="database: decisions before this time")
    src.add_argument("--route", help="database: only this route's decisions")
    src.add_argument(
        "--limit", type=int, default=200_000, help="database: at most this many (oldest) rows"
    )
    c = p.add_argument_group("candidates")
    c.add_argument(
        "--candidates",
        required=True,
        help="comma-separated: linucb, linucb:alpha=1, lints, fixed:ARM, random, current, "
        "version:N",
    )
    c.add_argument(
        "--candidate",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help='one more candidate from a learner config, e.g. \'ucb1={"kind":"linucb","alpha":1}\'',
    )
    c.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="W",
        help="evaluate each learner and stored policy also choosing by these weights "
        "(quality=1,cost_usd=-50); repeatable",
    )
    e = p.add_argument_group("evaluation")
    e.add_argument(
        "--objective",
        help="weights of the reward every candidate is scored by (data set default: "
        f"{DEFAULT_OBJECTIVE}; database default: the latest policy's objective)",
    )
    e.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="replays, seeds 0..K-1 (data set: a fresh log each; database: the candidates' "
        "own draws), reported per seed and pooled (default: 1)",
    )
    e.add_argument("--dim", type=int, default=64, help="data set: featurizer dimension")
    e.add_argument("--clip", type=float, default=100.0, help="clipped IPS: the weight cap")
    e.add_argument(
        "--switch-tau", type=float, default=100.0, help="Switch-DR: the weight threshold"
    )
    e.add_argument(
        "--min-propensity",
        type=float,
        default=0.01,
        help="warn when 5%% of a candidate's picks go where the logger's probability is "
        "below this (default: %(default)s)",
    )
    o = p.add_argument_group("output")
    o.add_argument("--json", dest="json_out", help="write the document as JSON")
    o.add_argument("--plot", help="write a PNG: each estimate with its interval, the truth")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from learners.replay.ope_eval import Settings, format_table, plot
    from learners.replay.ope_eval import run as evaluate

    if args.plot:
        from learners.replay.report import require_pyplot

        try:
            require_pyplot()  # fail before the work, not after it
        except ModuleNotFoundError as exc:
            print(f"ope: {exc}", file=sys.stderr)
            return 2
    if args.seeds < 1:
        print("ope: --seeds must be at least 1", file=sys.stderr)
        return 2
    try:
        if args.dataset:
            logs, candidates, meta = _from_dataset(args)
        else:
            logs, candidates, meta = _from_database(args)
    except (UsageError, ValueError, FileNotFoundError, json.JSONDecodeError) as exc:
        print(f"ope: {exc}", file=sys.stderr)
        return 2
    for line in meta.pop("lines"):
        print(line)
    settings = Settings(
        clip=args.clip, switch_tau=args.switch_tau, min_propensity=args.min_propensity
    )
    doc = {**meta, **evaluate(logs, candidates, settings)}
    print(format_table(doc))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2)
        print(f"wrote {args.json_out}")
    if args.plot:
        plot(doc, args.plot)
        print(f"wrote {args.plot}")
    return 0


# -- candidates -------------------------------------------------------------------


def _candidates(
    args: argparse.Namespace,
    dim: int,
    weights: np.ndarray,
    arms: tuple[str, ...],
    stored: Any = None,
    featurizer: Any = None,
) -> list[Candidate]:
    """The candidates of ``--candidates``, ``--candidate`` and their ``--weights`` variants;
    ``stored(spec)`` builds ``current`` and ``version:N`` (database only); presets read the
    task slots of ``featurizer`` (default: the default layout)."""
    from learners.config import for_layout
    from learners.replay.objective import parse_objective
    from learners.replay.ope_policies import learner_candidate, parse_policy_spec, with_weights

    out: list[Candidate] = []
    variable: list[Candidate] = []  # those whose picks depend on weights
    specs = [(s, s) for s in split_names(args.candidates)]
    for item in args.candidate:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--candidate {item!r}: use NAME=JSON")
        specs.append((name.strip(), raw))
    for name, spec in specs:
        if spec == "current" or spec.startswith("version:"):
            if stored is None:
                raise UsageError(f"candidate {spec!r} is a stored policy: it needs the database")
            cand: Candidate = stored(spec)
            variable.append(cand)
        else:
            config = parse_policy_spec(spec, featurizer)
            if featurizer is not None:
                config = for_layout(config, featurizer).model_dump(mode="json", by_alias=True)
            if config["kind"] == "fixed" and config["arm"] not in arms:
                raise UsageError(
                    f"candidate {spec!r}: arm {config['arm']!r} is not among the logged arms "
                    f"({', '.join(arms)})"
                )
            cand = learner_candidate(name, config, dim, weights)
            if config["kind"] not in ("fixed", "random"):
                variable.append(cand)
        out.append(cand)
    if len({c.name for c in out}) != len(out):
        raise UsageError("candidate names must be unique")
    for text in args.weights:
        w = parse_objective(text)
        label = text.replace(" ", "")
        out.extend(with_weights(c, w, label) for c in variable)
    if not out:
        raise UsageError("no candidates")
    return out


# -- data set ---------------------------------------------------------------------


def _from_dataset(
    args: argparse.Namespace,
) -> tuple[list[tuple[int, Log]], list[Candidate], dict[str, Any]]:
    import numpy as np

    from learners.config import for_layout
    from learners.datasets import load_dataset
    from learners.featurize import Featurizer
    from learners.replay.objective import format_objective, parse_objective
    from learners.replay.ope_eval import from_replay
    from learners.replay.ope_policies import log_dataset, parse_policy_spec
    from learners.replay.synthetic import synthetic_dataset

    weights = parse_objective(args.objective or DEFAULT_OBJECTIVE)
    if args.dataset == "synthetic":
        ds = synthetic_dataset(args.rows or 1500)
    else:
        ds = load_dataset(args.dataset, args.pattern)
        if args.rows is not None and args.rows < len(ds):
            idx = np.sort(np.random.default_rng(0).choice(len(ds), args.rows, replace=False))
            ds = ds.subset(idx)
    # one task slot per task of the data set (at least the default 8)
    feat = Featurizer.for_tasks(ds.tasks.tolist(), dim=args.dim)
    logger = for_layout(parse_policy_spec(args.logging_policy, feat), feat).model_dump(
        mode="json", by_alias=True
    )
    if logger["kind"] == "fixed" and logger["arm"] not in ds.models:
        raise UsageError(f"logging policy {args.logging_policy!r}: no such model")
    X = feat.featurize_many(ds.requests)
    R = ds.rewards()
    candidates = _candidates(args, X.shape[1], weights, ds.models, featurizer=feat)
    logs = [
        (s, from_replay(log_dataset(X, R, weights, ds.models, logger, s), ds.models))
        for s in range(args.seeds)
    ]
    lines = [
        f"{ds.source}: {len(ds)} rows, {len(ds.models)} models; logged by "
        f"{args.logging_policy}; objective {format_objective(weights)}",
        *(f"note: {n}" for n in ds.notes),
    ]
    meta = {
        "source": {"dataset": str(args.dataset), "rows": len(ds)},
        "logging_policy": args.logging_policy,
        "objective": dict(zip(_components(), weights.tolist(), strict=True)),
        "lines": lines,
    }
    return logs, candidates, meta


def _components() -> tuple[str, ...]:
    from learners.base import REWARD_COMPONENTS

    return REWARD_COMPONENTS


# -- database ---------------------------------------------------------------------

_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def parse_time(text: str | None, now: datetime) -> datetime | None:
    """ISO 8601 (UTC when no zone is given), or ``90s``, ``30m``, ``24h``, ``7d`` before now."""
    if text is None:
        return None
    m = _AGO.match(text.strip())
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return now - timedelta(**{unit: float(m.group(1))})
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"bad time {text!r}: use ISO 8601 or 30m, 24h, 7d") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def snapshot_featurizer(latest: dict[str, Any] | None, dim: int) -> Any:
    """The featurizer that the snapshot ``latest`` (``snapshots.latest_snapshot``) records
    in its config, when its contexts are of size ``dim``: the task slots the deployment
    featurized with, so that presets (``greenserv``'s task view) read those, not the default
    layout's. None when it records none, or one of another size."""
    from pydantic import ValidationError

    from learners.featurize import Featurizer

    recorded = None if latest is None else (latest.get("config") or {}).get("featurizer")
    if not isinstance(recorded, dict):
        return None
    try:
        featurizer = Featurizer.model_validate(recorded)
    except ValidationError:
        return None
    return featurizer if featurizer.dim == dim else None


def _from_database(
    args: argparse.Namespace,
) -> tuple[list[tuple[int, Log]], list[Candidate], dict[str, Any]]:
    import numpy as np

    from controlplane.settings import get_settings
    from feedback.database import make_engine
    from feedback.objective import Objective
    from feedback.repositories import logged_decisions, snapshots
    from learners.ope import LoggedData
    from learners.replay.objective import format_objective, parse_objective
    from learners.replay.ope_eval import Log

    now = datetime.now(UTC)
    since, until = parse_time(args.since, now), parse_time(args.until, now)
    window = {"since": since, "until": until, "route": args.route}
    with get_settings().database() as db:
        engine = make_engine(db.url, pool_size=1)
        try:
            with engine.connect() as conn:
                rows = logged_decisions.credited_decisions(conn, limit=args.limit, **window)
                counts = logged_decisions.window_counts(conn, **window)
                latest = snapshots.latest_snapshot(conn)
                stored_rows: dict[str, dict[str, Any]] = {}
                for spec in split_names(args.candidates):
                    if spec == "current":
                        if latest is None:
                            raise UsageError("candidate 'current': no policy published yet")
                        stored_rows[spec] = latest
                    elif spec.startswith("version:"):
                        try:
                            version = int(spec.split(":", 1)[1])
                        except ValueError:
                            raise UsageError(f"bad candidate {spec!r}: use version:N") from None
                        from feedback.errors import NotFound

                        try:
                            stored_rows[spec] = snapshots.get_snapshot(conn, version)
                        except NotFound:
                            raise UsageError(f"candidate {spec!r}: no such version") from None
        finally:
            engine.dispose()
    if not rows:
        raise UsageError(
            f"no credited decisions in the window ({counts['decisions']} decisions, "
            f"{counts['pending']} not credited yet)"
        )
    dims = Counter(len(r.context) for r in rows)
    dim = dims.most_common(1)[0][0]
    lines = []
    if len(dims) > 1:
        lines.append(f"note: contexts of {len(dims)} sizes; kept the {dims[dim]} of size {dim}")
        rows = [r for r in rows if len(r.context) == dim]
    objective = Objective()
    if latest is not None and "objective" in latest["config"]:
        objective = Objective.model_validate(latest["config"]["objective"])
    if args.objective:
        w = parse_objective(args.objective)
        objective = objective.model_copy(
            update={"weights": dict(zip(_components(), w.tolist(), strict=True))}
        )
    weights = objective.weight_vector
    arms = tuple(sorted({r.arm_id for r in rows}))
    index = {a: i for i, a in enumerate(arms)}
    raw = np.array([(r.quality, r.energy_j, r.latency_ms, r.cost_usd) for r in rows])
    vectors = objective.normalize(raw)
    data = LoggedData(
        np.array([r.context for r in rows], dtype=np.float64),
        np.array([index[r.arm_id] for r in rows], dtype=np.intp),
        np.array([r.propensity for r in rows]),
        vectors @ weights,
        arms,
    )
    log = Log(data, vectors)

    def stored(spec: str) -> Candidate:
        from learners import load_learner
        from learners.replay.ope_policies import Candidate

        snap = stored_rows[spec]
        if snap["state"] is None:
            raise UsageError(f"candidate {spec!r}: version {snap['version']} was compacted")
        state = bytes(snap["state"])
        if load_learner(state).dim != dim:
            raise UsageError(f"candidate {spec!r}: its contexts are not of size {dim}")
        name = spec if spec != "current" else f"current (version {snap['version']})"
        return Candidate(name, lambda: load_learner(state), learns=False)

    featurizer = snapshot_featurizer(latest, dim)
    if latest is not None and featurizer is None:
        lines.append(
            f"note: the latest policy records no featurizer of size {dim}; presets read the"
            " default task slots"
        )
    candidates = _candidates(args, dim, weights, arms, stored, featurizer=featurizer)
    versions = Counter(r.policy_version for r in rows)
    lines[:0] = [
        f"database: {len(rows)} credited decisions from {rows[0].created_at:%Y-%m-%d %H:%M:%S} "
        f"to {rows[-1].created_at:%Y-%m-%d %H:%M:%S}"
        + (f" on route {args.route}" if args.route else "")
        + f"; {counts['pending']} not credited yet, {counts['skipped']} credited without a "
        f"quality (left out); arms {', '.join(arms)}; logged by {len(versions)} policy "
        f"version(s); objective {format_objective(weights)}",
    ]
    meta = {
        "source": {
            "database": True,
            "since": None if since is None else since.isoformat(),
            "until": None if until is None else until.isoformat(),
            "route": args.route,
            "rows": len(rows),
            **counts,
            "policy_versions": sorted(versions),
        },
        "logging_policy": "logged propensities",
        "objective": objective.weights,
        "lines": lines,
    }
    return [(s, log) for s in range(args.seeds)], candidates, meta
