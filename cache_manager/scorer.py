"""Per-arm reward estimates the router and the planner read.

:class:`ArmScorer` is the narrow contract: for contexts ``X`` (B x d) it returns the
estimated mean reward and the confidence width of every arm (B x N each), and it
learns from (context, arm, reward) rows. :class:`LinUCBScorer` adapts the project's
learner (:class:`learners.linucb.LinUCB`) to it through the learner's public
``estimates`` and ``update``, so the router, the planner and the gateway read one
model; :class:`FixedScorer` serves known parameters (the hindsight oracle).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from typing_extensions import override

from learners.base import N_COMPONENTS, RewardEvent
from learners.config import LinUCBConfig
from learners.linucb import LinUCB


class ArmScorer(Protocol):
    n_arms: int
    dim: int

    def estimate(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, width), each shaped (len(X), n_arms)."""
        ...

    def update(self, X: np.ndarray, arms: np.ndarray, rewards: np.ndarray) -> None: ...

    def pulls(self) -> np.ndarray:
        """Observations per arm."""
        ...


class LinUCBScorer(ArmScorer):
    """Arm indices over a :class:`LinUCB` learner: disjoint ridge per arm.

    ``arms`` fixes the order of the estimate columns. Rewards learned here are the
    quality component of the learner's reward vector (the other components zero),
    so with the learner's default weights ``mean`` is expected quality and
    ``width = sqrt(x' A^-1 x)``. Call :meth:`update` with a batch (the simulator
    does every ``batch`` requests): the learner applies it in one ``update`` call.
    """

    def __init__(
        self, arms: Sequence[str], dim: int, ridge: float = 1.0, learner: LinUCB | None = None
    ) -> None:
        if ridge <= 0:
            raise ValueError("ridge must be positive")
        self.arms = tuple(arms)
        self.n_arms, self.dim = len(self.arms), dim
        self.learner = learner if learner is not None else LinUCB(LinUCBConfig(ridge=ridge), dim)
        if self.learner.dim != dim:
            raise ValueError(f"learner has dim {self.learner.dim}, scorer {dim}")
        self.learner.estimates(np.zeros(dim), self.arms)  # registers the arms in order
        self._pulls = np.zeros(self.n_arms, dtype=np.int64)

    def estimate(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        mean = np.empty((len(X), self.n_arms))
        width = np.empty((len(X), self.n_arms))
        for i, x in enumerate(X):
            mean[i], width[i] = self.learner.estimates(x, self.arms)
        return mean, width

    def update(self, X: np.ndarray, arms: np.ndarray, rewards: np.ndarray) -> None:
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        arms = np.asarray(arms, dtype=np.int64)
        vectors = np.zeros((len(arms), N_COMPONENTS))
        vectors[:, 0] = rewards
        self.learner.update(
            [
                RewardEvent(context=x, arm=self.arms[a], reward=r)
                for x, a, r in zip(X, arms.tolist(), vectors, strict=True)
            ]
        )
        np.add.at(self._pulls, arms, 1)

    def pulls(self) -> np.ndarray:
        return self._pulls.copy()


class FixedScorer(ArmScorer):
    """Known linear parameters, zero width: the oracle's scorer."""

    def __init__(self, theta: np.ndarray) -> None:
        self._theta = np.asarray(theta, dtype=float)
        self.n_arms, self.dim = self._theta.shape

    def estimate(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean = np.atleast_2d(X) @ self._theta.T
        return mean, np.zeros_like(mean)

    @override
    def update(self, X: np.ndarray, arms: np.ndarray, rewards: np.ndarray) -> None:
        return None

    def pulls(self) -> np.ndarray:
        return np.zeros(self.n_arms, dtype=np.int64)
