"""ModelPool: one Ray Serve deployment per base model, serving its arms.

LoRA adapters go through ``@serve.multiplexed`` (requests carry the adapter as
``multiplexed_model_id``); each replica keeps its own registry of loaded
adapters (Serve has no public call that lists or evicts them), reported by
:meth:`ModelPool.resident_adapters`.
"""

from __future__ import annotations

import time
from typing import Any

from ray import serve

from controlplane.config import ArmConfig, BanditConfig
from deployments.backends import Backend


def make_backend(arm: ArmConfig, config: BanditConfig) -> Backend:
    if arm.backend == "replay":
        from deployments.backends.replay import ReplayBackend, dataset_for

        r = config.replay
        ds = dataset_for(r.dataset, r.synthetic_rows, r.seed)
        return ReplayBackend(ds, arm.name if arm.name in ds.models else arm.model, r.latency_scale)
    if arm.backend == "openai":
        from deployments.backends.openai_upstream import OpenAIUpstream

        return OpenAIUpstream(arm)
    raise ValueError(
        f"arm {arm.name!r}: backend {arm.backend!r} needs the optional vllm extra "
        "(Ray Serve LLM on GPUs); see the README"
    )


@serve.deployment(ray_actor_options={"num_cpus": 0})
class ModelPool:
    def __init__(self, config: BanditConfig, model: str) -> None:
        self.model = model
        self.arms = {a.name: a for a in config.arms if a.model == model}
        self.backends = {name: make_backend(a, config) for name, a in self.arms.items()}
        self.loaded: dict[str, float] = {}  # adapter -> load seconds (this replica's registry)
        self.page_ins = 0
        import numpy as np

        from cache_manager.fake_adapter import FakeAdapterStore

        self._store = FakeAdapterStore(specs={}, rng=np.random.default_rng(0))

    @serve.multiplexed(max_num_models_per_replica=4)
    async def load_adapter(self, adapter: str) -> Any:
        from cache_manager.fake_adapter import FakeAdapterSpec

        self._store.specs.setdefault(adapter, FakeAdapterSpec(adapter, rank=8))
        loaded, seconds = self._store.load(adapter)
        self.loaded[adapter] = seconds
        self.page_ins += 1
        return _Resident(self, adapter, loaded)

    async def generate(self, arm: str, body: dict[str, Any]) -> dict[str, Any]:
        if arm not in self.backends:
            raise KeyError(f"pool {self.model!r} does not serve arm {arm!r}")
        adapter = serve.get_multiplexed_model_id()
        t0 = time.perf_counter()
        if adapter:
            await self.load_adapter(adapter)
        gen = (await self.backends[arm].generate(body)).as_dict()
        gen["latency_ms"] = max(gen["latency_ms"], (time.perf_counter() - t0) * 1000.0)
        return gen

    def resident_adapters(self) -> dict[str, Any]:
        return {"adapters": sorted(self.loaded), "page_ins": self.page_ins}


class _Resident:
    """Registry entry; Serve's LRU drops it, which removes it from the registry."""

    def __init__(self, pool: ModelPool, name: str, loaded: Any) -> None:
        self.pool, self.name, self.loaded = pool, name, loaded

    def __del__(self) -> None:  # may run twice under Serve: pop is idempotent
        self.pool.loaded.pop(self.name, None)
