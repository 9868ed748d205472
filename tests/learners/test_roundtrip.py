"""State round-trips through bytes: the next 1,000 decisions are identical."""

from __future__ import annotations

import numpy as np
import pytest

from learners import RewardEvent, load_learner, make_learner
from learners.featurize import Featurizer

from .conftest import ARMS, linear_problem

CONFIGS = [
    {"kind": "linucb"},
    {"kind": "linucb", "window": 50},
    {"kind": "linucb", "discount": 0.99},
    {"kind": "lints"},
    {"kind": "lints", "propensity": "sampled", "propensity_samples": 32},
    {"kind": "lints", "prior_mean": [0.8, 0, 0, 0], "context_indices": [0, 1, 2, 3]},
    {"kind": "greenserv"},
    {"kind": "vw"},
    {"kind": "vw", "exploration": "epsilon"},
    {"kind": "vw", "exploration": "softmax"},
    {"kind": "random"},
    {"kind": "fixed", "arm": "arm2"},
    {"kind": "epsilon_greedy"},
]
W = {"quality": 1.0, "cost_usd": -30.0}


def _drive(learner, X, R, rng, start: int, stop: int) -> list[tuple]:
    out = []
    meta = {"arms": ARMS}
    for t in range(start, stop):
        d = learner.select(X[t], ARMS, rng)
        out.append((d.arm, tuple(d.propensities.values()), tuple(d.scores.values()), d.version))
        k = ARMS.index(d.arm)
        learner.update([RewardEvent(X[t], d.arm, R[t, k], d.propensity, meta)])
    return out


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c.values())))
def test_next_1000_decisions_identical_after_reload(config):
    n_warm, n_next = 300, 1000
    dim = Featurizer().min_dim  # the smallest context the default layout allows
    X, R = linear_problem(seed=3, n=n_warm + n_next, dim=dim)
    learner = make_learner(config, dim, W)
    _drive(learner, X, R, np.random.default_rng(1), 0, n_warm)
    blob = learner.state_bytes()
    clone = load_learner(blob)
    assert type(clone) is type(learner)
    assert clone.version == learner.version
    a = _drive(learner, X, R, np.random.default_rng(7), n_warm, n_warm + n_next)
    b = _drive(clone, X, R, np.random.default_rng(7), n_warm, n_warm + n_next)
    assert a == b
    assert clone.state_bytes() == learner.state_bytes()


def test_load_rejects_garbage():
    with pytest.raises(ValueError):
        load_learner(b"not a state at all")
