"""The fast scale: a cache-aware UCB router.

An arm's score is its upper confidence bound ``mean + alpha * width``; when the
router is cache-aware and the arm's adapter is resident on no replica, the score
also loses the paging penalty (expected load seconds times the objective's latency
coefficient, see :class:`cache_manager.paging.PagingCostModel`). A router that is
not cache-aware is what plain multiplexing does: pick the best arm, page it in.

``nonresident_alpha`` lets the router explore only within the cache: an arm whose
adapter is resident nowhere is then scored with a smaller (POLAR: zero) width
multiplier, and exploring it is left to the slow scale (the planner's exploration
bonus and POLAR+'s forced exploration), which brings it in for a whole epoch
instead of paging it for one request.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def paging_penalties(resident_anywhere: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    """Per-arm amount subtracted from the score: the penalty where nothing holds it."""
    return np.where(resident_anywhere, 0.0, penalty)


@dataclass(frozen=True)
class CacheAwareRouter:
    alpha: float = 1.0
    cache_aware: bool = True
    nonresident_alpha: float | None = None  # width multiplier off the cache; None: alpha

    def scores(
        self,
        mean: np.ndarray,
        width: np.ndarray,
        resident_anywhere: np.ndarray,
        penalty: np.ndarray,
    ) -> np.ndarray:
        if not self.cache_aware:
            return mean + self.alpha * width
        off = self.alpha if self.nonresident_alpha is None else self.nonresident_alpha
        bonus = np.where(resident_anywhere, self.alpha, off) * width
        return mean + bonus - paging_penalties(resident_anywhere, penalty)

    def choose(
        self,
        mean: np.ndarray,
        width: np.ndarray,
        resident_anywhere: np.ndarray,
        penalty: np.ndarray,
    ) -> int:
        return int(np.argmax(self.scores(mean, width, resident_anywhere, penalty)))

    def choose_many(
        self,
        mean: np.ndarray,
        width: np.ndarray,
        resident_anywhere: np.ndarray,
        penalty: np.ndarray,
    ) -> np.ndarray:
        """:meth:`choose` for each row of ``mean``/``width`` (B x N), one residency."""
        return np.asarray(np.argmax(self.scores(mean, width, resident_anywhere, penalty), axis=1))
