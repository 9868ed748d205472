"""The one narrow interface every routing learner implements.

A learner knows nothing of Ray, HTTP or SQL. It maps a context vector and the
list of live arms to a :class:`Decision`, learns from batches of
:class:`RewardEvent`, and round-trips its whole state through bytes.

Rewards are vectors over :data:`REWARD_COMPONENTS`. The objective (see
``feedback.objective``) turns them into a scalar through a linear form, whose
coefficients reach the learner as ``weights`` (one float per component), so a
learner that keeps one model per component can apply new weights on the very
next decision without relearning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

REWARD_COMPONENTS: tuple[str, ...] = ("quality", "energy_j", "latency_ms", "cost_usd")
N_COMPONENTS = len(REWARD_COMPONENTS)


@dataclass(frozen=True)
class Decision:
    """What a learner chose, and with which probability, among the live arms."""

    arm: str
    propensities: dict[str, float]  # over the live arms; sums to 1
    scores: dict[str, float]  # the learner's per-arm score (UCB, sample, -cost ...)
    version: int  # policy version that made the decision
    learner: str  # learner kind

    @property
    def propensity(self) -> float:
        return self.propensities[self.arm]

    @classmethod
    def make(
        cls,
        arm: str,
        propensities: dict[str, float],
        scores: dict[str, float],
        version: int,
        learner: str,
    ) -> Decision:
        """The same as ``Decision(...)``, without the frozen dataclass's per-field setattr
        (learners build one per request)."""
        d = object.__new__(cls)
        d.__dict__.update(
            arm=arm, propensities=propensities, scores=scores, version=version, learner=learner
        )
        return d


@dataclass(frozen=True)
class RewardEvent:
    """One logged decision with its observed reward vector."""

    context: np.ndarray  # shape (d,)
    arm: str
    reward: np.ndarray  # shape (N_COMPONENTS,), ordered as REWARD_COMPONENTS
    propensity: float = 1.0
    meta: dict[str, object] = field(default_factory=dict)


@runtime_checkable
class Learner(Protocol):
    """What every learner implements, and all that callers may use.

    ``estimates`` gives, per arm, the mean reward the learner expects for a context
    under the current weights and the width of its confidence in that mean. A
    learner that keeps no confidence (the baselines, VW) returns its best estimate,
    each arm's mean reward so far (0 for an arm never pulled), and a width of 1
    for every arm. ``greedy_by_estimates`` says whether the arm with the highest
    ``estimates`` mean is the one the learner picks when it does not explore (the
    linear learners); the others choose by something else (chance, a fixed arm,
    VW's own model, or an optimism for untried arms that the means do not show).

    ``select`` takes the router's per-arm terms for adapters resident nowhere
    (see ``cache_manager.router``): ``penalties`` (reward units) are subtracted
    from the arm's score and ``width_scale`` multiplies its confidence width.
    Arms missing from either mapping get 0 and 1; entries for arms not among
    ``arms`` are ignored. Learners that choose by a score apply both (width:
    the linear learners; penalties: also epsilon-greedy's means); random, fixed
    and VW choose by no score and ignore them.
    """

    kind: ClassVar[str]
    greedy_by_estimates: ClassVar[bool]
    dim: int
    version: int

    def select(
        self,
        x: np.ndarray,
        arms: Sequence[str],
        rng: np.random.Generator,
        penalties: Mapping[str, float] | None = None,
        width_scale: Mapping[str, float] | None = None,
    ) -> Decision:
        """Choose one of ``arms`` for context ``x``. Unknown arms start optimistic."""
        ...

    def estimates(self, x: np.ndarray, arms: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per arm of ``arms``: (mean reward estimate, confidence width), each shaped (len(arms),)."""
        ...

    def update(self, batch: Sequence[RewardEvent]) -> None:
        """Learn from a batch of events; bumps ``version``."""
        ...

    def set_weights(self, weights: np.ndarray) -> None:
        """Replace the objective's linear coefficients (one per reward component)."""
        ...

    def state_bytes(self) -> bytes:
        """Serialize the whole state; ``from_bytes`` must reproduce next decisions exactly."""
        ...

    @classmethod
    def from_bytes(cls, data: bytes) -> Learner:
        """Rebuild a learner of this kind from :meth:`state_bytes` output."""
        ...

    def arm_summary(self) -> dict[str, dict[str, float]]:
        """Per arm: pulls, mean of each reward component, uncertainty."""
        ...
