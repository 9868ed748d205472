"""The hindsight calibrations of ``bench/routerbench_exploration.py`` compute what they claim."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "routerbench_exploration.py"
_spec = importlib.util.spec_from_file_location("routerbench_exploration", _PATH)
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
sys.modules["routerbench_exploration"] = bench
_spec.loader.exec_module(bench)


def _stream(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """300 rows, two tasks, four models whose best differs by task; known cost -0.01 a model index."""
    rng = np.random.default_rng(seed)
    tasks = np.array(["a", "b"] * 150)
    p = {"a": np.array([0.9, 0.5, 0.4, 0.3]), "b": np.array([0.2, 0.3, 0.4, 0.8])}
    quality = np.stack([(rng.random(4) < p[t]).astype(float) for t in tasks])
    known = np.tile(-0.01 * np.arange(4), (len(tasks), 1))
    return quality, known, tasks


def test_a_learner_told_each_tasks_best_model_earns_the_per_task_best() -> None:
    quality, known, tasks = _stream(0)
    rewards = quality + known
    best = {t: np.argsort(-rewards[tasks == t].mean(axis=0))[:1] for t in np.unique(tasks)}
    per_task = sum(rewards[tasks == t].mean(axis=0).max() * (tasks == t).sum() for t in best) / len(
        tasks
    )
    for seed in range(3):
        assert bench.run(bench.thompson(1.0), quality, known, tasks, seed, best) == pytest.approx(
            per_task, abs=1e-12
        )


def test_told_fewer_models_costs_less_exploration_over_seeds() -> None:
    quality, known, tasks = _stream(1)
    rewards = quality + known
    ranked = {t: np.argsort(-rewards[tasks == t].mean(axis=0)) for t in np.unique(tasks)}
    told_two = {t: r[:2] for t, r in ranked.items()}
    free = np.mean([bench.run(bench.thompson(1.0), quality, known, tasks, s) for s in range(5)])
    told = np.mean(
        [bench.run(bench.thompson(1.0), quality, known, tasks, s, told_two) for s in range(5)]
    )
    assert told > free


def test_a_firm_prior_keeps_thompson_on_the_model_it_favours() -> None:
    quality, known, tasks = _stream(2)
    prior = np.array([0.1, 0.1, 0.95, 0.1])  # names model 2, the best of neither task
    rule = bench.thompson_with_prior(prior, strength=1e6, sharpness=1.0)
    rng = np.random.default_rng(0)
    picks = [rule(np.zeros(4), np.zeros(4), known[0], rng) for _ in range(50)]
    assert picks == [2] * 50
    # and with no weight on it, the observed counts decide: model 0 after 20 right answers in 20
    weak = bench.thompson_with_prior(prior, strength=0.0, sharpness=1.0)
    n = np.array([20.0, 20.0, 20.0, 20.0])
    s = np.array([20.0, 0.0, 0.0, 0.0])
    assert {weak(n, s, known[0], rng) for _ in range(50)} == {0}
