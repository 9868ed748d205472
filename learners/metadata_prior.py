"""Arm-metadata priors: a new arm's expected reward from what is known about the model.

An arm with no history (a fresh learner, or a model added to a running deployment)
starts, under the flat prior, at the same mean as every other arm (the config's
``prior_mean``, default 0). With a metadata prior, an arm whose metadata is known
starts instead at:

- each reward component its metadata names (``quality``, ``energy_j``,
  ``latency_ms``, ``cost_usd``): that value, e.g. its price per request as the
  prior mean of ``cost_usd``;
- quality, when its metadata does not give it and holds every field of the quality
  model: ``sigmoid(intercept + coef . log(fields))``, logistic in the log of the
  model's ``features`` (e.g. ``cost_usd``, or a parameter count ``size_b``), fitted
  offline across models (:func:`fit_quality_model`, :func:`fit_metadata_prior`) or
  written in the config;
- every other component: the flat prior mean;

held with ``strength`` pseudo-observations: the intercept's prior precision
(``ridge * ridge_scale[0]``) is raised by ``strength``, exactly what ``strength``
observations of those values at the intercept-only context would add. The learner
then learns from there. An arm not listed keeps the flat prior.

The context's first position (after ``context_indices``) must be the intercept,
as for ``prior_mean``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from learners.base import N_COMPONENTS, REWARD_COMPONENTS

QUALITY_CLIP = 0.01  # a model's mean quality is clipped to [0.01, 0.99] before its logit

ArmPrior = Callable[[str], tuple[np.ndarray, float] | None]


class MetadataPriorConfig(BaseModel):
    """A quality model over arm metadata, its strength, and each arm's metadata."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    features: tuple[str, ...] = Field(
        default=(),
        description="metadata fields of the quality model, each entering as its natural log",
    )
    intercept: float = Field(default=0.0, description="quality model: logit at log(fields) = 0")
    coef: tuple[float, ...] = Field(default=(), description="one coefficient per feature")
    strength: float = Field(
        default=1.0, ge=0, description="pseudo-observations the metadata prior is worth"
    )
    arms: dict[str, dict[str, float]] = Field(
        description="per arm: metadata fields (the features, and reward components' prior means)"
    )

    @field_validator("intercept", "coef", "strength")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        values = value if isinstance(value, tuple) else (value,)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"must be finite, got {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MetadataPriorConfig:
        if len(self.coef) != len(self.features):
            raise ValueError(
                f"coef has {len(self.coef)} entries for {len(self.features)} features "
                f"{list(self.features)}: one coefficient per feature"
            )
        if len(set(self.features)) != len(self.features):
            raise ValueError(f"features repeat a field: {list(self.features)}")
        if not self.arms:
            raise ValueError("arms is empty: give at least one arm's metadata")
        known = set(self.features) | set(REWARD_COMPONENTS)
        for arm, meta in self.arms.items():
            for name, value in meta.items():
                where = f"arms[{arm!r}].{name}"
                if name not in known:
                    raise ValueError(
                        f"{where}: not a feature of the quality model {list(self.features)} "
                        f"nor a reward component {list(REWARD_COMPONENTS)}"
                    )
                if not math.isfinite(value):
                    raise ValueError(f"{where}: must be finite, got {value}")
                if name in self.features and value <= 0:
                    raise ValueError(
                        f"{where}: a feature enters as its log: must be > 0, got {value}"
                    )
                if name == "quality" and not 0.0 <= value <= 1.0:
                    raise ValueError(f"{where}: quality must lie in [0, 1], got {value}")
        return self

    def __hash__(self) -> int:  # frozen like every learner config, though ``arms`` is a dict
        return hash(self.model_dump_json())

    def quality(self, arm: str) -> float | None:
        """The arm's prior quality: given, or from the model; None without the fields."""
        meta = self.arms.get(arm, {})
        if "quality" in meta:
            return float(meta["quality"])
        if not self.features or any(f not in meta for f in self.features):
            return None
        z = self.intercept + sum(
            c * math.log(meta[f]) for f, c in zip(self.features, self.coef, strict=True)
        )
        return 1.0 / (1.0 + math.exp(-z))

    def means(self, arm: str, flat: np.ndarray) -> np.ndarray | None:
        """The arm's prior mean reward vector (``flat`` where its metadata says nothing),
        or None when it says nothing at all (the arm keeps the flat prior)."""
        meta = self.arms.get(arm)
        if not meta:
            return None
        out = np.array(flat, dtype=np.float64)
        q = self.quality(arm)
        if q is not None:
            out[0] = q
        for c, name in enumerate(REWARD_COMPONENTS[1:], start=1):
            if name in meta:
                out[c] = meta[name]
        if q is None and not any(name in meta for name in REWARD_COMPONENTS[1:]):
            return None
        return out


