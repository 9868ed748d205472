"""The hindsight oracle: POLAR's planner and router fed the truth.

It routes with the true expected rewards (zero width, through a fixed scorer) and
plans every epoch from the demand the scenario will actually send in that epoch,
with no exploration bonus and no churn charge. Its reward is the benchmark for
regret.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from typing_extensions import override

from cache_manager.plan import ResidencyPlan
from cache_manager.policies.base import PlanInputs
from cache_manager.policies.polar import PolarParams, PolarPolicy

# (start, end) -> (true cluster centroids (C, d), expected requests per cluster (C,))
HindsightDemand = Callable[[float, float], tuple[np.ndarray, np.ndarray]]


class OraclePolicy(PolarPolicy):
    def __init__(self, hindsight: HindsightDemand) -> None:
        super().__init__(PolarParams(bonus=0.0, churn_weight=0.0), name="oracle")
        self._hindsight = hindsight
        self._epoch_share = np.zeros(0)

    def _values(self, inputs: PlanInputs) -> tuple[np.ndarray, np.ndarray]:
        centroids, expected = self._hindsight(inputs.start, inputs.start + inputs.length_s)
        mean, _ = inputs.scorer.estimate(centroids)
        total = expected.sum()
        self._epoch_share = expected / total if total > 0 else expected
        return mean, expected

    @override
    def _refresh_gain(self, now: float) -> None:
        return None  # the truth does not change within an epoch

    def plan(self, inputs: PlanInputs, rng: np.random.Generator) -> ResidencyPlan | None:
        plan = super().plan(inputs, rng)
        self._live_share = lambda: self._epoch_share
        return plan
