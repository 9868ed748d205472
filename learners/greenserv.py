"""A faithful baseline of GreenServ's router: LinUCB over task type only.

GreenServ routes with disjoint LinUCB (alpha 0.1, ridge 0.05) over a one-hot
task-type context with an intercept. Here the learner reads those positions
out of the shared featurizer's vector (``context_indices``: the intercept and
the task slots, see :mod:`learners.featurize`), so it is fed the same context
as every other learner and sees only what GreenServ would.
"""

from __future__ import annotations

from typing import Any, ClassVar

from learners.config import GreenServConfig
from learners.linucb import LinUCB


class GreenServ(LinUCB):
    kind: ClassVar[str] = "greenserv"
    config: GreenServConfig  # type: ignore[assignment]

    def __init__(self, config: GreenServConfig | None = None, dim: int = 64, weights: Any = None):
        super().__init__(config or GreenServConfig(), dim, weights)  # type: ignore[arg-type]

    @classmethod
    def config_type(cls) -> Any:
        return GreenServConfig
