"""Routing learners: pure Python + numpy, no Ray, HTTP or SQL.

Public surface::

    from learners import Featurizer, make_learner, load_learner
    feat = Featurizer(dim=64)
    learner = make_learner({"kind": "linucb", "alpha": 0.5}, feat.dim,
                           weights={"quality": 1.0, "cost_usd": -30.0})
    d = learner.select(feat.featurize(body), ["gpt-4", "llama"], rng)
    learner.update([RewardEvent(x, d.arm, reward_vector, d.propensity)])
    blob = learner.state_bytes(); same = load_learner(blob)

Imports are lazy so that importing the package does no work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from learners.base import REWARD_COMPONENTS, Decision, Learner, RewardEvent

if TYPE_CHECKING:
    from learners.config import LearnerConfig, parse_config
    from learners.featurize import Featurizer
    from learners.linear import as_weights
    from learners.registry import LEARNERS, load_learner, make_learner

_LAZY = {
    "Featurizer": "learners.featurize",
    "LEARNERS": "learners.registry",
    "make_learner": "learners.registry",
    "load_learner": "learners.registry",
    "LearnerConfig": "learners.config",
    "parse_config": "learners.config",
    "as_weights": "learners.linear",
}

__all__ = [
    "LEARNERS",
    "REWARD_COMPONENTS",
    "Decision",
    "Featurizer",
    "Learner",
    "LearnerConfig",
    "RewardEvent",
    "as_weights",
    "load_learner",
    "make_learner",
    "parse_config",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
