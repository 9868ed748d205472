"""Off-policy estimators recover a target policy's value from logged traffic."""

from __future__ import annotations

import numpy as np
import pytest

from learners import RewardEvent, make_learner
from learners.ope import LoggedData, doubly_robust, evaluate, ips, policy_probabilities, snips


def _logs(seed: int, n: int = 4000):
    rng = np.random.default_rng(seed)
    d, k = 4, 3
    X = np.column_stack([np.ones(n), rng.standard_normal((n, d - 1))])
    theta = np.array([[0.5, 0.3, 0.0, 0.0], [0.4, -0.3, 0.2, 0.0], [0.2, 0.0, 0.0, 0.4]])
    mean = X @ theta.T
    behaviour = np.full((n, k), 1.0 / k)
    a = rng.integers(k, size=n)
    r = mean[np.arange(n), a] + 0.2 * rng.standard_normal(n)
    logs = LoggedData(X, a, behaviour[np.arange(n), a], r, ("a0", "a1", "a2"))
    target = np.zeros((n, k))
    target[np.arange(n), mean.argmax(axis=1)] = 1.0  # the best arm per context
    return logs, target, float(mean.max(axis=1).mean())


@pytest.mark.parametrize("estimator", [ips, snips, doubly_robust])
def test_estimators_cover_the_true_value(estimator):
    covered = 0
    for seed in range(10):
        logs, target, truth = _logs(seed)
        est = estimator(logs, target)
        assert abs(est.value - truth) < 0.08
        covered += est.ci95[0] <= truth <= est.ci95[1]
    assert covered >= 8


def test_dr_is_tighter_than_ips():
    logs, target, _ = _logs(0)
    widths = {k: e.ci95[1] - e.ci95[0] for k, e in evaluate(logs, target).items()}
    assert widths["dr"] < widths["ips"]


def test_invalid_propensities_rejected():
    with pytest.raises(ValueError):
        LoggedData(np.ones((2, 1)), np.array([0, 0]), np.array([0.5, 0.0]), np.ones(2), ("a",))


def test_policy_probabilities_from_a_learner():
    logs, _, truth = _logs(1, n=3000)
    learner = make_learner({"kind": "linucb", "alpha": 0.0}, 4)
    for i in range(1500):  # learn from the first half of the logs
        learner.update(
            [
                RewardEvent(
                    logs.contexts[i],
                    logs.arms[logs.actions[i]],
                    np.array([logs.rewards[i], 0, 0, 0]),
                )
            ]
        )
    pi = policy_probabilities(
        learner, logs.contexts[1500:], list(logs.arms), np.random.default_rng(0)
    )
    assert np.allclose(pi.sum(axis=1), 1.0)
    held_out = LoggedData(
        logs.contexts[1500:],
        logs.actions[1500:],
        logs.propensities[1500:],
        logs.rewards[1500:],
        logs.arms,
    )
    assert doubly_robust(held_out, pi).value > held_out.rewards.mean() + 0.1
