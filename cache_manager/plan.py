"""Residency plans and what became of them.

A :class:`ResidencyPlan` says, for one epoch, which adapters each replica keeps.
Applying it yields an :class:`EpochRecord` whose ``status`` is ``applied`` only if
every replica ended the epoch boundary holding exactly its planned set; anything
else (an exception, a replica that reported another set) is ``failed`` with the
reason. Every epoch the controller opens gets exactly one record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class PlanStatus(StrEnum):
    APPLIED = "applied"
    FAILED = "failed"


@dataclass(frozen=True)
class ResidencyPlan:
    epoch: int
    issued_at: float
    residency: dict[str, tuple[str, ...]]  # replica -> adapters to keep
    utility: dict[str, float] = field(default_factory=dict)  # adapter -> planned utility
    explore: tuple[str, ...] = ()  # adapters placed for forced exploration
    policy: str = ""
    length_s: float | None = None  # the policy ends the epoch this soon (shorter than scheduled)

    def adapters(self) -> set[str]:
        return {a for kept in self.residency.values() for a in kept}


@dataclass(frozen=True)
class ReplicaOutcome:
    replica: str
    planned: tuple[str, ...]
    resident: tuple[str, ...]  # what the replica reported afterwards
    prefetched: tuple[str, ...]
    evicted: tuple[str, ...]
    load_s: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and set(self.planned) == set(self.resident)


@dataclass(frozen=True)
class EpochRecord:
    """One row of the residency table: an epoch's plan and its outcome."""

    epoch: int
    started_at: float
    ends_at: float
    status: PlanStatus
    plan: ResidencyPlan | None
    replicas: tuple[ReplicaOutcome, ...] = ()
    reason: str | None = None

    @property
    def page_ins(self) -> int:
        return sum(len(r.prefetched) for r in self.replicas)

    @property
    def load_s(self) -> float:
        return sum(r.load_s for r in self.replicas)
