"""Epoch schedules on the controller's clock (seconds).

POLAR re-plans at fixed-length epochs; POLAR+ doubles the epoch length after each
epoch (the doubling trick: no horizon needed), optionally capped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from typing_extensions import override


class EpochSchedule(Protocol):
    def length(self, epoch: int) -> float:
        """Length in seconds of epoch ``epoch`` (0-based)."""
        ...


@dataclass(frozen=True)
class FixedEpochs(EpochSchedule):
    length_s: float

    def __post_init__(self) -> None:
        if self.length_s <= 0:
            raise ValueError("epoch length must be positive")

    @override
    def length(self, epoch: int) -> float:
        return self.length_s


@dataclass(frozen=True)
class DoublingEpochs(EpochSchedule):
    initial_s: float
    factor: float = 2.0
    max_s: float | None = None

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.factor < 1:
            raise ValueError("need initial_s > 0 and factor >= 1")
        if self.max_s is not None and self.max_s < self.initial_s:
            raise ValueError("max_s must be >= initial_s")

    def length(self, epoch: int) -> float:
        raw = self.initial_s * self.factor ** min(epoch, 64)
        return raw if self.max_s is None else min(raw, self.max_s)
