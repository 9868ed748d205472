"""Per-arm reward estimates the router and the planner read.

:class:`ArmScorer` is the narrow contract: for contexts ``X`` (B x d) it returns the
estimated mean reward and the confidence width of every arm (B x N each), and it
learns from (context, arm, reward) rows. :class:`RidgeScorer` is a vectorised
disjoint ridge regression (the statistics behind LinUCB) used until
``learners.linucb`` exposes per-arm mean/width estimates; :class:`FixedScorer` serves
known parameters (the hindsight oracle).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


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


class RidgeScorer:
    """Disjoint ridge regression per arm; width = sqrt(x' A^-1 x)."""

    def __init__(self, n_arms: int, dim: int, ridge: float = 1.0) -> None:
        if ridge <= 0:
            raise ValueError("ridge must be positive")
        self.n_arms, self.dim = n_arms, dim
        self._A = np.tile(ridge * np.eye(dim), (n_arms, 1, 1))
        self._A_inv = np.tile(np.eye(dim) / ridge, (n_arms, 1, 1))
        self._b = np.zeros((n_arms, dim))
        self._theta = np.zeros((n_arms, dim))
        self._pulls = np.zeros(n_arms, dtype=np.int64)

    def estimate(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X = np.atleast_2d(X)
        mean = X @ self._theta.T
        quad = np.einsum("bd,nde,be->bn", X, self._A_inv, X, optimize=True)
        return mean, np.sqrt(np.maximum(quad, 0.0))

    def update(self, X: np.ndarray, arms: np.ndarray, rewards: np.ndarray) -> None:
        X = np.atleast_2d(X)
        arms = np.asarray(arms, dtype=np.int64)
        np.add.at(self._A, arms, np.einsum("bd,be->bde", X, X))
        np.add.at(self._b, arms, X * np.asarray(rewards)[:, None])
        np.add.at(self._pulls, arms, 1)
        touched = np.unique(arms)
        self._A_inv[touched] = np.linalg.inv(self._A[touched])
        self._theta[touched] = np.einsum("nde,ne->nd", self._A_inv[touched], self._b[touched])

    def pulls(self) -> np.ndarray:
        return self._pulls.copy()


class FixedScorer:
    """Known linear parameters, zero width: the oracle's scorer."""

    def __init__(self, theta: np.ndarray) -> None:
        self._theta = np.asarray(theta, dtype=float)
        self.n_arms, self.dim = self._theta.shape

    def estimate(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean = np.atleast_2d(X) @ self._theta.T
        return mean, np.zeros_like(mean)

    def update(self, X: np.ndarray, arms: np.ndarray, rewards: np.ndarray) -> None:
        return None

    def pulls(self) -> np.ndarray:
        return np.zeros(self.n_arms, dtype=np.int64)
