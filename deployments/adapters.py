"""A pool replica's own registry of loaded LoRA adapters.

Ray Serve's ``@serve.multiplexed`` keeps an LRU cache per replica but offers no
public call to list, prefetch or evict. Under a planned cache policy (POLAR)
the replica keeps its adapters here instead, so the cache controller's plan can
prefetch and evict, and the replica reports exactly what it holds. A request
for an adapter that is not resident pays a real load; if a slot is free the
adapter stays, otherwise it is served by a one-off load and dropped (the plan,
not the last request, decides what stays).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cache_manager.executor import CapacityError

# adapter -> (weights, seconds of the page-in); seconds None: it was in memory already
# (held for another request), so no page-in happened
Loader = Callable[[str], tuple[Any, float | None]]


@dataclass
class RegistryStats:
    hits: int = 0
    misses: int = 0
    page_ins: int = 0
    load_s: float = 0.0


class AdapterRegistry:
    def __init__(self, capacity: int, load: Loader) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        self._load = load
        self._slots: OrderedDict[str, Any] = OrderedDict()
        self.stats = RegistryStats()

    def resident(self) -> tuple[str, ...]:
        return tuple(self._slots)

    def _page_in(self, adapter: str) -> Any:
        weights, seconds = self._load(adapter)
        if seconds is not None:
            self.stats.page_ins += 1
            self.stats.load_s += seconds
        return weights

    def acquire(self, adapter: str) -> bool:
        """Make ``adapter`` usable for one request; returns whether it was a hit."""
        if adapter in self._slots:
            self._slots.move_to_end(adapter)
            self.stats.hits += 1
            return True
        self.stats.misses += 1
        weights = self._page_in(adapter)
        if len(self._slots) < self.capacity:
            self._slots[adapter] = weights
        return False

    def prefetch(self, adapter: str) -> float:
        if adapter in self._slots:
            return 0.0
        if len(self._slots) >= self.capacity:
            raise CapacityError(f"all {self.capacity} adapter slots are taken")
        before = self.stats.load_s
        self._slots[adapter] = self._page_in(adapter)
        return self.stats.load_s - before

    def evict(self, adapter: str) -> None:
        self._slots.pop(adapter, None)
