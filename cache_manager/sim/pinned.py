"""Requests that pin their adapter, replayed through one residency policy.

Each request names its adapter (a client of one fine-tune asks for it by model
name): nothing is routed, so a policy only decides whether the adapter is resident
when the request comes. :func:`drifting_trace` is the trace that
``bench/bench_residency.py`` sends to a live pool; :func:`run_pinned` replays it
through the real :class:`~cache_manager.controller.CacheController` on a simulated
clock, with one replica of ``slots`` slots and a fixed load time, so a policy's
page-ins on that trace can be checked without a model.

A miss is served as a pool replica serves it (``deployments/adapter_slots.py``):
under a planned policy a free slot keeps the adapter, and a full replica keeps it
in place of its least valued adapter when the policy's admission values say it is
worth more, else loads it for that one request; under a reactive policy (LRU, as
Serve's multiplexing) the policy's victim makes room.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cache_manager.clock import ManualClock
from cache_manager.config import CacheConfig, CachePolicyConfig
from cache_manager.controller import CacheController
from cache_manager.executor import InMemoryExecutor
from cache_manager.paging import PagingCostModel
from cache_manager.policies.base import admission_victim
from cache_manager.scorer import FixedScorer

HOT_SHARE = 0.8
REPLICA = "replica-0"
TICK_S = 0.1  # how often the running controller ticks (cache.tick_s)


def drifting_trace(
    seed: int, n: int, adapters: int, phases: int, hot_share: float = HOT_SHARE
) -> list[int]:
    """Adapter index per request: in each of ``phases`` phases a hot pair takes
    ``hot_share`` of the requests (the pair moves on at each phase), the rest scan the
    cold adapters in turn."""
    rng = np.random.default_rng(seed)
    out: list[int] = []
    per_phase = max(1, n // phases)
    for i in range(n):
        p = min(i // per_phase, phases - 1)
        hot = ((2 * p) % adapters, (2 * p + 1) % adapters)
        cold = [a for a in range(adapters) if a not in hot]
        if rng.random() < hot_share or not cold:
            out.append(int(rng.choice(hot)))
        else:
            out.append(cold[i % len(cold)])
    return out


@dataclass(frozen=True)
class PinnedRun:
    policy: str
    requests: int
    hits: int
    misses: int  # page-ins on the request path
    prefetches: int  # page-ins of the plans, off the request path
    plans: list[tuple[float, tuple[str, ...]]]  # (epoch start, planned residency)
    max_resident: int

    @property
    def page_ins(self) -> int:
        return self.misses + self.prefetches


def run_pinned(
    trace: Sequence[int],
    arms: Sequence[str],
    policy: CachePolicyConfig,
    *,
    slots: int = 2,
    rate_per_s: float = 4.0,
    load_s: float = 0.1,
    half_life_s: float = 4.0,
    seed: int = 0,
    warmup: Sequence[int] = (),
    pause_s: float = 0.0,
) -> PinnedRun:
    """Replay ``trace`` (arm index per request, one every ``1 / rate_per_s`` seconds)
    after ``warmup`` (not counted) and ``pause_s`` seconds without requests."""
    cache = CacheConfig(policy=policy, slots_per_replica=slots, demand_half_life_s=half_life_s)
    built = cache.policy.build()
    rng = np.random.default_rng(seed)
    clock = ManualClock(0.0)
    executor = InMemoryExecutor({REPLICA: slots}, load=lambda _r, _a: load_s)
    controller = CacheController(
        built.policy,
        executor,
        built.schedule,
        clock,
        cache.demand_tracker(1, rng),
        FixedScorer(np.zeros((len(arms), 1))),
        arms,
        PagingCostModel.from_measured(
            dict.fromkeys(arms, load_s), cache.latency_weight_per_s, sigma_log=0.0
        ),
        rng,
    )
    hits = misses = max_resident = 0

    def serve(t: float, a: int) -> bool:
        nonlocal max_resident
        clock.now = t
        controller.tick()
        name = arms[a]
        hit = executor.is_resident(REPLICA, name)
        if hit:
            executor.touch(REPLICA, name)
        else:
            if built.schedule is None:  # reactive: the policy's victim makes room
                controller.page_in(REPLICA, name)
            else:
                admit(executor, name, slots, controller.admission())
        controller.record_access(REPLICA, name, hit)
        controller.observe(np.zeros((1, 1)), [name])
        max_resident = max(max_resident, len(executor.resident(REPLICA)))
        return hit

    for i, a in enumerate(warmup):
        serve(i / rate_per_s, a)
    start = len(warmup) / rate_per_s
    for t in np.arange(start, start + pause_s, TICK_S):  # the controller ticks meanwhile
        clock.now = float(t)
        controller.tick()
    start += pause_s
    first = len(controller.history)  # epochs from here on count
    for i, a in enumerate(trace):
        hit = serve(start + i / rate_per_s, a)
        hits += hit
        misses += not hit
    counted = controller.history[first:]
    plans = [
        (r.started_at, r.plan.residency.get(REPLICA, ())) for r in counted if r.plan is not None
    ]
    return PinnedRun(
        policy=built.policy.name,
        requests=len(trace),
        hits=hits,
        misses=misses,
        prefetches=sum(r.page_ins for r in counted),
        plans=plans,
        max_resident=max_resident,
    )


def admit(
    executor: InMemoryExecutor, adapter: str, slots: int, values: Mapping[str, float] | None
) -> None:
    """A planned replica's miss: keep ``adapter`` if a slot is free or it is worth more
    than the least valued resident one (which it replaces); else a one-off load."""
    resident = executor.resident(REPLICA)
    if len(resident) >= slots:
        victim = admission_victim(resident, adapter, values)
        if victim is None:
            return
        executor.evict(REPLICA, victim)
    executor.prefetch(REPLICA, adapter)
