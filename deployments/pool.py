"""ModelPool: one Ray Serve deployment per base model, serving its arms.

The replica's work is plain Python in :class:`PoolCore` (backends behind
:class:`deployments.backends.Backend`, adapter residency in
:class:`deployments.adapter_slots.AdapterSlots`), testable without Ray; the
Serve class only wires it: ``@serve.multiplexed`` for ``cache.policy: lru``,
the request's ``multiplexed_model_id``, and the streaming method.

LoRA adapters go through ``@serve.multiplexed`` (requests carry the adapter as
``multiplexed_model_id``) or, under a planned policy, the replica's own
:class:`AdapterRegistry`; either way a load is ``backend.load_adapter`` (its
measured seconds are recorded), an eviction ``backend.unload_adapter``, and
what is resident is what the backends hold (Serve has no public call that lists
or evicts multiplexed models).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import replace
from typing import Any

from ray import serve

from controlplane.config import BanditConfig
from deployments.adapter_slots import AdapterSlots
from deployments.backends import Backend, BuildContext, Chunk, collect, with_timing


def pool_name(model: str) -> str:
    """The pool deployment's name (and residency replica id) for a base model."""
    return "pool-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in model)


def pool_actor_options(config: BanditConfig, model: str) -> dict[str, Any]:
    """The pool replica's ``ray_actor_options``: no CPU reserved (as every deployment
    here), and the GPUs its arms ask for (``num_gpus``), so that Ray places it on a
    node that has them and shows it those (``CUDA_VISIBLE_DEVICES``)."""
    options: dict[str, Any] = {"num_cpus": 0}
    gpus = config.pool_gpus(model)
    if gpus > 0:
        options["num_gpus"] = gpus
    return options


def make_backends(config: BanditConfig, model: str) -> Mapping[str, Backend]:
    """The backends of one base model's arms, by arm name."""
    from controlplane.settings import get_settings
    from deployments.backends import build_backends

    context = BuildContext(
        config, adapter_rank=config.cache.adapter_rank, data_dir=get_settings().data_dir
    )
    return build_backends([a for a in config.arms if a.model == model], context)


class PoolCore:
    """A pool replica's logic: arms -> backends, adapter residency, timing."""

    def __init__(
        self,
        config: BanditConfig,
        model: str,
        backends: Mapping[str, Backend],
        mux: Callable[[str], Awaitable[Any]] | None = None,
    ) -> None:
        self.model = model
        self.arms = {a.name: a for a in config.arms if a.model == model}
        self.backends = dict(backends)
        self.cache = config.cache
        self._closed = False
        hosts = {a.adapter: self.backends[n] for n, a in self.arms.items() if a.adapter}
        self.slots = AdapterSlots(
            config.cache.slots_per_replica,
            planned=config.cache_planned,
            hosts=hosts,
            mux=mux,
        )

    def backend_for(self, arm: str) -> Backend:
        if arm not in self.backends:
            raise KeyError(f"pool {self.model!r} does not serve arm {arm!r}")
        return self.backends[arm]

    async def generate_stream(
        self, arm: str, body: dict[str, Any], adapter: str | None = None
    ) -> AsyncGenerator[Chunk, None]:
        """The answer as it is produced; the last chunk's usage is timed from here
        (so it includes an adapter's page-in)."""
        backend = self.backend_for(arm)
        adapter = adapter or self.arms[arm].adapter
        start = time.perf_counter()
        if adapter:
            await self.slots.acquire(adapter, backend)
        try:
            ttft_ms: float | None = None
            async with aclosing(backend.generate(body, adapter)) as chunks:
                async for chunk in chunks:
                    now_ms = (time.perf_counter() - start) * 1000.0
                    if chunk.first_token and ttft_ms is None:
                        ttft_ms = now_ms
                    if chunk.usage is not None:
                        chunk = replace(chunk, usage=with_timing(chunk.usage, now_ms, ttft_ms))
                    yield chunk
        finally:
            if adapter:
                await self.slots.release(adapter)

    async def generate(
        self, arm: str, body: dict[str, Any], adapter: str | None = None
    ) -> dict[str, Any]:
        return (await collect(self.generate_stream(arm, body, adapter))).as_dict()

    def residency_stats(self) -> dict[str, Any]:
        return {"policy": self.cache.policy.kind, **self.slots.stats()}

    def close(self) -> None:
        """Stop what the backends run beside the replica (a vLLM engine's processes), once;
        backends without a ``close`` hold nothing that outlives the replica."""
        if self._closed:
            return
        self._closed = True
        for backend in {id(b): b for b in self.backends.values()}.values():
            close = getattr(backend, "close", None)
            if callable(close):
                close()


