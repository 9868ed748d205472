"""Fixtures for the learner tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROUTERBENCH = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "routerbench_zs"
ARMS = [f"arm{i}" for i in range(5)]


@pytest.fixture
def routerbench_path() -> Path:
    if not ROUTERBENCH.is_dir():
        pytest.skip(
            f"routerbench_zs not found at {ROUTERBENCH.resolve()}: the data set is not in this checkout"
        )
    return ROUTERBENCH


@pytest.fixture
def arms() -> list[str]:
    return list(ARMS)


def linear_problem(seed: int, n: int, dim: int = 8, n_arms: int = 5, noise: float = 0.1):
    """Contexts, and reward vectors per arm from hidden linear models (quality, cost)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, dim)) / np.sqrt(dim)
    X[:, 0] = 1.0
    theta_q = rng.standard_normal((n_arms, dim)) * 0.5
    cost = rng.uniform(0.0, 0.01, n_arms)
    q = X @ theta_q.T + noise * rng.standard_normal((n, n_arms))
    R = np.zeros((n, n_arms, 4))
    R[:, :, 0] = q
    R[:, :, 3] = cost
    return X, R
