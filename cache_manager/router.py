"""The fast scale: how a router prices an arm whose adapter is resident nowhere.

:class:`PagingRule` is the one rule, used by the simulator's router and by the
gateways of the running system. Under a cache-aware policy an arm whose adapter is
resident on no replica loses the paging penalty from its score (expected load
seconds times the objective's latency coefficient, see
:class:`cache_manager.paging.PagingCostModel`), and its confidence width is scaled by
the policy's ``nonresident_width``: a router that explores only within the cache
(POLAR: half the width off the cache) leaves exploring the others to the slow scale
(the planner's exploration bonus and POLAR+'s forced exploration), which brings an
adapter in for a whole epoch instead of paging it for one request. A policy that is
not cache-aware is what plain multiplexing does: pick the best arm, page it in.

:class:`CacheAwareRouter` applies the rule to UCB scores ``mean + alpha * width``
over arrays (the simulator); :class:`ArmPrices` gives it per arm name, as a
learner's ``select`` takes it (``penalties`` and ``width_scale``; the gateway).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np

from cache_manager.paging import PagingCostModel
from cache_manager.policies.base import ResidencyPolicy


@dataclass(frozen=True)
class PagingRule:
    """A policy's pricing of arms off the cache (``ResidencyPolicy.cache_aware`` and
    ``nonresident_width``)."""

    cache_aware: bool = True
    nonresident_width: float = 1.0  # width multiplier for arms resident nowhere

    @classmethod
    def of(cls, policy: ResidencyPolicy) -> PagingRule:
        return cls(policy.cache_aware, policy.nonresident_width)

    def terms(
        self, resident_anywhere: np.ndarray, penalty: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per arm: (amount subtracted from the score, multiplier of the width)."""
        if not self.cache_aware:
            return np.zeros(len(penalty)), np.ones(len(penalty))
        return (
            np.where(resident_anywhere, 0.0, penalty),
            np.where(resident_anywhere, 1.0, self.nonresident_width),
        )


@dataclass(frozen=True)
class CacheAwareRouter:
    """UCB over arrays of arms: ``mean + alpha * scale * width - penalty`` (the rule's terms)."""

    alpha: float = 1.0
    rule: PagingRule = field(default_factory=PagingRule)

    def scores(
        self,
        mean: np.ndarray,
        width: np.ndarray,
        resident_anywhere: np.ndarray,
        penalty: np.ndarray,
    ) -> np.ndarray:
        paging, scale = self.rule.terms(resident_anywhere, penalty)
        scores: np.ndarray = mean + (self.alpha * scale) * width - paging
        return scores

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


@dataclass(frozen=True)
class ArmTerms:
    """The rule's terms by arm name, only for arms whose score it changes."""

    penalties: dict[str, float] = field(default_factory=dict)
    width_scale: dict[str, float] = field(default_factory=dict)


class ArmPrices:
    """:class:`PagingRule` over named arms served through adapters (``arm -> adapter``)."""

    def __init__(
        self, rule: PagingRule, adapters: Mapping[str, str], paging: PagingCostModel
    ) -> None:
        self.rule = rule
        self.arms = tuple(adapters)
        self._adapters = tuple(adapters[a] for a in self.arms)
        self._penalty = paging.penalties(self._adapters)

    def reprice(self, paging: PagingCostModel) -> None:
        """Price paging with ``paging`` from now on (e.g. newly measured load times)."""
        self._penalty = paging.penalties(self._adapters)

    @property
    def active(self) -> bool:
        """Whether residency can change any arm's score."""
        return self.rule.cache_aware and bool(self.arms)

    def terms(self, held: Collection[str]) -> ArmTerms:
        """``held``: the adapters resident on some replica; every other adapter arm is
        priced as resident nowhere."""
        resident = np.array([a in held for a in self._adapters], dtype=bool)
        paging, scale = self.rule.terms(resident, self._penalty)
        changed = (paging != 0.0) | (scale != 1.0)
        return ArmTerms(
            penalties={
                a: float(p) for a, p, c in zip(self.arms, paging, changed, strict=True) if c
            },
            width_scale={
                a: float(s) for a, s, c in zip(self.arms, scale, changed, strict=True) if c
            },
        )
