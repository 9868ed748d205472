"""Off-policy evaluation over logged (context, arm, propensity, reward) rows.

Given logs from a behaviour policy and a target policy's action probabilities
``pi[i, k]`` on each logged context, estimate the target's mean reward:

- IPS: ``mean(w_i r_i)`` with ``w_i = pi[i, a_i] / p_i``;
- SNIPS: ``sum(w_i r_i) / sum(w_i)`` (self-normalised, lower variance);
- DR: ``mean(sum_k pi[i, k] q(x_i, k) + w_i (r_i - q(x_i, a_i)))`` with a
  ridge reward model ``q`` per arm, cross-fitted over two folds.

Intervals are 95% normal intervals from the per-row influence terms (the
delta method for SNIPS). Rows whose logged propensity is 0 are invalid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from learners.base import Learner

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    value: float
    ci95: tuple[float, float]
    n: int

    @classmethod
    def from_terms(cls, terms: np.ndarray, value: float | None = None) -> Estimate:
        v = float(terms.mean()) if value is None else value
        se = float(terms.std(ddof=1) / np.sqrt(len(terms))) if len(terms) > 1 else 0.0
        return cls(v, (v - Z95 * se, v + Z95 * se), len(terms))


@dataclass(frozen=True)
class LoggedData:
    contexts: np.ndarray  # (n, d)
    actions: np.ndarray  # (n,) arm indices into ``arms``
    propensities: np.ndarray  # (n,) behaviour probability of the logged arm
    rewards: np.ndarray  # (n,) scalar rewards
    arms: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.actions)
        if not (len(self.contexts) == len(self.propensities) == len(self.rewards) == n):
            raise ValueError("logged arrays differ in length")
        if np.any(self.propensities <= 0) or np.any(self.propensities > 1):
            raise ValueError("logged propensities must lie in (0, 1]")


def _weights(logs: LoggedData, pi: np.ndarray) -> np.ndarray:
    w: np.ndarray = pi[np.arange(len(logs.actions)), logs.actions] / logs.propensities
    return w


def ips(logs: LoggedData, pi: np.ndarray) -> Estimate:
    return Estimate.from_terms(_weights(logs, pi) * logs.rewards)


def snips(logs: LoggedData, pi: np.ndarray) -> Estimate:
    w = _weights(logs, pi)
    mw = float(w.mean())
    if mw == 0:
        return Estimate(float("nan"), (float("nan"), float("nan")), len(w))
    value = float((w * logs.rewards).sum() / w.sum())
    return Estimate.from_terms(w * (logs.rewards - value) / mw + value, value)


def fit_reward_model(
    contexts: np.ndarray, actions: np.ndarray, rewards: np.ndarray, n_arms: int, ridge: float = 1.0
) -> np.ndarray:
    """Ridge coefficients per arm, (K, d)."""
    d = contexts.shape[1]
    theta = np.zeros((n_arms, d))
    for k in range(n_arms):
        m = actions == k
        X = contexts[m]
        theta[k] = np.linalg.solve(X.T @ X + ridge * np.eye(d), X.T @ rewards[m])
    return theta


def doubly_robust(logs: LoggedData, pi: np.ndarray, ridge: float = 1.0) -> Estimate:
    n, k = len(logs.actions), len(logs.arms)
    fold = np.arange(n) % 2
    q = np.empty((n, k))
    for f in (0, 1):
        train, test = fold != f, fold == f
        theta = fit_reward_model(
            logs.contexts[train], logs.actions[train], logs.rewards[train], k, ridge
        )
        q[test] = logs.contexts[test] @ theta.T
    rows = np.arange(n)
    w = _weights(logs, pi)
    terms = (pi * q).sum(axis=1) + w * (logs.rewards - q[rows, logs.actions])
    return Estimate.from_terms(terms)


def evaluate(logs: LoggedData, pi: np.ndarray) -> dict[str, Estimate]:
    """All three estimates for target probabilities ``pi`` (n, K)."""
    return {"ips": ips(logs, pi), "snips": snips(logs, pi), "dr": doubly_robust(logs, pi)}


def policy_probabilities(
    learner: Learner, contexts: np.ndarray, arms: Sequence[str], rng: np.random.Generator
) -> np.ndarray:
    """A (frozen) learner's propensities over ``arms`` on each logged context."""
    out = np.empty((len(contexts), len(arms)))
    for i, x in enumerate(contexts):
        d = learner.select(x, arms, rng)
        out[i] = [d.propensities[a] for a in arms]
    return out
