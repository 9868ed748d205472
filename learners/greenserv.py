"""A faithful baseline of GreenServ's router: LinUCB over task type only.

GreenServ routes with disjoint LinUCB (alpha 0.1, ridge 0.05) over a one-hot
task-type context with an intercept. Here the learner reads those positions
out of the shared featurizer's vector (``context_indices``: the intercept and
the task slots, see :mod:`learners.featurize`), so it is fed the same context
as every other learner and sees only what GreenServ would.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from learners.config import GreenServConfig
from learners.linucb import LinUCB


class GreenServ(LinUCB):
    kind: ClassVar[str] = "greenserv"
    config: GreenServConfig  # type: ignore[assignment]

    def __init__(self, config: GreenServConfig | None = None, dim: int = 64, weights: Any = None):
        cfg = config or GreenServConfig()
        if max(cfg.context_indices) >= dim:
            raise ValueError(f"context_indices exceed the context dimension {dim}")
        self.full_dim = int(dim)
        self._cols = np.array(cfg.context_indices, dtype=np.intp)
        super().__init__(cfg, len(cfg.context_indices), weights)  # type: ignore[arg-type]
        self.config = cfg

    @classmethod
    def config_type(cls) -> Any:
        return GreenServConfig

    def _context(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64)[self._cols]

    def state_bytes(self) -> bytes:
        # store the full context dimension so that from_bytes rebuilds the same view
        inner, self.dim = self.dim, self.full_dim
        try:
            return super().state_bytes()
        finally:
            self.dim = inner
