"""Validated, immutable learner configs, joined in a discriminated union on ``kind``.

``LearnerConfig`` is what the project's config file holds under a learner key;
:func:`learners.make_learner` turns one into a learner. Parse raw data with
:func:`parse_config` (a dict, or a JSON string).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from learners.featurize import N_TASK_SLOTS, Featurizer
from learners.metadata_prior import MetadataPriorConfig


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _LinearConfig(_Config):
    """Shared by the linear learners: one ridge model per arm and reward component."""

    ridge: float = Field(default=1.0, gt=0, description="prior precision (lambda) of each arm")
    discount: float = Field(default=1.0, gt=0, le=1, description="per-update forgetting factor")
    window: int | None = Field(default=None, ge=1, description="keep each arm's last N events")
    min_pulls: int = Field(default=1, ge=0, description="updates before an arm is scored")
    new_arm_score: float = Field(default=1e6, description="score of an arm under min_pulls")
    prior_mean: tuple[float, float, float, float] | None = Field(
        default=None,
        description=(
            "prior mean of each reward component (quality, energy_j, latency_ms, cost_usd) "
            "for a new arm, on the context's first position (the intercept); default 0"
        ),
    )
    ridge_scale: tuple[float, ...] | None = Field(
        default=None,
        min_length=1,
        description=(
            "per context position (after context_indices), a factor on ridge: a larger one "
            "shrinks that coefficient harder (e.g. task deviations from an arm's intercept)"
        ),
    )
    context_indices: tuple[int, ...] | None = Field(
        default=None,
        min_length=1,
        description="use only these positions of the context vector (default: all)",
    )
    metadata_prior: MetadataPriorConfig | None = Field(
        default=None,
        description=(
            "a new arm's prior mean from its metadata (price, size), held with `strength` "
            "pseudo-observations (learners.metadata_prior); arms not listed keep the flat prior"
        ),
    )

    @model_validator(mode="after")
    def _one_forgetting(self) -> _LinearConfig:
        if self.window is not None and self.discount < 1:
            raise ValueError("choose one forgetting scheme: discount or window")
        if self.ridge_scale is not None and min(self.ridge_scale) <= 0:
            raise ValueError("ridge_scale entries must be positive")
        return self


class LinUCBConfig(_LinearConfig):
    kind: Literal["linucb"] = "linucb"
    alpha: float = Field(default=1.0, ge=0, description="width of the confidence bonus")


class LinTSConfig(_LinearConfig):
    kind: Literal["lints"] = "lints"
    v: float = Field(default=0.5, ge=0, description="posterior scale")
    propensity: Literal["closed_form", "sampled"] = "closed_form"
    propensity_samples: int = Field(default=256, ge=1)


class GreenServConfig(_LinearConfig):
    """GreenServ's router: LinUCB over a one-hot task type plus an intercept."""

    kind: Literal["greenserv"] = "greenserv"
    alpha: float = Field(default=0.1, ge=0)
    ridge: float = Field(default=0.05, gt=0)
    context_indices: tuple[int, ...] | None = Field(
        # the default layout's Featurizer().task_view; for_layout fits it to another
        default=(0, *range(1, 1 + N_TASK_SLOTS)),
        min_length=1,
        description="positions of the intercept and task one-hot in the featurizer's vector "
        "(default: the featurizer's own, see for_layout)",
    )


class VWConfig(_Config):
    """Vowpal Wabbit ``--cb_explore_adf``; rewards are scalarized when learned."""

    kind: Literal["vw"] = "vw"
    exploration: Literal["squarecb", "epsilon", "bag", "cover", "softmax", "regcb", "first"] = (
        "squarecb"
    )
    gamma_scale: float = Field(default=10.0, gt=0, description="squarecb greediness")
    epsilon: float = Field(default=0.05, ge=0, le=1)
    bag: int = Field(default=5, ge=1)
    cover: int = Field(default=3, ge=1)
    lambda_: float = Field(default=1.0, alias="lambda", description="softmax inverse temperature")
    first: int = Field(default=11, ge=1)
    learning_rate: float = Field(default=0.5, gt=0)
    interactions: tuple[str, ...] = ("sa",)
    extra_args: tuple[str, ...] = ()
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class RandomConfig(_Config):
    kind: Literal["random"] = "random"


class FixedConfig(_Config):
    kind: Literal["fixed"] = "fixed"
    arm: str


class EpsilonGreedyConfig(_Config):
    kind: Literal["epsilon_greedy"] = "epsilon_greedy"
    epsilon: float = Field(default=0.1, ge=0, le=1)


LearnerConfig = Annotated[
    LinUCBConfig
    | LinTSConfig
    | GreenServConfig
    | VWConfig
    | RandomConfig
    | FixedConfig
    | EpsilonGreedyConfig,
    Field(discriminator="kind"),
]

_ADAPTER: TypeAdapter[Any] = TypeAdapter(LearnerConfig)


def for_layout(config: dict[str, Any] | str | BaseModel, featurizer: Featurizer) -> Any:
    """``config`` (parsed) fitted to ``featurizer``'s layout: a ``greenserv`` config that
    leaves ``context_indices`` at its default reads that featurizer's intercept and task
    slots (``Featurizer.task_view``). Any other config is returned as parsed."""
    cfg = parse_config(config)
    if (
        isinstance(cfg, GreenServConfig)
        and "context_indices" not in cfg.model_fields_set
        and cfg.context_indices != featurizer.task_view
    ):
        return cfg.model_copy(update={"context_indices": featurizer.task_view})
    return cfg


def parse_config(data: dict[str, Any] | str | BaseModel) -> Any:
    """Validate a learner config from a dict, a JSON string, or a config model."""
    if isinstance(data, BaseModel):
        return data
    if isinstance(data, str):
        return _ADAPTER.validate_json(data)
    return _ADAPTER.validate_python(data)
