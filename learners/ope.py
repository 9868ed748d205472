"""Off-policy evaluation over logged (context, arm, propensity, reward) rows.

Given logs from a behaviour (logging) policy and a target policy's action
probabilities ``pi[i, k]`` on each logged context, estimate the target's mean
reward. With ``w_i = pi[i, a_i] / p_i`` the importance weight of row ``i``:

- IPS: ``mean(w_i r_i)``;
- clipped IPS: ``mean(min(w_i, M) r_i)`` (biased low for positive rewards when
  weights exceed ``M``, lower variance);
- SNIPS: ``sum(w_i r_i) / sum(w_i)`` (self-normalised, lower variance);
- DR: ``mean(sum_k pi[i, k] q(x_i, k) + w_i (r_i - q(x_i, a_i)))`` with a
  ridge reward model ``q`` per arm, cross-fitted over two folds (rows of one
  fold are predicted by the model fitted on the other);
- Switch-DR (Wang et al., 2017, in Open Bandit Pipeline's form): DR whose
  correction term is kept only where ``w_i <= tau``; rows with a larger weight
  fall back to the model's ``sum_k pi[i, k] q(x_i, k)``.

Each estimate comes with a 95% normal interval from the per-row terms
(``mean +- 1.96 sd / sqrt(n)``; the delta method for SNIPS), which also holds
for a target that learns as it is replayed (the terms are then a martingale
difference sequence around the target's per-row value), and with the effective
sample size of the weights it uses, ``(sum w)^2 / sum w^2``. Rows whose logged
propensity is 0 are invalid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from learners.base import Learner

Z95 = 1.959963984540054
ESTIMATORS: tuple[str, ...] = ("ips", "clipped_ips", "snips", "dr", "switch_dr")
DEFAULT_CLIP = 100.0  # clipped IPS: weights above this count as this
DEFAULT_SWITCH_TAU = 100.0  # Switch-DR: weights above this use the reward model only


@dataclass(frozen=True)
class Estimate:
    value: float
    ci95: tuple[float, float]
    n: int
    ess: float = float("nan")  # effective sample size of the weights used

    @classmethod
    def from_terms(
        cls, terms: np.ndarray, value: float | None = None, ess: float = float("nan")
    ) -> Estimate:
        v = float(terms.mean()) if value is None else value
        se = float(terms.std(ddof=1) / np.sqrt(len(terms))) if len(terms) > 1 else 0.0
        return cls(v, (v - Z95 * se, v + Z95 * se), len(terms), ess)

    @property
    def se(self) -> float:
        """The standard error behind ``ci95``."""
        return (self.ci95[1] - self.ci95[0]) / (2 * Z95)


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


def importance_weights(logs: LoggedData, pi: np.ndarray) -> np.ndarray:
    """``pi[i, a_i] / p_i`` for every logged row."""
    w: np.ndarray = pi[np.arange(len(logs.actions)), logs.actions] / logs.propensities
    return w


def effective_sample_size(w: np.ndarray) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` (0 when every weight is 0)."""
    s2 = float((w * w).sum())
    return float(w.sum()) ** 2 / s2 if s2 > 0 else 0.0


def ips(logs: LoggedData, pi: np.ndarray) -> Estimate:
    w = importance_weights(logs, pi)
    return Estimate.from_terms(w * logs.rewards, ess=effective_sample_size(w))


def clipped_ips(logs: LoggedData, pi: np.ndarray, clip: float = DEFAULT_CLIP) -> Estimate:
    w = np.minimum(importance_weights(logs, pi), clip)
    return Estimate.from_terms(w * logs.rewards, ess=effective_sample_size(w))


def snips(logs: LoggedData, pi: np.ndarray) -> Estimate:
    w = importance_weights(logs, pi)
    mw = float(w.mean())
    ess = effective_sample_size(w)
    if mw == 0:
        return Estimate(float("nan"), (float("nan"), float("nan")), len(w), ess)
    value = float((w * logs.rewards).sum() / w.sum())
    return Estimate.from_terms(w * (logs.rewards - value) / mw + value, value, ess)


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


