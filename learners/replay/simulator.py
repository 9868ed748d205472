"""Replay a full-information routing data set as a bandit stream.

Each seed shuffles the prompts (``numpy.random.default_rng(seed)``) and every
learner sees them in that order, chooses one model per prompt, and learns only
that model's reward vector (bandit feedback). Contexts are featurized once.

References, all computed in hindsight on the whole stream:
``best_fixed`` (the one model with the highest mean reward), ``oracle`` (the
best model for each prompt) and ``per_task_best`` (the best model per task).
"Best single model" in the percent figures is the model with the highest mean
quality. Intervals are 95% Student-t intervals over seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from learners.base import RewardEvent
from learners.config import for_layout
from learners.datasets import RoutingDataset
from learners.featurize import Featurizer
from learners.known import component_indices, known_penalties, split_weights
from learners.registry import make_learner
from learners.task_clusters import OnlineTaskClusters
from learners.warm import warm_start

TICK = 100  # steps between progress calls within a run


@dataclass(frozen=True)
class ReplayOptions:
    """Variants of a replay.

    - ``known``: reward components known exactly before the call (such as
      ``cost_usd``, from the price table and the prompt); learners get each arm's
      value as a per-arm score term and learn only the other components.
    - ``contexts``: precomputed context vectors (n, d), in place of the featurizer's.
    - ``embeddings`` with ``clusters`` > 0: online task inference; per seed, a fresh
      :class:`OnlineTaskClusters` assigns each prompt (in stream order) to a
      cluster of its embedding, whose one-hot replaces the task one-hot (at most
      the featurizer's ``task_slots`` clusters).
    - ``warm_contexts``, ``warm_rewards``: an earlier policy version's data (the
      warm start), learned online before the run and carried at ``prior_weight``;
      ``new_arms``: models that earlier version never saw (left out of its data),
      which join when the run starts, under their own prior.
    """

    known: tuple[str, ...] = ()
    contexts: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    clusters: int = 0
    cluster_threshold: float = 0.5
    warm_contexts: np.ndarray | None = None
    warm_rewards: np.ndarray | None = None
    prior_weight: float = 1.0
    new_arms: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        component_indices(self.known)  # raises on an unknown name
        if (self.warm_contexts is None) != (self.warm_rewards is None):
            raise ValueError("a warm start needs both its contexts and its rewards")
        if self.warm_contexts is not None and self.clusters > 0:
            raise ValueError("a warm start does not combine with online task clusters")
        if self.new_arms and self.warm_contexts is None:
            raise ValueError("new arms are arms a warm start never saw: they need a warm start")
        if not 0.0 <= self.prior_weight <= 1.0:
            raise ValueError(f"the prior weight must lie in [0, 1], got {self.prior_weight}")

    def make_clusters(self) -> OnlineTaskClusters | None:
        if self.clusters <= 0 or self.embeddings is None:
            return None
        return OnlineTaskClusters(self.clusters, self.cluster_threshold)


@dataclass
class RunTrace:
    """One learner on one seed."""

    name: str
    seed: int
    rewards: np.ndarray  # (n,) scalar reward of each chosen arm, in stream order
    quality: np.ndarray
    cost: np.ndarray
    regret_fixed: np.ndarray  # (n,) per-step regret against the best fixed arm
    regret_oracle: np.ndarray
    arm_counts: np.ndarray  # (K,)


@dataclass
class ReplayResult:
    models: tuple[str, ...]
    weights: np.ndarray
    n: int
    seeds: list[int]
    traces: dict[str, list[RunTrace]]
    references: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    model_quality: np.ndarray | None = None  # (K,) mean quality of each single model
    model_cost: np.ndarray | None = None
    constant_cost: bool = False  # every arm costs the same on every prompt (e.g. all 0)


def mean_ci(values: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval over seeds."""
    v = np.asarray(values, dtype=float)
    m = float(v.mean())
    if len(v) < 2:
        return m, m, m
    h = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return m, m - h, m + h


