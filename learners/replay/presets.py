"""Named learner configs for ``banditctl simulate --learners``.

Hyperparameters were tuned on the ``*_train`` files of routerbench_zs only
(objective quality - 30 x cost, 4 seeds); see the README section
"Learners and offline replay". ``fixed:<model>`` names a fixed-arm baseline.
"""

from __future__ import annotations

from typing import Any

from learners.featurize import N_TASK_SLOTS, TASK_SLICE

# the intercept and the task one-hot of the featurizer's vector
TASK_VIEW = (0, *range(TASK_SLICE.start, TASK_SLICE.start + N_TASK_SLOTS))

PRESETS: dict[str, dict[str, Any]] = {
    "linucb": {"kind": "linucb", "alpha": 0.3},
    # Thompson sampling on the task block only: on *_train it beat the full
    # 64-d context (0.769 [0.765, 0.773] against 0.763 [0.714, 0.811], 4 seeds)
    "lints": {"kind": "lints", "v": 0.15, "ridge": 0.3, "context_indices": TASK_VIEW},
    "vw": {"kind": "vw", "exploration": "squarecb"},
    "greenserv": {"kind": "greenserv"},
    "random": {"kind": "random"},
    "epsilon_greedy": {"kind": "epsilon_greedy", "epsilon": 0.05},
}


def resolve(names: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        if name.startswith("fixed:"):
            out[name] = {"kind": "fixed", "arm": name.split(":", 1)[1]}
        elif name in PRESETS:
            out[name] = dict(PRESETS[name])
        else:
            raise ValueError(
                f"unknown learner {name!r}; choose from {sorted(PRESETS)} or fixed:<model>"
            )
    return out