def arm_prior(
    config: MetadataPriorConfig | None, flat: Sequence[float] | np.ndarray
) -> ArmPrior | None:
    """What :class:`learners.linear.RidgeArms` asks of each new arm: its prior mean
    vector and strength, or None for the flat prior. ``flat``: the flat prior mean
    of each component."""
    if config is None:
        return None
    strength = float(config.strength)
    flat_means = np.asarray(flat, dtype=np.float64).reshape(N_COMPONENTS)

    def prior(arm: str) -> tuple[np.ndarray, float] | None:
        means = config.means(arm, flat_means)
        return None if means is None else (means, strength)

    return prior


def fit_quality_model(
    metadata: Mapping[str, Mapping[str, float]],
    quality: Mapping[str, float],
    features: Sequence[str],
) -> tuple[float, tuple[float, ...]]:
    """Least squares of each arm's logit mean quality (clipped to [0.01, 0.99]) on the
    log of its ``features``: ``(intercept, coef)``. Arms lacking a feature are left out;
    raises ``ValueError`` when fewer than ``len(features) + 1`` arms remain or their
    features are collinear."""
    if not features:
        raise ValueError("a quality model needs at least one feature")
    arms = [a for a in quality if all(f in metadata.get(a, {}) for f in features)]
    if len(arms) < len(features) + 1:
        raise ValueError(
            f"{len(arms)} arms have every feature {list(features)}: the quality model needs "
            f"at least {len(features) + 1}"
        )
    for a in arms:
        for f in features:
            if not metadata[a][f] > 0:
                raise ValueError(f"{a}: feature {f} enters as its log: must be > 0")
    X = np.array([[1.0] + [math.log(metadata[a][f]) for f in features] for a in arms])
    q = np.clip([quality[a] for a in arms], QUALITY_CLIP, 1.0 - QUALITY_CLIP)
    y = np.log(q / (1.0 - q))
    beta, _, rank, _ = np.linalg.lstsq(X, y, rcond=None)
    if rank < X.shape[1]:
        raise ValueError(
            f"the arms' log {list(features)} are collinear (or constant): no quality model"
        )
    return float(beta[0]), tuple(float(b) for b in beta[1:])


def fit_metadata_prior(
    models: Sequence[str],
    quality: np.ndarray,
    cost_usd: np.ndarray,
    strength: float = 1.0,
) -> MetadataPriorConfig:
    """A metadata prior from a full-information data set: each model's metadata is its
    price, its mean cost per request (``cost_usd``), and its prior quality a logistic
    model in the log of that price, fitted across the models' mean qualities.
    ``quality``, ``cost_usd``: (n, K) with models in ``models``' order."""
    q = np.asarray(quality, dtype=np.float64).mean(axis=0)
    c = np.asarray(cost_usd, dtype=np.float64).mean(axis=0)
    metadata = {m: {"cost_usd": float(v)} for m, v in zip(models, c, strict=True) if v > 0}
    free = [m for m, v in zip(models, c, strict=True) if not v > 0]
    if free:
        raise ValueError(f"models without a price (mean cost 0): {', '.join(free)}")
    intercept, coef = fit_quality_model(
        metadata, dict(zip(models, q.tolist(), strict=True)), ("cost_usd",)
    )
    return MetadataPriorConfig(
        features=("cost_usd",), intercept=intercept, coef=coef, strength=strength, arms=metadata
    )