def _rng_for(seed: int, name: str) -> np.random.Generator:
    salt = int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little")
    return np.random.default_rng([seed, salt])


def _run_one(
    name: str,
    config: Any,
    seed: int,
    X: np.ndarray,
    R: np.ndarray,
    w: np.ndarray,
    models: tuple[str, ...],
    best_fixed: int,
    options: ReplayOptions | None = None,
    tick: Callable[[int], None] | None = None,
    task_slice: slice = slice(0),
) -> RunTrace:
    """One learner on one seed; ``tick(k)`` is called every ``TICK`` steps (and at the end).
    ``task_slice``: where the task one-hot lies in ``X`` (what task clusters overwrite)."""
    opts = options or ReplayOptions()
    n = len(X)
    order = np.random.default_rng(seed).permutation(n)
    # known components reach the learner as exact per-arm terms (learners.known)
    learner = make_learner(config, X.shape[1], split_weights(w, opts.known))
    rng = _rng_for(seed, name)
    index = {m: i for i, m in enumerate(models)}
    live = list(models)
    meta: dict[str, object] = {"arms": live}
    if opts.warm_contexts is not None and opts.warm_rewards is not None:
        Xw, Rw = opts.warm_contexts, opts.warm_rewards
        seen = [m for m in live if m not in opts.new_arms]
        at = {m: i for i, m in enumerate(seen)}
        Rw = Rw[:, [index[m] for m in seen]] if opts.new_arms else Rw
        for t in np.random.default_rng([seed, 1]).permutation(len(Xw)):
            pen = known_penalties(seen, Rw[t], w, opts.known) if opts.known else None
            d = learner.select(Xw[t], seen, rng, penalties=pen)
            k = at[d.arm]
            learner.update([RewardEvent(Xw[t], d.arm, Rw[t, k], d.propensity, meta)])
        learner = warm_start(learner, prior_weight=opts.prior_weight)
    chosen = np.empty(n, dtype=np.intp)
    clusters = opts.make_clusters()
    done = 0
    for step, t in enumerate(order):
        x = X[t]
        if clusters is not None and opts.embeddings is not None:
            x = x.copy()
            x[task_slice] = 0.0
            x[task_slice.start + clusters.assign(opts.embeddings[t])] = 1.0
        if opts.known:
            penalties = known_penalties(live, R[t], w, opts.known)
            d = learner.select(x, live, rng, penalties=penalties)
        else:
            d = learner.select(x, live, rng)
        k = index[d.arm]
        chosen[step] = k
        learner.update([RewardEvent(x, d.arm, R[t, k], d.propensity, meta)])
        if tick is not None and (step + 1) % TICK == 0:
            tick(TICK)
            done += TICK
    if tick is not None and n > done:
        tick(n - done)
    S = R[order] @ w
    rows = np.arange(n)
    got = S[rows, chosen]
    return RunTrace(
        name,
        seed,
        got,
        R[order, chosen, 0],
        R[order, chosen, 3],
        S[:, best_fixed] - got,
        S.max(axis=1) - got,
        np.bincount(chosen, minlength=len(models)),
    )


def references(ds: RoutingDataset, w: np.ndarray) -> dict[str, dict[str, Any]]:
    R = ds.rewards()
    S = R @ w
    best = int(S.mean(axis=0).argmax())
    rows = np.arange(len(ds))
    oracle = S.argmax(axis=1)
    per_task = np.empty(len(ds), dtype=np.intp)
    task_arm: dict[str, str] = {}
    for task in sorted(set(ds.tasks.tolist())):
        mask = ds.tasks == task
        k = int(S[mask].mean(axis=0).argmax())
        per_task[mask] = k
        task_arm[task] = ds.models[k]

    def ref(choice: np.ndarray, **extra: Any) -> dict[str, Any]:
        return {
            "mean_reward": float(S[rows, choice].mean()),
            "mean_quality": float(ds.quality[rows, choice].mean()),
            "mean_cost": float(ds.cost_usd[rows, choice].mean()),
            **extra,
        }

    top_q = int(ds.quality.mean(axis=0).argmax())
    return {
        "best_fixed": ref(np.full(len(ds), best), arm=ds.models[best]),
        "oracle": ref(oracle),
        "per_task_best": ref(per_task, arms=task_arm),
        "best_quality_model": ref(np.full(len(ds), top_q), arm=ds.models[top_q]),
        "uniform_random": {
            "mean_reward": float(S.mean()),
            "mean_quality": float(ds.quality.mean()),
            "mean_cost": float(ds.cost_usd.mean()),
        },
    }


