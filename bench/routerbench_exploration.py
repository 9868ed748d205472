"""What must a learner pay to explore routerbench_zs from a cold start?

    .venv/bin/python bench/routerbench_exploration.py [--dataset ../shared/data/routerbench_zs]

The issue's target for a cold start on the whole stream is 95% of the headroom from
random routing to the per-task best model in hindsight. On this data set the prompts carry
no signal beyond their task (``bench/routerbench_ceiling.py``), so the problem is one
multi-armed bandit per task: find each task's best model while serving. This script runs
the textbook algorithms for exactly that problem, per task, with the cost known before
the call (only quality is learned, as the project's learners do), and tunes each one's
exploration parameter **in hindsight, on the same stream it is scored on** (which no
learner can do): Beta-Bernoulli Thompson sampling with its posterior sharpened by a
factor, UCB with a scaled bonus, and explore-then-commit with m pulls of every model per
task. Their best figures bound from above what exploring per task costs here; the same
seeds shuffle the stream as ``banditctl simulate`` does (``default_rng(seed).permutation``).

Two more families calibrate the target by what a learner would have to be told to reach
it: Thompson sampling told each task's k best models in hindsight (it explores among those
k only), and Thompson sampling whose prior is each model's quality over the whole stream
(every task together: the most any prior from a model's metadata, price or public scores,
which know no task of this stream, could give), held at m pseudo-observations.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from learners.datasets import read_routerbench  # noqa: E402
from learners.replay.objective import parse_objective  # noqa: E402

# one step: (task's pulls, task's quality sums, request's known cost term, rng) -> arm
Rule = Callable[[np.ndarray, np.ndarray, np.ndarray, np.random.Generator], int]


def thompson(sharpness: float) -> Rule:
    """Beta(1 + s, 1 + n - s) per model, its parameters multiplied by ``sharpness`` (> 1: a narrower posterior, less exploration)."""

    def pick(n: np.ndarray, s: np.ndarray, known: np.ndarray, rng: np.random.Generator) -> int:
        draw = rng.beta((1.0 + s) * sharpness, (1.0 + n - s) * sharpness)
        return int(np.argmax(draw + known))

    return pick


def ucb(bonus: float) -> Rule:
    """Mean quality + ``bonus`` x sqrt(2 ln t / n); every model once first."""

    def pick(n: np.ndarray, s: np.ndarray, known: np.ndarray, rng: np.random.Generator) -> int:
        if (n == 0).any():
            return int(rng.choice(np.flatnonzero(n == 0)))
        t = n.sum()
        return int(np.argmax(s / n + bonus * np.sqrt(2.0 * np.log(t) / n) + known))

    return pick


def explore_then_commit(m: int) -> Rule:
    """Each model ``m`` times (the least pulled first), then the best mean."""

    def pick(n: np.ndarray, s: np.ndarray, known: np.ndarray, rng: np.random.Generator) -> int:
        if n.min() < m:
            return int(rng.choice(np.flatnonzero(n == n.min())))
        return int(np.argmax(s / n + known))

    return pick


def thompson_with_prior(mean_quality: np.ndarray, strength: float, sharpness: float) -> Rule:
    """Thompson sampling whose Beta prior holds ``mean_quality`` at ``strength`` pseudo-observations per model."""
    a0 = strength * mean_quality + 1.0
    b0 = strength * (1.0 - mean_quality) + 1.0

    def pick(n: np.ndarray, s: np.ndarray, known: np.ndarray, rng: np.random.Generator) -> int:
        draw = rng.beta((a0 + s) * sharpness, (b0 + n - s) * sharpness)
        return int(np.argmax(draw + known))

    return pick


def run(
    rule: Rule,
    quality: np.ndarray,
    known: np.ndarray,
    tasks: np.ndarray,
    seed: int,
    allowed: dict[str, np.ndarray] | None = None,
) -> float:
    """Mean reward of ``rule`` run per task over the stream in seed ``seed``'s order.

    ``allowed`` (task -> model indices) restricts each task's choice to those models.
    """
    rng = np.random.default_rng(seed)
    order = np.random.default_rng(seed).permutation(len(tasks))
    k = quality.shape[1]
    arms = {t: np.arange(k) if allowed is None else allowed[t] for t in np.unique(tasks)}
    pulls = {t: np.zeros(len(a)) for t, a in arms.items()}
    sums = {t: np.zeros(len(a)) for t, a in arms.items()}
    total = 0.0
    for i in order:
        t = tasks[i]
        j = rule(pulls[t], sums[t], known[i, arms[t]], rng)
        arm = arms[t][j]
        total += quality[i, arm] + known[i, arm]
        pulls[t][j] += 1
        sums[t][j] += quality[i, arm]
    return total / len(tasks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="../shared/data/routerbench_zs")
    ap.add_argument("--objective", default="quality=1,cost_usd=-30")
    ap.add_argument("--seeds", type=int, default=10)
    args = ap.parse_args()

    data = read_routerbench(args.dataset)
    w = parse_objective(args.objective)
    rewards = data.rewards() @ w  # (n, K)
    quality = data.quality * w[0]
    known = rewards - quality  # cost (and any other weighted component): known before the call
    tasks = data.tasks
    random_ = float(rewards.mean())
    fixed = float(rewards.mean(axis=0).max())
    per_task = float(
        sum(rewards[tasks == t].mean(axis=0).max() * (tasks == t).sum() for t in np.unique(tasks))
        / len(tasks)
    )
    target = random_ + 0.95 * (per_task - random_)
    print(f"{len(tasks)} rows, {len(data.models)} models, {len(np.unique(tasks))} tasks; "
          f"objective {args.objective}; {args.seeds} seeds")  # fmt: skip
    print(f"random {random_:.4f}  best fixed {fixed:.4f}  per-task best {per_task:.4f}  "
          f"95% of the headroom {target:.4f}")  # fmt: skip
    families: dict[str, list[tuple[str, Rule]]] = {
        "thompson": [(f"sharpness={x}", thompson(x)) for x in (1, 2, 5, 10, 20)],
        "ucb": [(f"bonus={x}", ucb(x)) for x in (1.0, 0.5, 0.2, 0.1, 0.05)],
        "explore-then-commit": [(f"m={x}", explore_then_commit(x)) for x in (1, 2, 3, 5, 10, 20)],
    }
    mean_quality = data.quality.mean(axis=0)  # each model over every task: no task's answer in it
    families["thompson, prior: each model's quality over the stream"] = [
        (f"m={m},sharpness={x}", thompson_with_prior(mean_quality, m, x))
        for m in (10, 30, 100, 300)
        for x in (1, 2)
    ]
    ranked = {t: np.argsort(-rewards[tasks == t].mean(axis=0)) for t in np.unique(tasks)}
    told: dict[str, dict[str, np.ndarray]] = {}
    for k in (2, 3):
        families[f"thompson, told each task's {k} best"] = [
            (f"sharpness={x}", thompson(x)) for x in (1, 2, 5)
        ]
        told[f"thompson, told each task's {k} best"] = {t: r[:k] for t, r in ranked.items()}
    seeds = range(args.seeds)
    for family, rules in families.items():
        best: tuple[float, str] = (-np.inf, "")
        allowed = told.get(family)
        print(family)
        for name, rule in rules:
            vals = np.array([run(rule, quality, known, tasks, s, allowed) for s in seeds])
            closed = (vals.mean() - random_) / (per_task - random_)
            print(f"  {name:<22} mean {vals.mean():.4f} "
                  f"[{vals.min():.4f}, {vals.max():.4f}]  headroom closed {closed:.0%}")  # fmt: skip
            best = max(best, (float(vals.mean()), name))
        print(f"{family}: best in hindsight {best[1]}: {best[0]:.4f} "
              f"({(best[0] - random_) / (per_task - random_):.0%} of the headroom)")  # fmt: skip


if __name__ == "__main__":
    main()
