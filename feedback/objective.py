"""The reward objective: a pure, versioned map from an outcome to a scalar.

``reward = sum_c weight[c] * norm_c(value[c])`` over the components
(quality, energy_j, latency_ms, cost_usd). ``norm_c`` is the identity unless
bounds ``(lo, hi)`` are given for ``c``, then ``(v - lo) / (hi - lo)`` clipped
to [0, 1]. Because the scalar is linear in the normalised vector, a learner
that keeps one model per component applies new weights without relearning:
it gets :meth:`Objective.normalize` as its reward vector and
:attr:`Objective.weights` as its coefficients.

Quality arrives late, as feedback. Once a decision's outcome is logged, the
rule (:meth:`Objective.resolve_quality`) says when and with what quality it is
credited; the learner's claim query (``feedback.repositories.reward_stream``)
applies the same rule in SQL, and a test on a real Postgres checks that the two
agree:

1. a request whose outcome is an error or timeout is ready at once with
   quality ``error_quality`` (default 0): a failed answer is a bad answer;
2. the first feedback row (lowest id) that arrived before the decision's
   deadline (``created_at + feedback_window_s``) gives the quality;
3. with no feedback by the deadline, the decision becomes ready at the
   deadline: ``missing_quality="prior"`` credits it with ``prior_quality``,
   ``"skip"`` consumes it without teaching the learner anything;
4. feedback that arrives after its decision was credited is stored and shown,
   never applied a second time.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from learners.base import REWARD_COMPONENTS

OBJECTIVE_VERSION = 1

CreditKind = Literal["feedback", "error", "prior", "skip"]


class Objective(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    weights: dict[str, float] = Field(
        default_factory=lambda: {
            "quality": 1.0,
            "energy_j": 0.0,
            "latency_ms": 0.0,
            "cost_usd": -30.0,
        }
    )
    bounds: dict[str, tuple[float, float]] = Field(default_factory=dict)
    feedback_window_s: float = Field(default=300.0, gt=0)
    missing_quality: Literal["prior", "skip"] = "prior"
    prior_quality: float = Field(default=0.5, ge=0.0, le=1.0)
    error_quality: float = Field(default=0.0, ge=0.0, le=1.0)

    @field_validator("weights", "bounds")
    @classmethod
    def _known_components(cls, v: dict[str, object]) -> dict[str, object]:
        unknown = sorted(set(v) - set(REWARD_COMPONENTS))
        if unknown:
            raise ValueError(
                f"unknown reward component(s) {unknown}; known: {list(REWARD_COMPONENTS)}"
            )
        return v

    @model_validator(mode="after")
    def _bounds_ordered(self) -> Objective:
        for name, (lo, hi) in self.bounds.items():
            if not hi > lo:
                raise ValueError(f"bounds[{name}]: upper bound must exceed lower bound")
        return self

    @classmethod
    def parse_weights(cls, spec: str, **kwargs: object) -> Objective:
        """Build from ``"quality=1,cost_usd=-30"``; unnamed components weigh 0."""
        weights = dict.fromkeys(REWARD_COMPONENTS, 0.0)
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"objective term {part!r} is not NAME=WEIGHT")
            if name.strip() not in weights:
                raise ValueError(
                    f"unknown reward component {name.strip()!r}; known: {list(REWARD_COMPONENTS)}"
                )
            weights[name.strip()] = float(value)
        return cls(weights=weights, **kwargs)  # type: ignore[arg-type]

    @property
    def weight_vector(self) -> np.ndarray:
        return np.array([self.weights.get(c, 0.0) for c in REWARD_COMPONENTS], dtype=np.float64)

    @property
    def version(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return f"v{OBJECTIVE_VERSION}-{hashlib.blake2s(blob, digest_size=4).hexdigest()}"

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        """Normalise reward vectors, shape (..., 4) ordered as REWARD_COMPONENTS."""
        out = np.array(raw, dtype=np.float64, copy=True)
        for i, c in enumerate(REWARD_COMPONENTS):
            if c in self.bounds:
                lo, hi = self.bounds[c]
                out[..., i] = np.clip((out[..., i] - lo) / (hi - lo), 0.0, 1.0)
        return out

    def scalarize(self, raw: np.ndarray) -> np.ndarray | float:
        value = self.normalize(raw) @ self.weight_vector
        return float(value) if np.ndim(value) == 0 else value

    def reward(self, quality: float, energy_j: float, latency_ms: float, cost_usd: float) -> float:
        return float(self.scalarize(np.array([quality, energy_j, latency_ms, cost_usd])))

    def resolve_quality(
        self,
        *,
        status: str,
        feedback_quality: float | None,
        age_s: float,
    ) -> tuple[CreditKind, float | None] | None:
        """Apply the rule above; ``None`` means not ready yet (keep waiting)."""
        if status != "ok":
            return "error", self.error_quality
        if feedback_quality is not None:
            return "feedback", feedback_quality
        if age_s >= self.feedback_window_s:
            if self.missing_quality == "prior":
                return "prior", self.prior_quality
            return "skip", None
        return None
