"""Warm start: a new policy whose prior is what an earlier policy version learned.

:func:`warm_start` builds a learner from an earlier one (a live learner, or
``load_learner(snapshot_state)``), under the same config or a new one of a linear kind
with the same context view (new hyperparameters keep the data). ``prior_weight``
scales the earlier version's data: each arm's ``A = P + w (A_old - P_old)`` and
``b = b0 + w (b_old - b0_old)``, where ``P``, ``b0`` are the new config's prior
(``ridge``, ``ridge_scale``, ``prior_mean``, ``metadata_prior``: per arm) and
``P_old``, ``b0_old`` the earlier one's. ``w = 1`` carries the data as it is; ``w < 1``
counts every earlier observation as ``w`` of one, so the posterior stays wider and the
new policy can still move away from it (``w = 0``: a fresh learner that knows the arms).

Pull counts and reward sums (read by ``min_pulls`` and summaries) are kept as they
were. Other learner kinds are copied as they are, and only with ``w = 1``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel

from learners.base import Learner
from learners.linear import LinearLearner
from learners.registry import load_learner, make_learner


def warm_start(
    earlier: Learner,
    config: BaseModel | dict[str, Any] | None = None,
    prior_weight: float = 1.0,
    weights: Any = None,
) -> Learner:
    """A new learner that starts from ``earlier``'s data, scaled by ``prior_weight``.

    ``config``: the new learner's config (default: ``earlier``'s); ``weights``: its
    objective weights (default: ``earlier``'s). Raises ``ValueError`` for a prior
    weight outside [0, 1], or one below 1 (or a new config) for a non-linear learner,
    or a config whose context view differs from ``earlier``'s.
    """
    w = float(prior_weight)
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"prior_weight must lie in [0, 1], got {prior_weight}")
    if not isinstance(earlier, LinearLearner):
        if w != 1.0 or config is not None:
            raise ValueError(
                f"a prior weight or a new config applies to linear learners only, "
                f"not {earlier.kind!r}"
            )
        copy = load_learner(earlier.state_bytes())
        if weights is not None:
            copy.set_weights(weights)
        return copy
    cfg: Any = earlier.config if config is None else config
    new = make_learner(cfg, earlier.full_dim, earlier.weights if weights is None else weights)
    if not isinstance(new, LinearLearner):
        raise ValueError(f"a {earlier.kind!r} state cannot start a {new.kind!r} learner")
    old_cols = None if earlier._cols is None else earlier._cols.tolist()
    new_cols = None if new._cols is None else new._cols.tolist()
    if old_cols != new_cols:
        raise ValueError("the new config's context_indices differ from the earlier learner's")
    old, store = earlier.store, new.store
    A_old, b_old = old.A, old.b  # flushed
    d, C = store.dim, store.b0.shape[0]
    for k, arm in enumerate(old.arms):
        j = store.add(arm)  # under the new config's prior for this arm (flat or metadata)
        P, b0 = np.diag(store.arm_prior_diag[j]), store.arm_b0[j]
        A = P + w * (A_old[k] - np.diag(old.arm_prior_diag[k]))
        b = b0 + w * (b_old[k] - old.arm_b0[k])
        A_inv = np.linalg.inv(A)
        store._A[j] = A
        store._b[j] = b
        store.M[j, :d] = A_inv
        store.M[j, d : d + C] = b @ A_inv  # A_inv is symmetric
        store.M[j, d + C] = store.w @ store.M[j, d : d + C]
        store.pulls[j] = old.pulls[k]
        store._reward_sum[j] = old.reward_sum[k]
    new._idx_cache.clear()
    new._refresh_tried()
    return new