@serve.deployment(ray_actor_options={"num_cpus": 0})
class ModelPool:
    """Serves the arms of one base model (a :class:`PoolCore` on a Serve replica).

    Under ``cache.policy: lru`` adapters go through ``@serve.multiplexed`` (Serve's
    own LRU, ``slots_per_replica`` per replica); under a planned policy (polar,
    polar+) through the replica's :class:`AdapterRegistry`, which the cache
    controller drives with :meth:`prefetch` and :meth:`evict`.
    """

    async def __init__(self, config: BanditConfig, model: str) -> None:  # type: ignore[misc]
        self.loop = asyncio.get_running_loop()
        backends = await asyncio.to_thread(make_backends, config, model)  # hf: loads a model
        self.core = PoolCore(config, model, backends, mux=self._mux_get)

        async def load_for_serve(adapter: str) -> Any:  # a plain function: Serve keeps its
            await self.core.slots.mux_load(adapter)  # LRU on the function object
            return _MuxResident(self, adapter)

        self._mux = serve.multiplexed(max_num_models_per_replica=config.cache.slots_per_replica)(
            load_for_serve
        )

    def __del__(self) -> None:
        """Serve calls this when it stops the replica (Python may call it again): the
        backends stop their engines, whose processes would otherwise outlive it."""
        core = getattr(self, "core", None)  # None: __init__ failed before building it
        if core is not None:
            core.close()

    async def _mux_get(self, adapter: str) -> Any:
        return await self._mux(adapter)

    def _adapter(self) -> str | None:
        return serve.get_multiplexed_model_id() or None

    async def generate(self, arm: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.core.generate(arm, body, self._adapter())

    async def generate_stream(self, arm: str, body: dict[str, Any]) -> AsyncGenerator[Chunk, None]:
        """Serve streaming (``handle.options(stream=True).generate_stream.remote``):
        text chunks as the backend produces them, the last one with usage. A caller
        that stops consuming cancels this generator, which stops the generation."""
        async with aclosing(self.core.generate_stream(arm, body, self._adapter())) as chunks:
            async for chunk in chunks:
                yield chunk

    # -- residency, for the cache controller and the dashboard ---------------

    async def resident(self) -> tuple[str, ...]:
        return self.core.slots.resident()

    async def prefetch(self, adapter: str) -> float:
        return await self.core.slots.prefetch(adapter)

    async def evict(self, adapter: str) -> None:
        await self.core.slots.evict(adapter)

    async def set_admission(self, values: dict[str, float]) -> None:
        self.core.slots.set_admission(values)

    async def residency_stats(self) -> dict[str, Any]:
        return self.core.residency_stats()


class _MuxResident:
    """Held by Serve's multiplexing LRU. Serve calls ``__del__`` (in a worker thread)
    when its LRU drops the entry, and Python may call it again when the object is
    collected: the first call unloads the adapter (once no request uses it)."""

    def __init__(self, pool: ModelPool, name: str) -> None:
        self.pool, self.name = pool, name
        self._dropped = threading.Event()

    def __del__(self) -> None:
        if self._dropped.is_set():
            return
        self._dropped.set()
        drop = self.pool.core.slots.mux_drop(self.name)
        loop = self.pool.loop
        try:
            if loop.is_closed():
                drop.close()
            elif _on_loop(loop):  # collected on the replica's own thread: don't block it
                loop.create_task(drop)
            else:
                asyncio.run_coroutine_threadsafe(drop, loop).result(timeout=600)
        except Exception:  # a finalizer must not raise (replica shutdown)
            pass


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
