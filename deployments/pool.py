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


def pool_name(model: str) -> str:
    """The pool deployment's name (and residency replica id) for a base model."""
    return "pool-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in model)


def make_backend(arm: ArmConfig, config: BanditConfig) -> Backend:
    if arm.backend == "replay":
        from deployments.backends.replay import ReplayBackend
        from learners.replay.dataset import dataset_for

        r = config.replay
        ds = dataset_for(r.dataset, r.synthetic_rows, r.seed)
        return ReplayBackend(ds, arm.name if arm.name in ds.models else arm.model, r.latency_scale)
    if arm.backend == "openai":
        from deployments.backends.openai_upstream import OpenAIUpstream

        return OpenAIUpstream(arm)
    raise ValueError(
        f"arm {arm.name!r}: backend {arm.backend!r} is not built yet; "
        "use backend: openai with base_url pointing at a vLLM server instead"
    )


@serve.deployment(ray_actor_options={"num_cpus": 0})
class ModelPool:
    """Serves the arms of one base model; LoRA adapters are loaded for real
    (``cache_manager.fake_adapter`` here: allocate and copy the weights).

    Under ``cache.policy: lru`` adapters go through ``@serve.multiplexed`` (Serve's
    own LRU, ``slots_per_replica`` per replica); under a planned policy (polar,
    polar+) through the replica's :class:`AdapterRegistry`, which the cache
    controller drives with :meth:`prefetch` and :meth:`evict`.
    """

    def __init__(self, config: BanditConfig, model: str) -> None:
        import numpy as np

        from cache_manager.fake_adapter import FakeAdapterStore
        from deployments.adapters import AdapterRegistry

        self.model = model
        self.arms = {a.name: a for a in config.arms if a.model == model}
        self.backends = {name: make_backend(a, config) for name, a in self.arms.items()}
        self.cache = config.cache
        self.planned = config.cache_planned
        self._store = FakeAdapterStore(specs={}, rng=np.random.default_rng(0))
        self.registry = AdapterRegistry(config.cache.slots_per_replica, self._load)
        self.mux_loaded: dict[str, float] = {}  # what Serve's multiplexing LRU holds now

        async def load_for_serve(adapter: str) -> Any:  # a plain function: Serve keeps its
            return await self._mux_load(adapter)  # LRU on the function object

        self._mux = serve.multiplexed(max_num_models_per_replica=config.cache.slots_per_replica)(
            load_for_serve
        )

    def _load(self, adapter: str) -> tuple[Any, float]:
        from cache_manager.fake_adapter import FakeAdapterSpec

        self._store.specs.setdefault(
            adapter, FakeAdapterSpec(adapter, rank=self.cache.adapter_rank)
        )
        return self._store.load(adapter)

    async def _mux_load(self, adapter: str) -> Any:
        loaded, seconds = self._load(adapter)
        self.registry.stats.page_ins += 1
        self.registry.stats.load_s += seconds
        self.mux_loaded[adapter] = seconds
        return _MuxResident(self, adapter, loaded)

    async def _acquire(self, adapter: str) -> None:
        if not self.planned:
            before = self.registry.stats.page_ins
            await self._mux(adapter)
            if self.registry.stats.page_ins == before:
                self.registry.stats.hits += 1
            else:
                self.registry.stats.misses += 1
        else:
            self.registry.acquire(adapter)

    async def generate(self, arm: str, body: dict[str, Any]) -> dict[str, Any]:
        if arm not in self.backends:
            raise KeyError(f"pool {self.model!r} does not serve arm {arm!r}")
        adapter = serve.get_multiplexed_model_id() or self.arms[arm].adapter
        t0 = time.perf_counter()
        if adapter:
            await self._acquire(adapter)
        gen = (await self.backends[arm].generate(body)).as_dict()
        gen["latency_ms"] = max(gen["latency_ms"], (time.perf_counter() - t0) * 1000.0)
        return gen

    # -- residency, for the cache controller and the dashboard ---------------

    def resident(self) -> tuple[str, ...]:
        if not self.planned:
            return tuple(self.mux_loaded)
        return self.registry.resident()

    def prefetch(self, adapter: str) -> float:
        return self.registry.prefetch(adapter)

    def evict(self, adapter: str) -> None:
        self.registry.evict(adapter)

    def residency_stats(self) -> dict[str, Any]:
        s = self.registry.stats
        return {
            "policy": self.cache.policy.kind,
            "capacity": self.registry.capacity,
            "resident": list(self.resident()),
            "hits": s.hits,
            "misses": s.misses,
            "page_ins": s.page_ins,
            "load_s": s.load_s,
        }


class _MuxResident:
    """Held by Serve's multiplexing LRU; when it drops the entry, so does our view."""

    def __init__(self, pool: ModelPool, name: str, loaded: Any) -> None:
        self.pool, self.name, self.loaded = pool, name, loaded

    def __del__(self) -> None:  # may run twice under Serve: pop is idempotent
        self.pool.mux_loaded.pop(self.name, None)
