"""Named learner configs for ``banditctl simulate --learners``.

Hyperparameters were tuned on the ``*_train`` files of routerbench_zs only
(objective quality - 30 x cost, 4 seeds); see the README section
"Learners and offline replay". ``fixed:<model>`` names a fixed-arm baseline.
"""

from __future__ import annotations

from typing import Any

from learners.featurize import Featurizer


def presets(featurizer: Featurizer | None = None) -> dict[str, dict[str, Any]]:
    """The named configs for vectors made by ``featurizer`` (default: the default layout);
    the ones that read the task one-hot read ``featurizer``'s task slots."""
    feat = featurizer or Featurizer()
    # the intercept and the task one-hot of the featurizer's vector
    task_view = feat.task_view
    return {
        "linucb": {"kind": "linucb", "alpha": 0.3},
        # Thompson sampling on the task block, with an optimistic prior: every arm
        # starts at quality 1 (worth about three observations per task; the intercept's
        # prior is three times firmer, so what one task teaches carries to the others).
        # Chosen among 12 variants on *_train (10 seeds): 0.7690 [0.7642, 0.7738]
        # against 0.7602 [0.7500, 0.7704] for the earlier v=0.15, ridge=0.3 without a
        # prior, and 0.7607 for the best fixed model of *_train.
        "lints": {
            "kind": "lints",
            "v": 0.1,
            "ridge": 3.0,
            "context_indices": task_view,
            "prior_mean": (1.0, 0.0, 0.0, 0.0),
            "ridge_scale": (3.0,) + (1.0,) * feat.task_slots,
            "min_pulls": 0,
        },
        "vw": {"kind": "vw", "exploration": "squarecb"},
        "greenserv": {"kind": "greenserv", "context_indices": task_view},
        "random": {"kind": "random"},
        "epsilon_greedy": {"kind": "epsilon_greedy", "epsilon": 0.05},
    }


PRESETS = presets()  # for the default layout


def resolve(names: list[str], featurizer: Featurizer | None = None) -> dict[str, dict[str, Any]]:
    """The configs of ``names`` (presets or ``fixed:<model>``) for ``featurizer``'s vectors."""
    named = presets(featurizer)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        if name.startswith("fixed:"):
            out[name] = {"kind": "fixed", "arm": name.split(":", 1)[1]}
        elif name in named:
            out[name] = dict(named[name])
        else:
            raise ValueError(
                f"unknown learner {name!r}; choose from {sorted(PRESETS)} or fixed:<model>"
            )
    return out