def _ticker(
    progress: Callable[[int, str, int], None], name: str, seed: int
) -> Callable[[int], None]:
    return lambda k: progress(k, name, seed)


def run_replay(
    ds: RoutingDataset,
    learners: Mapping[str, Mapping[str, Any]],
    weights: np.ndarray,
    seeds: Sequence[int],
    featurizer: Featurizer | None = None,
    jobs: int = 1,
    progress: Callable[[int, str, int], None] | None = None,
    options: ReplayOptions | None = None,
) -> ReplayResult:
    """Run every learner on every seed.

    ``progress(k, learner, seed)`` is called as steps finish: every ``TICK``
    steps within a run when ``jobs`` is 1, once per run otherwise. ``options``
    holds the variants (known components, precomputed contexts, online task
    clusters); see :class:`ReplayOptions`.

    ``featurizer`` makes the contexts (default: one task slot per task of ``ds``,
    :meth:`Featurizer.for_tasks`) or, with ``options.contexts``, describes their
    layout; learner configs are fitted to it (:func:`learners.config.for_layout`).
    """
    opts = options or ReplayOptions()
    feat = featurizer or Featurizer.for_tasks(ds.tasks.tolist())
    if opts.clusters > feat.task_slots:
        raise ValueError(
            f"{opts.clusters} task clusters but {feat.task_slots} task slots: at most "
            "one cluster per task slot"
        )
    X = opts.contexts if opts.contexts is not None else feat.featurize_many(ds.requests)
    R = ds.rewards()
    w = np.asarray(weights, dtype=float)
    refs = references(ds, w)
    best_fixed = ds.models.index(refs["best_fixed"]["arm"])
    fitted = {name: for_layout(dict(cfg), feat) for name, cfg in learners.items()}
    jobs_list = [(name, cfg, int(s)) for s in seeds for name, cfg in fitted.items()]
    traces: dict[str, list[RunTrace]] = {name: [] for name in learners}
    args = (X, R, w, ds.models, best_fixed, opts)
    task_slice = feat.task_slice
    if jobs <= 1:
        for name, cfg, s in jobs_list:
            tick = None
            if progress is not None:
                tick = _ticker(progress, name, s)
            traces[name].append(_run_one(name, cfg, s, *args, tick=tick, task_slice=task_slice))
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = [
                pool.submit(_run_one, name, cfg, s, *args, task_slice=task_slice)
                for name, cfg, s in jobs_list
            ]
            for fut in futures:
                tr = fut.result()
                traces[tr.name].append(tr)
                if progress:
                    progress(len(ds), tr.name, tr.seed)
    notes = list(ds.notes)
    if opts.known:
        notes.append(
            f"known components {', '.join(opts.known)}: each arm's exact value for the prompt is "
            "added to the learners' scores (linear learners, epsilon-greedy); they learn the rest"
        )
    return ReplayResult(
        ds.models,
        w,
        len(ds),
        list(seeds),
        traces,
        refs,
        notes,
        ds.quality.mean(axis=0),
        ds.cost_usd.mean(axis=0),
        bool(np.ptp(ds.cost_usd) == 0) if len(ds) else True,
    )


