"""A pool replica's adapter residency (PoolCore + AdapterSlots) without Ray.

A fake backend checks, at every chunk it streams, that its adapter is still
loaded, and counts what it holds; Serve's multiplexing LRU is played by a small
stand-in with the same order of operations (evict the LRU entry, then load).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache_manager.executor import CapacityError
from controlplane.config import parse_config
from deployments.backends import AdapterNotLoaded, Chunk, Usage
from deployments.pool import PoolCore

ADAPTERS = ["a", "b", "c", "d", "e"]
LOAD_S = {"a": 0.011, "b": 0.012, "c": 0.013, "d": 0.014, "e": 0.015}  # "measured"


class FakeBackend:
    def __init__(self) -> None:
        self.held: dict[str, None] = {}
        self.loads: list[str] = []
        self.unloads: list[str] = []
        self.most = 0

    async def generate(
        self, body: dict[str, Any], adapter: str | None = None
    ) -> AsyncGenerator[Chunk, None]:
        for i in range(int(body.get("pieces", 3))):
            if adapter and adapter not in self.held:
                raise AdapterNotLoaded(adapter)
            await asyncio.sleep(0)
            yield Chunk(f"{adapter}{i} ")
        yield Chunk(usage=Usage(1, 3, 1.0, 0.5, 0.0, 0.0, "stop", "fake"))

    def load_adapter(self, name: str) -> float:
        assert name not in self.held
        self.loads.append(name)
        self.held[name] = None
        self.most = max(self.most, len(self.held))
        return LOAD_S[name]

    def unload_adapter(self, name: str) -> None:
        self.unloads.append(name)
        self.held.pop(name, None)

    def resident(self) -> tuple[str, ...]:
        return tuple(self.held)

    def adapter_bytes(self, name: str) -> int:
        del name  # every fake adapter weighs the same
        return 2**20


class ServeLRU:
    """What ``@serve.multiplexed`` does on a replica: an LRU of loaded models; a miss
    first drops the least recently used one (awaiting its ``__del__``), then loads."""

    def __init__(self, slots: int, load: Callable[[str], Awaitable[Any]], drop: Callable[[str], Awaitable[None]]) -> None:  # fmt: skip
        self.slots, self.load, self.drop = slots, load, drop
        self.models: OrderedDict[str, Any] = OrderedDict()
        self.lock = asyncio.Lock()

    async def __call__(self, adapter: str) -> Any:
        if adapter in self.models:
            self.models.move_to_end(adapter)
            return self.models[adapter]
        async with self.lock:
            if adapter in self.models:
                return self.models[adapter]
            if len(self.models) >= self.slots:
                old, _ = self.models.popitem(last=False)
                await self.drop(old)
            self.models[adapter] = await self.load(adapter)
            return self.models[adapter]


def _pool(policy: str, slots: int) -> tuple[PoolCore, FakeBackend]:
    config = parse_config(
        {
            "arms": [{"name": "base", "model": "m"}]
            + [{"name": f"m:{a}", "model": "m", "adapter": a} for a in ADAPTERS],
            "cache": {"policy": policy, "slots_per_replica": slots},
        }
    )
    backend = FakeBackend()
    core = PoolCore(config, "m", {arm.name: backend for arm in config.arms})
    if policy == "lru":
        core.slots.mux = ServeLRU(slots, core.slots.mux_load, core.slots.mux_drop)
    return core, backend


def test_planned_one_off_load_is_dropped_after_its_request():
    async def run() -> None:
        core, backend = _pool("polar", 1)
        assert await core.slots.prefetch("a") == pytest.approx(LOAD_S["a"])
        gen = await core.generate("m:b", {})  # plan full: a one-off page-in of b
        assert gen["text"] == "b0 b1 b2 " and gen["latency_ms"] >= 1.0
        assert backend.loads == ["a", "b"] and backend.unloads == ["b"]
        assert core.slots.resident() == ("a",) and core.slots.transient() == ()
        await core.generate("m:a", {})
        stats = core.residency_stats()
        assert (stats["hits"], stats["misses"], stats["page_ins"]) == (1, 1, 2)
        assert stats["load_s"] == pytest.approx(LOAD_S["a"] + LOAD_S["b"])  # measured, not assumed
        assert stats["adapter_load_ms"] == {"a": 11.0, "b": 12.0}
        assert stats["adapter_loads"] == {
            "a": {"median_ms": 11.0, "loads": 1.0},
            "b": {"median_ms": 12.0, "loads": 1.0},
        }
        await core.generate("m:b", {})  # b again: a second one-off load, measured again
        assert stats["adapter_loads"]["b"]["loads"] == 1.0  # (the earlier snapshot)
        assert core.residency_stats()["adapter_loads"]["b"] == {"median_ms": 12.0, "loads": 2.0}
        with pytest.raises(CapacityError):
            await core.slots.prefetch("c")
        with pytest.raises(KeyError):
            await core.slots.prefetch("unknown")

    asyncio.run(run())


def test_a_hit_is_not_held_behind_a_plans_load_of_another_adapter():
    """A plan's prefetch holds the slots' condition for its whole load (on a real model the
    load waits for the generation in flight first): a request for an adapter already
    resident is served meanwhile, and the load lands after it."""

    async def run() -> None:
        core, backend = _pool("polar", 2)
        await core.slots.prefetch("a")
        loading, release = threading.Event(), threading.Event()
        plain = backend.load_adapter

        def slow_load(name: str) -> float:
            if name == "b":
                loading.set()
                release.wait(30)
            return plain(name)

        backend.load_adapter = slow_load  # type: ignore[method-assign]
        prefetch = asyncio.create_task(core.slots.prefetch("b"))
        assert await asyncio.to_thread(loading.wait, 30)
        try:
            gen = await asyncio.wait_for(core.generate("m:a", {}), 30)
        finally:
            release.set()
        assert gen["text"] == "a0 a1 a2 "
        assert backend.loads == ["a"]  # served before the load of b finished
        assert await prefetch == pytest.approx(LOAD_S["b"]) and backend.loads == ["a", "b"]
        assert set(core.slots.resident()) == {"a", "b"} and core.slots.pins == {}
        stats = core.residency_stats()
        assert (stats["hits"], stats["misses"], stats["page_ins"]) == (1, 0, 2)

    asyncio.run(run())


def test_an_eviction_waits_for_the_requests_using_the_adapter():
    async def run() -> None:
        core, backend = _pool("polar", 2)
        await core.slots.prefetch("a")
        stream = core.generate_stream("m:a", {"pieces": 4})
        first = await anext(stream)
        await core.slots.evict("a")  # the plan drops a while a request still streams from it
        assert backend.held == {"a": None} and core.slots.transient() == ("a",)
        rest = [c async for c in stream]
        assert first.text == "a0 " and rest[-1].usage is not None  # never unloaded under it
        assert backend.held == {} and backend.unloads == ["a"]

    asyncio.run(run())


def test_a_closed_stream_releases_its_adapter():
    async def run() -> None:
        core, backend = _pool("polar", 1)
        await core.slots.prefetch("a")
        stream = core.generate_stream("m:b", {"pieces": 10})  # one-off
        await anext(stream)
        assert backend.held.keys() == {"a", "b"}
        await stream.aclose()  # the client went away
        assert backend.held.keys() == {"a"} and core.slots.pins == {}

    asyncio.run(run())


def test_a_miss_worth_more_than_the_least_valued_adapter_replaces_it():
    async def run() -> None:
        core, backend = _pool("polar", 2)
        await core.slots.prefetch("a")
        await core.slots.prefetch("b")
        core.slots.set_admission({"a": 0.3, "b": 0.1, "c": 0.2, "d": 0.05})
        await core.generate("m:d", {})  # worth less than b: a one-off load, dropped
        assert core.slots.resident() == ("a", "b") and backend.unloads == ["d"]
        await core.generate("m:c", {})  # worth more than b: kept in b's place
        assert core.slots.resident() == ("a", "c") and backend.unloads == ["d", "b"]
        await core.generate("m:c", {})
        stats = core.residency_stats()
        assert (stats["hits"], stats["misses"], stats["page_ins"]) == (1, 2, 4)
        assert stats["admitted"] == 1 and backend.most == 3  # the scratch slot, no more
        # a plan's evictions free a slot, a request's miss takes it before the plan's
        # prefetch comes: the plan wins, the adapter the miss brought in goes
        await core.slots.evict("a")
        await core.generate("m:d", {})
        assert core.slots.resident() == ("c", "d")
        await core.slots.prefetch("e")
        assert core.slots.resident() == ("c", "e") and backend.unloads[-1] == "d"
        await core.slots.prefetch("a")  # c came in by a miss too
        assert core.slots.resident() == ("e", "a")
        with pytest.raises(CapacityError):  # what the plans brought in stays
            await core.slots.prefetch("b")

    asyncio.run(run())


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from(["lru", "polar"]),
    st.integers(1, 3),
    st.lists(
        st.tuples(st.sampled_from(["req", "req", "req", "pre", "evict"]), st.sampled_from(ADAPTERS + [None])),
        min_size=1,
        max_size=40,
    ),
    st.integers(0, 2**16),
)  # fmt: skip
def test_concurrent_traffic_never_exceeds_the_slots_nor_unloads_under_a_request(
    policy, slots, ops, seed
):
    async def run() -> None:
        core, backend = _pool(policy, slots)
        rng = random.Random(seed)
        if policy != "lru":  # misses may replace what the plan keeps
            core.slots.set_admission({a: rng.random() for a in ADAPTERS})

        async def op(kind: str, adapter: str | None) -> None:
            await asyncio.sleep(rng.random() * 0.002)
            if kind == "req" or adapter is None or policy == "lru":
                arm = f"m:{adapter}" if adapter else "base"
                gen = await core.generate(arm, {"pieces": rng.randint(1, 4)})
                assert gen["completion_tokens"] == 3
            elif kind == "pre":
                with contextlib.suppress(CapacityError):  # the plan's own limit
                    await core.slots.prefetch(adapter)
            else:
                await core.slots.evict(adapter)

        await asyncio.gather(*(op(k, a) for k, a in ops))
        limit = slots + (1 if policy != "lru" else 0)  # planned: one scratch slot
        assert backend.most <= limit
        assert len(core.slots.resident()) <= slots
        assert core.slots.transient() == () and core.slots.pins == {}  # all requests ended
        s = core.slots.registry.stats
        assert s.page_ins == len(backend.loads)
        assert s.load_s == pytest.approx(sum(LOAD_S[a] for a in backend.loads))

    asyncio.run(run())
