"""Parse ``quality=1,cost_usd=-30`` into a weight vector over ``REWARD_COMPONENTS``."""

from __future__ import annotations

import numpy as np

from learners.base import REWARD_COMPONENTS

ALIASES = {"cost": "cost_usd", "energy": "energy_j", "latency": "latency_ms"}


def parse_objective(text: str) -> np.ndarray:
    w = np.zeros(len(REWARD_COMPONENTS))
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = ALIASES.get(name.strip(), name.strip())
        if not sep or name not in REWARD_COMPONENTS:
            raise ValueError(
                f"bad objective term {part!r}: use NAME=WEIGHT, NAME in {REWARD_COMPONENTS}"
            )
        w[REWARD_COMPONENTS.index(name)] = float(value)
    if not w.any():
        raise ValueError("the objective has no non-zero weight")
    return w


def format_objective(w: np.ndarray) -> str:
    return " ".join(f"{v:+g}*{c}" for c, v in zip(REWARD_COMPONENTS, w, strict=True) if v)
