"""Learner kinds -> classes, and the two calls services use: build and load."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel

from learners.base import Learner
from learners.baselines import EpsilonGreedy, FixedArm, RandomLearner
from learners.config import parse_config
from learners.greenserv import GreenServ
from learners.lints import LinTS
from learners.linucb import LinUCB
from learners.state import peek_kind
from learners.vw import VWLearner

LEARNERS: dict[str, type[Learner]] = {
    "linucb": LinUCB,
    "lints": LinTS,
    "greenserv": GreenServ,
    "vw": VWLearner,
    "random": RandomLearner,
    "fixed": FixedArm,
    "epsilon_greedy": EpsilonGreedy,
}

Weights = Mapping[str, float] | Sequence[float] | np.ndarray | None


def make_learner(
    config: BaseModel | Mapping[str, Any] | str, dim: int, weights: Weights = None
) -> Learner:
    """Build a fresh learner.

    ``config``: a config model, a dict or JSON with a ``kind`` (see
    :mod:`learners.config`). ``dim``: the featurizer's dimension. ``weights``:
    the objective's coefficients, a mapping over ``REWARD_COMPONENTS`` (missing
    ones are 0) or a vector in that order; default quality only.
    """
    cfg = parse_config(dict(config) if isinstance(config, Mapping) else config)
    build: Callable[..., Learner] = LEARNERS[cfg.kind]  # each takes (config, dim, weights)
    return build(cfg, dim, weights)


def load_learner(data: bytes) -> Learner:
    """Rebuild a learner from :meth:`Learner.state_bytes` output, of any kind."""
    return LEARNERS[peek_kind(data)].from_bytes(data)
