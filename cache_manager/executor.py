"""The narrow interface through which plans reach replicas.

The controller never talks to Ray: it calls a :class:`ResidencyExecutor`. A Ray
Serve deployment implements it with the replica's own registry of loaded adapters
(Serve has no public evict); :class:`InMemoryExecutor` implements it for the
simulator and the tests, with failures that can be injected.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable


class CapacityError(RuntimeError):
    """A prefetch into a replica whose slots are all taken."""


class ReplicaUnavailable(RuntimeError):
    """The replica could not be reached or refused the operation."""


@runtime_checkable
class ResidencyExecutor(Protocol):
    def replicas(self) -> Sequence[str]:
        """Replica ids, in a stable order."""
        ...

    def capacity(self, replica: str) -> int:
        """Adapter slots on ``replica``."""
        ...

    def resident(self, replica: str) -> tuple[str, ...]:
        """Adapters loaded on ``replica``, as the replica itself reports them."""
        ...

    def prefetch(self, replica: str, adapter: str) -> float:
        """Load ``adapter``; returns the load seconds. Raises CapacityError when full."""
        ...

    def evict(self, replica: str, adapter: str) -> None:
        """Unload ``adapter`` (no-op when absent)."""
        ...


LoadFn = Callable[[str, str], float]  # (replica, adapter) -> load seconds
FailFn = Callable[[str, str, str], bool]  # (op, replica, adapter) -> fail?


class InMemoryExecutor:
    """Replicas as ordered sets (least recently used first), capacity enforced."""

    def __init__(
        self,
        capacities: dict[str, int],
        load: LoadFn,
        fail: FailFn | None = None,
    ) -> None:
        if any(k < 0 for k in capacities.values()):
            raise ValueError("capacity must be >= 0")
        self._cap = dict(capacities)
        self._slots: dict[str, OrderedDict[str, None]] = {r: OrderedDict() for r in capacities}
        self._load = load
        self._fail = fail
        self.where: dict[str, set[str]] = {}  # adapter -> replicas holding it
        self.version = 0  # bumped on every change of any resident set

    def replicas(self) -> Sequence[str]:
        return tuple(self._cap)

    def capacity(self, replica: str) -> int:
        return self._cap[replica]

    def resident(self, replica: str) -> tuple[str, ...]:
        return tuple(self._slots[replica])

    def is_resident(self, replica: str, adapter: str) -> bool:
        return adapter in self._slots[replica]

    def touch(self, replica: str, adapter: str) -> None:
        """Mark ``adapter`` most recently used on ``replica``."""
        self._slots[replica].move_to_end(adapter)

    def prefetch(self, replica: str, adapter: str) -> float:
        if self._fail is not None and self._fail("prefetch", replica, adapter):
            raise ReplicaUnavailable(f"{replica}: prefetch {adapter} failed")
        slots = self._slots[replica]
        if adapter in slots:
            slots.move_to_end(adapter)
            return 0.0
        if len(slots) >= self._cap[replica]:
            raise CapacityError(f"{replica} is full ({self._cap[replica]} slots)")
        seconds = self._load(replica, adapter)
        slots[adapter] = None
        self.where.setdefault(adapter, set()).add(replica)
        self.version += 1
        return seconds

    def evict(self, replica: str, adapter: str) -> None:
        if self._fail is not None and self._fail("evict", replica, adapter):
            raise ReplicaUnavailable(f"{replica}: evict {adapter} failed")
        slots = self._slots[replica]
        if adapter in slots:
            del slots[adapter]
            self.where[adapter].discard(replica)
            self.version += 1