def compare_best(result: ReplayResult, learners: Mapping[str, Any]) -> dict[str, Any]:
    """The learner with the highest mean reward against every other learner and reference.

    Every learner sees the same stream order for a seed, so differences are
    paired by seed: ``diff`` is the mean per-seed difference in mean reward and
    ``diff_ci95`` its 95% interval; ``beats`` says that interval lies above 0.
    ``disjoint`` says the stricter thing: the best learner's own interval lies
    wholly above the other's interval (a reference, computed in hindsight, has
    none: its single value).
    """
    if not learners:
        return {}
    best = max(learners, key=lambda n: learners[n]["mean_reward"])
    mine = np.array([r.rewards.mean() for r in sorted(result.traces[best], key=lambda r: r.seed)])
    lo = learners[best]["reward_ci95"][0]

    def versus(theirs: np.ndarray | float, their_upper: float) -> dict[str, Any]:
        m, dlo, dhi = mean_ci(mine - theirs)
        return {"diff": m, "diff_ci95": [dlo, dhi], "beats": dlo > 0, "disjoint": lo > their_upper}

    against: dict[str, Any] = {}
    for name, runs in result.traces.items():
        if name != best:
            theirs = np.array([r.rewards.mean() for r in sorted(runs, key=lambda r: r.seed)])
            against[name] = versus(theirs, learners[name]["reward_ci95"][1])
    for ref in ("best_fixed", "per_task_best"):
        value = float(result.references[ref]["mean_reward"])
        against[ref] = versus(value, value)
    return {"best": best, "against": against}


def summarize(result: ReplayResult) -> dict[str, Any]:
    """The ``--json`` document: per learner means and intervals, and the references."""
    top = result.references["best_quality_model"]
    fixed = result.references["best_fixed"]["mean_reward"]
    gain = result.references["per_task_best"]["mean_reward"] - fixed
    out: dict[str, Any] = {}
    for name, runs in result.traces.items():
        reward = mean_ci([r.rewards.mean() for r in runs])
        quality = mean_ci([r.quality.mean() for r in runs])
        cost = mean_ci([r.cost.mean() for r in runs])
        rf = mean_ci([r.regret_fixed.sum() for r in runs])
        ro = mean_ci([r.regret_oracle.sum() for r in runs])
        counts = np.sum([r.arm_counts for r in runs], axis=0)
        out[name] = {
            "mean_reward": reward[0],
            "reward_ci95": [reward[1], reward[2]],
            # (mean reward - best fixed) / (per-task best - best fixed): the share of the
            # gain that knowing each prompt's task gives in hindsight
            "share_of_task_gain": (reward[0] - fixed) / gain if gain > 0 else None,
            "mean_quality": quality[0],
            "quality_ci95": [quality[1], quality[2]],
            "mean_cost": cost[0],
            "cost_ci95": [cost[1], cost[2]],
            "pct_best_model_quality": 100.0 * quality[0] / top["mean_quality"],
            "pct_best_model_cost": (
                100.0 * cost[0] / top["mean_cost"] if top["mean_cost"] > 0 else None
            ),
            "regret_vs_best_fixed": rf[0],
            "regret_vs_best_fixed_ci95": [rf[1], rf[2]],
            "regret_vs_oracle": ro[0],
            "regret_vs_oracle_ci95": [ro[1], ro[2]],
            "per_seed": {
                "seed": [r.seed for r in runs],
                "mean_reward": [float(r.rewards.mean()) for r in runs],
                "mean_quality": [float(r.quality.mean()) for r in runs],
                "mean_cost": [float(r.cost.mean()) for r in runs],
                "regret_vs_best_fixed": [float(r.regret_fixed.sum()) for r in runs],
                "regret_vs_oracle": [float(r.regret_oracle.sum()) for r in runs],
            },
            "arm_share": {
                m: float(c) / float(counts.sum())
                for m, c in zip(result.models, counts, strict=True)
            },
        }
    return {
        "learners": out,
        "comparisons": compare_best(result, out),
        "references": result.references,
        "n": result.n,
        "seeds": result.seeds,
        "weights": result.weights.tolist(),
        "notes": result.notes,
        "constant_cost": result.constant_cost,
    }
