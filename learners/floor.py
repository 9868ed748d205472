"""The exploration floor: every arm keeps at least a minimum probability.

A learner that has settled gives the arms it ruled out probability 0 (LinTS, greedy
LinUCB) and off-policy evaluation can then say nothing about a policy that would pick
them. :func:`with_floor` mixes the learner's distribution with the uniform one,
``p'(a) = f + (1 - K f) p(a)`` over the ``K`` live arms, so ``p'(a) >= f`` for each: with
probability ``K f`` the arm is drawn uniformly, else the learner's pick stands. The
logged propensity is ``p'`` of the arm served. The price: up to ``K f`` of the traffic
goes where the learner would not send it (at ``f = 0.01`` and 4 arms, at most 4%,
earning the uniform policy's reward instead of the learner's).
"""

from __future__ import annotations

import numpy as np

from learners.base import Decision


def with_floor(decision: Decision, floor: float, rng: np.random.Generator) -> Decision:
    """``decision`` with every arm's probability at least ``floor`` (1/K when ``K floor``
    reaches 1); ``floor <= 0`` returns it unchanged, drawing nothing."""
    if floor <= 0:
        return decision
    arms = list(decision.propensities)
    k = len(arms)
    if k < 2:
        return decision
    mix = min(1.0, k * floor)  # the uniform share
    probs = {a: mix / k + (1.0 - mix) * float(p) for a, p in decision.propensities.items()}
    arm = decision.arm
    if rng.random() < mix:
        arm = arms[int(rng.integers(k))]
    return Decision.make(arm, probs, decision.scores, decision.version, decision.learner)
