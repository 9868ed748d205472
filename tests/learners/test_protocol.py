"""Every learner kind implements the whole ``Learner`` protocol, as documented in learners.base."""

from __future__ import annotations

import numpy as np
import pytest

from learners import LEARNERS, Learner, RewardEvent, load_learner, make_learner

ARMS = ["a", "b", "c"]
CONFIGS = {
    "linucb": {},
    "lints": {},
    "greenserv": {},
    "vw": {},
    "random": {},
    "fixed": {"arm": "b"},
    "epsilon_greedy": {"epsilon": 0.0},
}


def _learner(kind: str) -> Learner:
    learner = make_learner({"kind": kind, **CONFIGS[kind]}, 32)
    x = np.zeros(32)
    x[0] = 1.0
    for arm, q in (("a", 0.9), ("b", 0.5), ("a", 0.7)):
        learner.update([RewardEvent(x, arm, np.array([q, 0, 0, 0]), 1.0, {"arms": ARMS})])
    return learner


def test_the_registry_covers_every_kind() -> None:
    assert set(CONFIGS) == set(LEARNERS)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_each_learner_implements_the_protocol(kind: str) -> None:
    learner = _learner(kind)
    assert isinstance(learner, Learner) and learner.kind == kind
    x = np.zeros(32)
    x[0] = 1.0
    mean, width = learner.estimates(x, ARMS)
    assert mean.shape == width.shape == (3,)
    assert np.isfinite(mean).all() and (width >= 0).all()
    if not learner.greedy_by_estimates:  # no confidence: mean so far (0 if never pulled), width 1
        np.testing.assert_allclose(mean, [0.8, 0.5, 0.0])
        np.testing.assert_array_equal(width, np.ones(3))
    rng = np.random.default_rng(0)
    d = learner.select(x, ARMS, rng, penalties={"a": 0.0}, width_scale={"c": 1.0})
    assert d.arm in ARMS and sum(d.propensities.values()) == pytest.approx(1.0)
    clone = type(learner).from_bytes(learner.state_bytes())
    assert clone.kind == kind and load_learner(learner.state_bytes()).kind == kind


def test_epsilon_greedy_pays_penalties_and_the_others_without_scores_ignore_them() -> None:
    x = np.zeros(32)
    x[0] = 1.0
    greedy = _learner("epsilon_greedy")
    greedy.update([RewardEvent(x, "c", np.array([0.1, 0, 0, 0]))])
    rng = np.random.default_rng(0)
    assert greedy.select(x, ARMS, rng).arm == "a"
    assert greedy.select(x, ARMS, rng, penalties={"a": 0.5}).arm == "b"
    fixed = _learner("fixed")
    assert fixed.select(x, ARMS, rng, penalties={"b": 9.0}).arm == "b"
