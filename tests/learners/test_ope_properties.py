"""Properties of the off-policy estimators on synthetic logs with known propensities.

Unbiasedness is judged over replications: for one problem (contexts, the logger's and
the target's probabilities, mean rewards) the log's actions and rewards are drawn
``REPS`` times, and the mean error of an estimator against the target's true value on
those contexts must lie within ``Z_TOL`` standard errors of the replications (a
false alarm has probability about 6e-5 a check). The same check catches a biased
estimator: the logged mean, and IPS fed the wrong propensities.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learners.ope import (
    Estimate,
    LoggedData,
    clipped_ips,
    doubly_robust,
    effective_sample_size,
    evaluate,
    importance_weights,
    ips,
    low_propensity_share,
    snips,
    switch_dr,
)

REPS = 200
N = 300
Z_TOL = 4.0


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


class Problem:
    """Contexts, a context-dependent logger (with a floor), a stochastic target and the
    mean reward of every arm on every context, all fixed by ``seed``."""

    def __init__(self, seed: int, k: int, skew: float, n: int = N, d: int = 3) -> None:
        rng = np.random.default_rng(seed)
        self.k = k
        self.X = np.column_stack([np.ones(n), rng.standard_normal((n, d - 1))])
        theta = rng.uniform(-0.5, 0.5, (k, d))
        theta[:, 0] = rng.uniform(0.2, 0.8, k)
        self.mean = self.X @ theta.T  # (n, k)
        self.mu = 0.9 * _softmax(skew * self.X @ rng.standard_normal((d, k))) + 0.1 / k
        self.pi = _softmax(skew * self.X @ rng.standard_normal((d, k)))
        self.truth = float((self.pi * self.mean).sum(axis=1).mean())
        self.arms = tuple(f"a{i}" for i in range(k))

    def draw(self, rng: np.random.Generator, mu: np.ndarray | None = None) -> LoggedData:
        """One log: actions from the logger, rewards with noise; ``mu``: the propensities
        written into the log (default: the true ones)."""
        n = len(self.X)
        u = rng.random(n)[:, None]
        a = (u > np.cumsum(self.mu, axis=1)).sum(axis=1).clip(max=self.k - 1)
        rows = np.arange(n)
        r = self.mean[rows, a] + 0.3 * rng.standard_normal(n)
        logged_mu = self.mu if mu is None else mu
        return LoggedData(self.X, a, logged_mu[rows, a], r, self.arms)


def _bias_check(
    problem: Problem, estimator: Callable[[LoggedData], float], seed: int, **draw: object
) -> tuple[float, float]:
    """Mean error over the replications and its standard error."""
    rng = np.random.default_rng(seed)
    errs = np.array([estimator(problem.draw(rng, **draw)) - problem.truth for _ in range(REPS)])
    return float(errs.mean()), float(errs.std(ddof=1) / np.sqrt(REPS))


def _unbiased(mean_err: float, se: float) -> bool:
    return abs(mean_err) <= Z_TOL * se


problems = st.builds(
    Problem,
    seed=st.integers(0, 2**16),
    k=st.integers(2, 5),
    skew=st.floats(0.3, 2.0),
)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(problem=problems)
def test_ips_and_dr_are_unbiased_with_known_propensities(problem: Problem) -> None:
    pi = problem.pi
    for estimator in (lambda d: ips(d, pi).value, lambda d: doubly_robust(d, pi).value):
        m, se = _bias_check(problem, estimator, seed=1)
        assert _unbiased(m, se), (m, se)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(problem=problems)
def test_switch_dr_and_clipped_ips_are_unbiased_below_their_thresholds(problem: Problem) -> None:
    pi, top = problem.pi, float((problem.pi / problem.mu).max())
    for estimator in (
        lambda d: switch_dr(d, pi, tau=top + 1).value,
        lambda d: clipped_ips(d, pi, clip=top + 1).value,
    ):
        m, se = _bias_check(problem, estimator, seed=2)
        assert _unbiased(m, se), (m, se)


def test_the_check_catches_biased_estimators() -> None:
    problem = Problem(seed=3, k=3, skew=2.0)
    m, se = _bias_check(problem, lambda d: float(d.rewards.mean()), seed=4)  # on-policy mean
    assert not _unbiased(m, se)
    uniform = np.full_like(problem.mu, 1.0 / problem.k)  # IPS told the logger was uniform
    m, se = _bias_check(problem, lambda d: ips(d, problem.pi).value, seed=4, mu=uniform)
    assert not _unbiased(m, se)
    # and clipping far below the weights biases IPS low
    m, se = _bias_check(problem, lambda d: clipped_ips(d, problem.pi, clip=0.5).value, seed=4)
    assert m < -Z_TOL * se


@settings(max_examples=25, deadline=None, derandomize=True)
@given(problem=problems, seed=st.integers(0, 1000))
def test_snips_is_exact_when_the_candidate_is_the_logger(problem: Problem, seed: int) -> None:
    logs = problem.draw(np.random.default_rng(seed))
    est = snips(logs, problem.mu)
    on_policy = Estimate.from_terms(logs.rewards)
    assert est.value == pytest.approx(logs.rewards.mean(), abs=1e-12)
    assert est.ci95 == pytest.approx(on_policy.ci95, abs=1e-12)
    assert est.ess == pytest.approx(len(logs.rewards))
    assert ips(logs, problem.mu).value == pytest.approx(logs.rewards.mean(), abs=1e-12)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(problem=problems, seed=st.integers(0, 1000))
def test_estimators_reduce_to_one_another_at_their_limits(problem: Problem, seed: int) -> None:
    logs = problem.draw(np.random.default_rng(seed))
    pi = problem.pi
    every = evaluate(logs, pi, clip=np.inf, tau=np.inf)
    assert every["clipped_ips"].value == pytest.approx(every["ips"].value, abs=1e-12)
    assert every["switch_dr"].value == pytest.approx(every["dr"].value, abs=1e-12)
    w = importance_weights(logs, pi)
    dm = switch_dr(logs, pi, tau=-1.0)  # every correction dropped: the reward model alone
    assert dm.ess == 0.0
    assert dm.value != pytest.approx(every["dr"].value, abs=1e-9)
    assert 1.0 <= effective_sample_size(w) <= len(w)
    assert effective_sample_size(np.ones(7)) == pytest.approx(7.0)
    for e in every.values():
        assert e.ci95[0] <= e.value <= e.ci95[1]


def test_low_propensity_share_exact_and_estimated() -> None:
    problem = Problem(seed=5, k=4, skew=2.0)
    threshold = float(np.quantile(problem.mu, 0.3))
    exact = float((problem.pi * (problem.mu < threshold)).sum(axis=1).mean())
    logs = problem.draw(np.random.default_rng(6))
    assert low_propensity_share(logs, problem.pi, threshold, problem.mu) == pytest.approx(exact)
    rng = np.random.default_rng(7)
    estimated = [
        low_propensity_share(problem.draw(rng), problem.pi, threshold) for _ in range(REPS)
    ]
    se = np.std(estimated, ddof=1) / np.sqrt(REPS)
    assert abs(np.mean(estimated) - exact) <= Z_TOL * se
    assert exact > 0.05  # the check above is about something