def reward_model(logs: LoggedData, ridge: float = 1.0) -> np.ndarray:
    """Cross-fitted predictions ``q[i, k]`` (n, K): rows of fold ``i % 2`` are predicted by
    the ridge model fitted on the other fold, so a row's own reward never enters its
    prediction."""
    n, k = len(logs.actions), len(logs.arms)
    fold = np.arange(n) % 2
    q = np.empty((n, k))
    for f in (0, 1):
        train, test = fold != f, fold == f
        theta = fit_reward_model(
            logs.contexts[train], logs.actions[train], logs.rewards[train], k, ridge
        )
        q[test] = logs.contexts[test] @ theta.T
    return q


def doubly_robust(
    logs: LoggedData, pi: np.ndarray, ridge: float = 1.0, q: np.ndarray | None = None
) -> Estimate:
    q = reward_model(logs, ridge) if q is None else q
    rows = np.arange(len(logs.actions))
    w = importance_weights(logs, pi)
    terms = (pi * q).sum(axis=1) + w * (logs.rewards - q[rows, logs.actions])
    return Estimate.from_terms(terms, ess=effective_sample_size(w))


def switch_dr(
    logs: LoggedData,
    pi: np.ndarray,
    tau: float = DEFAULT_SWITCH_TAU,
    ridge: float = 1.0,
    q: np.ndarray | None = None,
) -> Estimate:
    q = reward_model(logs, ridge) if q is None else q
    rows = np.arange(len(logs.actions))
    w = importance_weights(logs, pi)
    kept = np.where(w <= tau, w, 0.0)
    terms = (pi * q).sum(axis=1) + kept * (logs.rewards - q[rows, logs.actions])
    return Estimate.from_terms(terms, ess=effective_sample_size(kept))


def evaluate(
    logs: LoggedData,
    pi: np.ndarray,
    *,
    clip: float = DEFAULT_CLIP,
    tau: float = DEFAULT_SWITCH_TAU,
    ridge: float = 1.0,
    q: np.ndarray | None = None,
) -> dict[str, Estimate]:
    """Every estimator of :data:`ESTIMATORS` for target probabilities ``pi`` (n, K); ``q``:
    the reward model's predictions, when already fitted (:func:`reward_model`)."""
    q = reward_model(logs, ridge) if q is None else q
    return {
        "ips": ips(logs, pi),
        "clipped_ips": clipped_ips(logs, pi, clip),
        "snips": snips(logs, pi),
        "dr": doubly_robust(logs, pi, q=q),
        "switch_dr": switch_dr(logs, pi, tau, q=q),
    }


def low_propensity_share(
    logs: LoggedData,
    pi: np.ndarray,
    threshold: float,
    logger_probs: np.ndarray | None = None,
) -> float:
    """The share of the target's picks that go where the logger picks with probability
    below ``threshold``. With the logger's full probabilities ``logger_probs`` (n, K) it is
    exact; from the logged propensities alone it is the IPS estimate
    ``mean(w_i [p_i < threshold])`` (blind to arms the logger never picks)."""
    if logger_probs is not None:
        return float((pi * (logger_probs < threshold)).sum(axis=1).mean())
    w = importance_weights(logs, pi)
    return float((w * (logs.propensities < threshold)).mean())


def policy_probabilities(
    learner: Learner, contexts: np.ndarray, arms: Sequence[str], rng: np.random.Generator
) -> np.ndarray:
    """A (frozen) learner's propensities over ``arms`` on each logged context."""
    out = np.empty((len(contexts), len(arms)))
    for i, x in enumerate(contexts):
        d = learner.select(x, arms, rng)
        out[i] = [d.propensities[a] for a in arms]
    return out
