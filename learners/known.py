"""Reward components known before the call are given to the learner, not learned.

An arm's cost is known before the call from its price table and the prompt's token
count, and its energy from its profile; only quality (and latency where it varies)
is uncertain. :func:`split_weights` gives a learner the objective's weights with
the known components set to 0, so its models (and its exploration) cover only
the rest; :func:`known_penalties` turns each arm's exact known values for one
request into the per-arm ``penalties`` that :meth:`learners.base.Learner.select`
subtracts from the scores. The learner's score for arm ``k`` is then its estimate
of the unknown part plus the exact ``sum_c w_c known_c[k]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from learners.base import REWARD_COMPONENTS


def component_indices(known: Sequence[str]) -> np.ndarray:
    bad = [c for c in known if c not in REWARD_COMPONENTS]
    if bad:
        raise ValueError(f"unknown reward components {bad}; use {REWARD_COMPONENTS}")
    return np.array([REWARD_COMPONENTS.index(c) for c in known], dtype=np.intp)


def split_weights(weights: np.ndarray, known: Sequence[str]) -> np.ndarray:
    """The weights a learner learns with: the objective's, known components set to 0."""
    w = np.asarray(weights, dtype=np.float64).copy()
    w[component_indices(known)] = 0.0
    return w


def known_penalties(
    arms: Sequence[str], values: np.ndarray, weights: np.ndarray, known: Sequence[str]
) -> dict[str, float]:
    """Per arm, minus the known components' contribution to the reward.

    ``values``: (arms, components) reward vectors (only the known columns are
    read), such as price x tokens in ``cost_usd``.
    """
    idx = component_indices(known)
    contrib = np.asarray(values)[:, idx] @ np.asarray(weights, dtype=np.float64)[idx]
    return {a: -float(v) for a, v in zip(arms, contrib, strict=True)}
