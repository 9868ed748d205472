"""Which LoRA adapters a pool replica's backends hold, and when they may load one.

The backends hold the adapters (:meth:`Backend.resident` is the truth); this
class decides what they load and unload, so that

- the replica never holds more than its slots (``cache.slots_per_replica``),
  plus, under a planned policy, one scratch slot for the one-off load of an
  adapter the plan does not keep (POLAR serves such a request by a page-in
  that is dropped after it, not by evicting what the plan keeps);
- an adapter is never unloaded under a request that uses it: requests pin their
  adapter, and an eviction (the plan's, or Serve's LRU) of a pinned adapter
  takes effect when its last request ends;
- under a planned policy, between plans, a missed adapter replaces the replica's
  least valued one when the policy's admission values (:meth:`set_admission`, pushed
  by the cache controller) say it is worth more: the page-in the request pays is
  kept instead of dropped, so residency follows demand that moved since the plan;
- every page-in's measured seconds (``Backend.load_adapter``) are what the
  statistics record (``adapter_loads``: per adapter, the median of its recent
  loads): the cost the planner and the gateways price is the one the replica
  paid (the cache controller stores it in ``adapter_load_times``).

Under ``lru`` what is kept is Serve's ``@serve.multiplexed`` LRU (its loader is
:meth:`mux_load`, its eviction :meth:`mux_drop`; Serve passes in as ``mux``);
under a planned policy it is the :class:`AdapterRegistry`, which the cache
controller drives with :meth:`prefetch` and :meth:`evict`.

All bookkeeping runs on the replica's event loop under one ``asyncio.Condition``;
loads and unloads run in worker threads (a real load can wait for a generation
to finish: the hf backend runs one thing at a time on its model), so the event
loop keeps streaming other answers meanwhile.
"""

from __future__ import annotations

import asyncio
import statistics
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from cache_manager.executor import CapacityError
from cache_manager.policies.base import admission_victim
from deployments.adapters import AdapterRegistry
from deployments.backends import Backend

RECENT_LOADS = 16  # loads per adapter behind its measured median


