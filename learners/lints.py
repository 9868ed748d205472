"""Linear Thompson sampling (Agrawal and Goyal, 2013), a Gaussian posterior per arm.

The posterior of ``theta_k`` is ``N(A_k^-1 b_k, v^2 A_k^-1)``, so the sampled
score of arm ``k`` for context ``x`` is exactly ``N(mean_k, (v width_k)^2)``
with ``width_k = sqrt(x^T A_k^-1 x)``: one normal draw per arm instead of a
d-dimensional one. The propensity of the chosen arm is the probability that its
draw is the largest: in closed form by quadrature (default) or by sampling.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from learners._choice import gaussian_argmax_probs, uniform_over
from learners.config import LinTSConfig
from learners.linear import LinearLearner


class LinTS(LinearLearner):
    kind: ClassVar[str] = "lints"
    config: LinTSConfig

    def __init__(self, config: LinTSConfig | None = None, dim: int = 64, weights: Any = None):
        super().__init__(config or LinTSConfig(), dim, weights)

    @classmethod
    def config_type(cls) -> Any:
        return LinTSConfig

    def _choose(
        self, est: np.ndarray, untried: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[int, list[float], list[float]]:
        mean, width = est[0], est[1]
        if untried is not None and untried.any():
            i, props = uniform_over(untried, rng)
            scores = np.where(untried, self.config.new_arm_score, mean)
            return i, props.tolist(), scores.tolist()
        sd = self.config.v * width
        scores = mean + sd * rng.standard_normal(len(mean))
        i = int(np.argmax(scores))
        if self.config.propensity == "closed_form":
            props = gaussian_argmax_probs(mean, sd)
        else:
            n = self.config.propensity_samples
            draws = mean[None, :] + sd[None, :] * rng.standard_normal((n, len(mean)))
            props = np.bincount(draws.argmax(axis=1), minlength=len(mean)) / n
            # the chosen arm was drawn as the winner once more: keep it positive
            props = (props * n + np.eye(len(mean))[i]) / (n + 1)
        return i, props.tolist(), scores.tolist()
