"""The exploration floor: every arm at least the floor, the draws as logged."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from learners.base import Decision
from learners.floor import with_floor


def _decision(probs: dict[str, float]) -> Decision:
    arm = max(probs, key=lambda a: probs[a])
    return Decision(arm, probs, dict.fromkeys(probs, 0.0), 3, "lints")


@given(
    st.lists(st.floats(0, 1), min_size=2, max_size=8).filter(lambda w: sum(w) > 0),
    st.floats(0.001, 0.5),
)
def test_every_arm_gets_at_least_the_floor_and_the_sum_stays_one(weights, floor):
    total = sum(weights)
    probs = {f"a{i}": w / total for i, w in enumerate(weights)}
    d = with_floor(_decision(probs), floor, np.random.default_rng(0))
    k = len(probs)
    assert sum(d.propensities.values()) == pytest.approx(1.0)
    assert min(d.propensities.values()) >= min(floor, 1 / k) - 1e-12
    assert d.propensity == d.propensities[d.arm]


def test_zero_floor_changes_nothing_and_draws_nothing():
    d = _decision({"a": 1.0, "b": 0.0})
    rng = np.random.default_rng(1)
    assert with_floor(d, 0.0, rng) is d
    assert rng.random() == np.random.default_rng(1).random()


def test_the_arms_served_follow_the_logged_probabilities():
    d = _decision({"a": 1.0, "b": 0.0, "c": 0.0})  # a greedy learner that ruled out b, c
    rng = np.random.default_rng(7)
    served = [with_floor(d, 0.05, rng).arm for _ in range(20_000)]
    share = {a: served.count(a) / len(served) for a in "abc"}
    floored = with_floor(d, 0.05, rng).propensities
    assert floored == pytest.approx({"a": 0.9, "b": 0.05, "c": 0.05})
    for a in "abc":  # within 4 standard errors of the logged probability
        se = np.sqrt(floored[a] * (1 - floored[a]) / len(served))
        assert abs(share[a] - floored[a]) < 4 * se
