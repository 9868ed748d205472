"""Validated, immutable configuration of the cache policies and the controller around them.

One pydantic model per policy, joined in :data:`CachePolicyConfig`, a discriminated
union on ``kind``; :data:`POLICY_REGISTRY` maps each kind to its model. ``build``
returns the policy, its epoch schedule (``None``: purely reactive) and the router's
paging rule. :class:`CacheConfig` adds what a controller needs besides the policy
(slots, demand clusters, paging price, tick): the running system's ``cache:`` section
and, built from a scenario, the simulator's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator
from typing_extensions import override

from cache_manager.demand import DemandTracker
from cache_manager.epochs import DoublingEpochs, EpochSchedule, FixedEpochs
from cache_manager.paging import PagingCostModel
from cache_manager.policies.base import ResidencyPolicy
from cache_manager.policies.baselines import LfuPolicy, LruPolicy, StaticTopKPolicy
from cache_manager.policies.oracle import HindsightDemand, OraclePolicy
from cache_manager.policies.polar import PolarParams, PolarPolicy
from cache_manager.router import PagingRule


@dataclass(frozen=True)
class BuiltPolicy:
    policy: ResidencyPolicy
    schedule: EpochSchedule | None
    needs_truth: bool = False  # routes with the true rewards (the oracle)

    @property
    def rule(self) -> PagingRule:
        """How the router prices arms whose adapter is resident nowhere under this policy."""
        return PagingRule.of(self.policy)


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def build(self, hindsight: HindsightDemand | None = None) -> BuiltPolicy:
        """The policy and its epoch schedule; ``hindsight``: the oracle's true demand."""
        raise NotImplementedError


class PolarConfig(_Config):
    kind: Literal["polar"] = "polar"
    epoch_s: float = Field(default=10.0, gt=0)
    bonus: float = Field(default=1.0, ge=0)
    churn_weight: float = Field(default=1.0, ge=0)

    @override
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

    @override
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

    @override
    def build(self, hindsight: HindsightDemand | None = None) -> BuiltPolicy:
        return BuiltPolicy(LruPolicy(), None)


class LfuConfig(_Config):
    kind: Literal["lfu"] = "lfu"

    @override
    def build(self, hindsight: HindsightDemand | None = None) -> BuiltPolicy:
        return BuiltPolicy(LfuPolicy(), None)


class StaticConfig(_Config):
    kind: Literal["static"] = "static"
    warmup_s: float = Field(default=10.0, gt=0)

    @override
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


class CacheConfig(_Config):
    """Adapter residency: the policy, and the controller's knobs around it.

    ``policy``: a mapping with ``kind`` or just the kind's name (``polar``).
    ``slots_per_replica``: adapters a replica holds. ``clusters`` and
    ``demand_half_life_s``: the demand tracker (context clusters, forgetting).
    ``adapter_rank``: the LoRA rank of the (fake) adapters, which sets their size
    and so their load time; ``latency_weight_per_s``: the reward a second of paging
    costs. ``tick_s``: how often a running controller observes and ticks.
    """

    policy: CachePolicyConfig = Field(default_factory=LruConfig)
    slots_per_replica: int = Field(default=4, ge=1)
    tick_s: float = Field(default=0.2, gt=0)
    clusters: int = Field(default=4, ge=1)
    demand_half_life_s: float = Field(default=60.0, gt=0)
    adapter_rank: int = Field(default=8, ge=1)
    latency_weight_per_s: float = Field(
        default=0.5, ge=0, description="reward lost per second of paging"
    )

    @field_validator("policy", mode="before")
    @classmethod
    def _named(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value

    def demand_tracker(self, dim: int, rng: np.random.Generator) -> DemandTracker:
        return DemandTracker(self.clusters, dim, self.demand_half_life_s, rng)

    def paging_model(
        self, adapters: Iterable[str], measured_s: Mapping[str, float] | None = None
    ) -> PagingCostModel:
        """Paging prices of ``adapters``: the median load seconds the replicas measured
        (``measured_s``, from ``adapter_load_times``) where there is one, else the
        estimate for a fake adapter of rank ``adapter_rank``."""
        ranks = dict.fromkeys(adapters, self.adapter_rank)
        estimated = PagingCostModel.from_ranks(ranks, self.latency_weight_per_s)
        if not measured_s:
            return estimated
        load_s = {
            a: float(measured_s[a]) if a in measured_s else estimated.median_s(a) for a in ranks
        }
        return PagingCostModel.from_measured(load_s, self.latency_weight_per_s, estimated.sigma_log)
