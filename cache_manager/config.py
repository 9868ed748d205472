"""Validated, immutable configuration of the cache policies.

One pydantic model per policy, joined in :data:`CachePolicyConfig`, a discriminated
union on ``kind``; :data:`POLICY_REGISTRY` maps each kind to its model. ``build``
returns the policy and its epoch schedule (``None``: purely reactive).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from cache_manager.epochs import DoublingEpochs, EpochSchedule, FixedEpochs
from cache_manager.policies.base import ResidencyPolicy
from cache_manager.policies.baselines import LfuPolicy, LruPolicy, StaticTopKPolicy
from cache_manager.policies.oracle import HindsightDemand, OraclePolicy
from cache_manager.policies.polar import PolarParams, PolarPolicy


@dataclass(frozen=True)
class BuiltPolicy:
    policy: ResidencyPolicy
    schedule: EpochSchedule | None
    needs_truth: bool = False  # routes with the true rewards (the oracle)


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PolarConfig(_Config):
    kind: Literal["polar"] = "polar"
    epoch_s: float = Field(default=10.0, gt=0)
    bonus: float = Field(default=1.0, ge=0)
    churn_weight: float = Field(default=1.0, ge=0)

    def build(self, hindsight: HindsightDemand | None = None) -> BuiltPolicy:
        params = PolarParams(bonus=self.bonus, churn_weight=self.churn_weight)
        return BuiltPolicy(PolarPolicy(params, name=self.kind), FixedEpochs(self.epoch_s))


class PolarPlusConfig(_Config):
    kind: Literal["polar+"] = "polar+"
    initial_epoch_s: float = Field(default=2.5, gt=0)
    factor: float = Field(default=2.0, ge=1)
    max_epoch_s: float | None = Field(
        default=40.0, gt=0, description="cap on the doubling; None: uncapped"
    )
    bonus: float = Field(default=1.0, ge=0)
    churn_weight: float = Field(default=1.0, ge=0)
    explore_coef: float = Field(default=1.0, ge=0)
    drift_tv: float | None = Field(
        default=0.03,
        gt=0,
        description="demand drift (total variation) an epoch may span; None: doubling only"
        " (see cache_manager.policies.polar)",
    )

    def build(self, hindsight: HindsightDemand | None = None) -> BuiltPolicy:
        params = PolarParams(
            bonus=self.bonus,
            churn_weight=self.churn_weight,
            forced_exploration=self.explore_coef > 0,
            explore_coef=self.explore_coef,
            drift_tv=self.drift_tv,
        )
        schedule = DoublingEpochs(self.initial_epoch_s, self.factor, self.max_epoch_s)
        return BuiltPolicy(PolarPolicy(params, name=self.kind), schedule)


class LruConfig(_Config):
    kind: Literal["lru"] = "lru"

    def build(self, hindsight: HindsightDemand | None = None) -> BuiltPolicy:
        return BuiltPolicy(LruPolicy(), None)


class LfuConfig(_Config):
    kind: Literal["lfu"] = "lfu"

    def build(self, hindsight: HindsightDemand | None = None) -> BuiltPolicy:
        return BuiltPolicy(LfuPolicy(), None)


class StaticConfig(_Config):
    kind: Literal["static"] = "static"
    warmup_s: float = Field(default=10.0, gt=0)

    def build(self, hindsight: HindsightDemand | None = None) -> BuiltPolicy:
        return BuiltPolicy(StaticTopKPolicy(), FixedEpochs(self.warmup_s))


class OracleConfig(_Config):
    kind: Literal["oracle"] = "oracle"
    epoch_s: float = Field(default=10.0, gt=0)

    def build(self, hindsight: HindsightDemand | None = None) -> BuiltPolicy:
        if hindsight is None:
            raise ValueError("the oracle needs the scenario's hindsight demand")
        return BuiltPolicy(OraclePolicy(hindsight), FixedEpochs(self.epoch_s), needs_truth=True)


CachePolicyConfig = Annotated[
    PolarConfig | PolarPlusConfig | LruConfig | LfuConfig | StaticConfig | OracleConfig,
    Field(discriminator="kind"),
]

POLICY_REGISTRY: dict[str, type[_Config]] = {
    cls.model_fields["kind"].default: cls
    for cls in (PolarConfig, PolarPlusConfig, LruConfig, LfuConfig, StaticConfig, OracleConfig)
}

_ADAPTER: TypeAdapter[CachePolicyConfig] = TypeAdapter(CachePolicyConfig)


def parse_policy(data: dict[str, object] | str) -> CachePolicyConfig:
    """A policy config from a mapping with ``kind``, or just its name."""
    return _ADAPTER.validate_python({"kind": data} if isinstance(data, str) else data)