class AdapterSlots:
    def __init__(
        self,
        slots: int,
        *,
        planned: bool,
        hosts: dict[str, Backend] | None = None,
        mux: Callable[[str], Awaitable[Any]] | None = None,
    ) -> None:
        self.slots = slots
        self.planned = planned
        self.limit = slots + 1 if planned else slots  # what the backends may hold at once
        self.hosts: dict[str, Backend] = dict(hosts or {})  # adapter -> backend that loads it
        self.mux = mux  # lru: Serve's multiplexing LRU (calls mux_load / mux_drop)
        self.registry = AdapterRegistry(slots, self._page_in)
        self.kept_by_mux: dict[str, float] = {}  # lru: what Serve's LRU keeps now
        self.admission: dict[str, float] = {}  # planned: the policy's admission values
        self.kept_by_miss: set[str] = set()  # planned: kept by a request's miss, not a plan
        self.pins: Counter[str] = Counter()  # adapter -> requests using it now
        # adapter -> seconds of its recent real loads, newest last (the measured price)
        self.recent_loads: dict[str, deque[float]] = {}
        self.load_counts: Counter[str] = Counter()  # adapter -> real loads, all time
        self.max_held = 0  # the most adapters the backends ever held at once
        self.admitted = 0  # planned: misses kept in place of a less valued adapter
        self._cond = asyncio.Condition()

    # -- what is held --------------------------------------------------------

    def held(self) -> tuple[str, ...]:
        """Adapters the backends hold now (what they report)."""
        backends = {id(b): b for b in self.hosts.values()}.values()
        return tuple(a for b in backends for a in b.resident())

    def kept(self, adapter: str) -> bool:
        if self.planned:
            return adapter in self.registry.resident()
        return adapter in self.kept_by_mux

    def resident(self) -> tuple[str, ...]:
        """Held adapters that stay (the plan's, or Serve's LRU's)."""
        return tuple(a for a in self.held() if self.kept(a))

    def transient(self) -> tuple[str, ...]:
        """Held only until the requests using them end (one-off loads, pinned evictions)."""
        return tuple(a for a in self.held() if not self.kept(a))

    # -- requests ------------------------------------------------------------

    async def acquire(self, adapter: str, host: Backend) -> bool:
        """Make ``adapter`` usable for one request and pin it; returns whether it was
        a hit (resident before). Pair with :meth:`release`."""
        self.hosts.setdefault(adapter, host)
        if not self.planned:
            return await self._acquire_mux(adapter)
        if adapter in self.registry.resident():
            # a hit takes no lock: the check and the pin are one step of this event loop,
            # where every eviction runs, so nothing evicts between them; a plan's load of
            # another adapter, which holds the condition for its whole load (and, on one
            # model, waits for the generation in flight first), does not hold this request
            hit = self.registry.acquire(adapter)  # no load
            self.pins[adapter] += 1
            return hit
        async with self._cond:
            if adapter in self.registry.resident():
                hit = self.registry.acquire(adapter)  # no load
            else:
                await self._admit(adapter)
                await self._room_for(adapter)
                # a free slot keeps it; a full plan serves it by a one-off load (scratch slot)
                hit = await asyncio.to_thread(self.registry.acquire, adapter)
                if adapter in self.registry.resident():
                    self.kept_by_miss.add(adapter)
                self._note_held()
            self.pins[adapter] += 1
            return hit

    async def _acquire_mux(self, adapter: str) -> bool:
        if self.mux is None:
            raise RuntimeError("lru residency needs Serve's multiplexing loader (mux)")
        before = self.registry.stats.page_ins
        await self.mux(adapter)  # a hit returns at once; a miss runs mux_load (after mux_drop)
        self.pins[adapter] += 1  # same event-loop step as the lookup: nothing evicts between
        hit = self.registry.stats.page_ins == before
        if hit:
            self.registry.stats.hits += 1
        else:
            self.registry.stats.misses += 1
        return hit

    async def release(self, adapter: str) -> None:
        if self.pins[adapter] > 1 or self.kept(adapter):
            # what the backends hold does not change (the only thing waiters wait on):
            # no lock, so that a load in flight does not hold the end of this request
            self._unpin(adapter)
            return
        async with self._cond:
            self._unpin(adapter)
            await self._drop_if_unused(adapter)
            self._cond.notify_all()

    def _unpin(self, adapter: str) -> None:
        self.pins[adapter] -= 1
        if self.pins[adapter] <= 0:
            del self.pins[adapter]

    # -- the plan (planned policies) -------------------------------------------

    async def prefetch(self, adapter: str) -> float:
        if adapter not in self.hosts:
            raise KeyError(f"no arm of this pool serves adapter {adapter!r}")
        async with self._cond:
            if adapter in self.registry.resident():
                return 0.0
            if len(self.registry.resident()) >= self.slots:
                await self._drop_a_miss()
            if len(self.registry.resident()) >= self.slots:
                raise CapacityError(f"all {self.slots} adapter slots are taken")
            await self._room_for(adapter)
            seconds = await asyncio.to_thread(self.registry.prefetch, adapter)
            self.kept_by_miss.discard(adapter)
            self._note_held()
            return seconds

    async def _drop_a_miss(self) -> None:
        """The plan's prefetch finds the slots full: a request's miss took the slot its
        evictions freed (the plan's calls are not one step). The plan wins: drop the
        least valued adapter that a miss, not a plan, brought in."""
        by_miss = [a for a in self.registry.resident() if a in self.kept_by_miss]
        if by_miss:
            victim = min(by_miss, key=lambda a: self.admission.get(a, 0.0))
            self.registry.evict(victim)
            self.kept_by_miss.discard(victim)
            await self._drop_if_unused(victim)

    async def evict(self, adapter: str) -> None:
        async with self._cond:
            self.registry.evict(adapter)
            self.kept_by_miss.discard(adapter)
            await self._drop_if_unused(adapter)
            self._cond.notify_all()

    def set_admission(self, values: Mapping[str, float]) -> None:
        """The policy's admission values (``ResidencyPolicy.admission``)."""
        self.admission = dict(values)

    async def _admit(self, adapter: str) -> None:
        """A full registry drops its least valued adapter for ``adapter`` if that is
        worth more (under the condition's lock), so that the page-in keeps it."""
        resident = self.registry.resident()  # least recently used first
        if len(resident) < self.slots:
            return
        victim = admission_victim(resident, adapter, self.admission)
        if victim is not None:
            self.registry.evict(victim)
            self.kept_by_miss.discard(victim)
            self.admitted += 1
            await self._drop_if_unused(victim)

    # -- Serve's multiplexing LRU (lru) ------------------------------------------

    async def mux_load(self, adapter: str) -> float:
        async with self._cond:
            await self._room_for(adapter)
            _, seconds = await asyncio.to_thread(self._page_in, adapter)
            if seconds is not None:
                self.registry.stats.page_ins += 1
                self.registry.stats.load_s += seconds
            self.kept_by_mux[adapter] = seconds or 0.0
            self._note_held()
            return seconds or 0.0

    async def mux_drop(self, adapter: str) -> None:
        async with self._cond:
            self.kept_by_mux.pop(adapter, None)
            await self._drop_if_unused(adapter)
            self._cond.notify_all()

    # -- internals -------------------------------------------------------------

    async def _room_for(self, adapter: str) -> None:
        """Wait (lock released) until ``adapter`` is held or a slot is free."""
        await self._cond.wait_for(lambda: adapter in self.held() or len(self.held()) < self.limit)

    def _page_in(self, adapter: str) -> tuple[str, float | None]:
        """The registry's loader (runs in a worker thread, under the condition's lock)."""
        host = self.hosts[adapter]
        if adapter in host.resident():
            return adapter, None  # held already (a pinned eviction or a one-off in flight)
        seconds = host.load_adapter(adapter)
        self.recent_loads.setdefault(adapter, deque(maxlen=RECENT_LOADS)).append(seconds)
        self.load_counts[adapter] += 1
        return adapter, seconds

    async def _drop_if_unused(self, adapter: str) -> None:
        host = self.hosts.get(adapter)
        if host is None or self.pins[adapter] > 0 or self.kept(adapter):
            return
        if adapter in host.resident():
            await asyncio.to_thread(host.unload_adapter, adapter)

    def _note_held(self) -> None:
        self.max_held = max(self.max_held, len(self.held()))

    def measured_loads(self) -> dict[str, dict[str, float]]:
        """Per adapter loaded at least once: the median of its last
        :data:`RECENT_LOADS` loads in ms, and how many loads it has had."""
        return {
            a: {
                "median_ms": round(float(statistics.median(q)) * 1000.0, 3),
                "loads": float(self.load_counts[a]),
            }
            for a, q in self.recent_loads.items()
        }

    def stats(self) -> dict[str, Any]:
        s = self.registry.stats
        return {
            "capacity": self.slots,
            "resident": list(self.resident()),
            "transient": list(self.transient()),
            "hits": s.hits,
            "misses": s.misses,
            "page_ins": s.page_ins,
            "admitted": self.admitted,
            "load_s": s.load_s,
            "adapter_load_ms": {a: round(q[-1] * 1000.0, 3) for a, q in self.recent_loads.items()},
            "adapter_loads": self.measured_loads(),
            "adapter_mib": {
                a: round(self.hosts[a].adapter_bytes(a) / 2**20, 3) for a in self.held()
            },
        }
