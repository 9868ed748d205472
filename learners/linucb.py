"""Disjoint LinUCB (Li et al., 2010) with Sherman-Morrison updates.

Score of arm ``k`` for context ``x``: ``theta_k . x + alpha sqrt(x^T A_k^-1 x)``
minus any per-arm penalty; the arm with the highest score is chosen (ties at
random), so its propensity is 1 (or 1/ties). An arm with fewer than
``min_pulls`` updates scores ``new_arm_score``: new arms are tried first.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from learners._choice import argmax_ties_list
from learners.config import LinUCBConfig
from learners.linear import LinearLearner


class LinUCB(LinearLearner):
    kind: ClassVar[str] = "linucb"
    config: LinUCBConfig

    def __init__(self, config: LinUCBConfig | None = None, dim: int = 64, weights: Any = None):
        super().__init__(config or LinUCBConfig(), dim, weights)
        self._bonus = float(self.config.alpha)

    @classmethod
    def config_type(cls) -> Any:
        return LinUCBConfig

    def _choose(
        self, est: np.ndarray, untried: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[int, list[float], list[float]]:
        s = est[2]
        if untried is not None:
            s = s.copy()
            s[untried] = self._new_arm_score
        scores = s.tolist()
        i, props = argmax_ties_list(scores, rng)
        return i, props, scores
