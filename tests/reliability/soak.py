"""Steady load on a deployed control plane for a while, with the resident memory (RSS) of
its gateway, learner and pool processes sampled along the way: the soak of
``bench/bench_soak.py`` and of the short soak test in ``test_serve_faults.py``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tests.reliability.deployed_app import replica_processes, rss_mb
from tests.reliability.load import Call, Load, percentile_ms, tally

ROLES = {"gateway": ("Gateway",), "learner": ("LearnerService",)}


def roles(models: list[str]) -> dict[str, tuple[str, ...]]:
    """Which deployments each measured role sums: the gateway, the learner, the pools."""
    from deployments.pool import pool_name

    return {**ROLES, "pools": tuple(pool_name(m) for m in models)}


def rss_by_role(groups: dict[str, tuple[str, ...]]) -> dict[str, float]:
    return {
        role: round(rss_mb([p for d in deployments for p in replica_processes(d)]), 1)
        for role, deployments in groups.items()
    }


@dataclass
class Soak:
    concurrency: int
    seconds: float
    warmup_s: float
    calls: list[Call]
    rss: list[tuple[float, dict[str, float]]] = field(default_factory=list)  # (t, MB by role)

    @property
    def measured(self) -> list[Call]:
        """The calls after the warm-up."""
        t0 = min(c.started for c in self.calls) if self.calls else 0.0
        return [c for c in self.calls if c.started >= t0 + self.warmup_s]

    def growth(self) -> dict[str, float]:
        """RSS at the end minus RSS after the warm-up, MB by role."""
        first, last = self.rss[0][1], self.rss[-1][1]
        return {role: round(last[role] - first[role], 1) for role in first}

    def summary(self) -> dict[str, Any]:
        calls = self.measured
        span = self.seconds - self.warmup_s
        ok = sum(1 for c in calls if c.answered)
        return {
            "concurrency": self.concurrency,
            "seconds": round(span, 1),
            **tally(calls),
            "throughput_rps": round(ok / span, 1) if span > 0 else None,
            "p50_ms": _round(percentile_ms(calls, 50)),
            "p99_ms": _round(percentile_ms(calls, 99)),
            "rss_start_mb": self.rss[0][1],
            "rss_end_mb": self.rss[-1][1],
            "rss_growth_mb": self.growth(),
        }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def soak(
    base_url: str,
    models: list[str],
    *,
    seconds: float,
    concurrency: int,
    warmup_s: float = 10.0,
    sample_every_s: float = 30.0,
    seed: int = 0,
    progress: Any = None,
) -> Soak:
    """Load ``base_url`` for ``seconds`` (the first ``warmup_s`` not counted), RSS sampled
    after the warm-up, every ``sample_every_s`` and at the end. ``progress``: called
    with each sample (time, MB by role)."""
    groups = roles(models)
    load = Load(base_url, concurrency=concurrency, seed=seed).start()
    t0 = time.monotonic()
    result = Soak(concurrency, seconds, warmup_s, [])
    time.sleep(warmup_s)
    next_sample = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= next_sample or now - t0 >= seconds:
            sample = (round(now - t0, 1), rss_by_role(groups))
            result.rss.append(sample)
            if progress is not None:
                progress(*sample)
            next_sample = now + sample_every_s
        if now - t0 >= seconds:
            break
        time.sleep(min(1.0, max(0.0, seconds - (now - t0))))
    result.calls = load.stop()
    return result
