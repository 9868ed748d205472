"""Scenarios: adapters, context clusters, quality per cluster, popularity over time.

Contexts are ``x = [1, e_c + noise]`` for a cluster ``c`` drawn from the popularity
at the request's arrival time, so an adapter's expected quality on cluster ``c`` is
``theta_a . x = Q[a, c]`` (plus the noise's share). Each cluster has one specialist
(quality ~0.9); a few generalists are good (~0.8) on three clusters each; every
other pair is mediocre (0.3 to 0.55). Clusters outnumber the slots, so which
adapters deserve residency depends on demand.

Popularity is a softmax of per-cluster logits:

* ``stationary``: fixed logits ``amplitude * N(0, 1)``;
* ``drift``: ``amplitude * sin(2 pi t / period_s + phase_c)``, random phases;
* ``shift``: fixed logits that are permuted at once at ``shift_at`` of the horizon.

Adapter ranks are drawn from ``ranks``; sizes follow
:class:`cache_manager.fake_adapter.FakeAdapterSpec` and load times
:class:`cache_manager.paging.PagingCostModel` (measured lognormal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cache_manager.config import CacheConfig, CachePolicyConfig
from cache_manager.paging import PagingCostModel


class ScenarioConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    n_adapters: int = Field(default=32, ge=15, le=64)
    n_clusters: int = Field(default=8, ge=1)
    n_generalists: int = Field(default=4, ge=0)
    replicas: int = Field(default=4, ge=1)
    slots: int = Field(default=2, ge=1)
    rate_per_s: float = Field(default=100.0, gt=0)
    horizon: int = Field(default=100_000, ge=1)
    context_noise: float = Field(default=0.15, ge=0)
    reward_noise: float = Field(default=0.1, ge=0)
    popularity: Literal["stationary", "drift", "shift"] = "drift"
    amplitude: float = Field(default=1.5, ge=0)
    period_s: float = Field(default=400.0, gt=0)
    shift_at: float = Field(default=0.5, gt=0, lt=1)
    ranks: tuple[int, ...] = (8, 16, 32, 64)
    latency_weight_per_s: float = Field(default=5.0, ge=0)
    alpha: float = Field(default=1.0, ge=0, description="router's UCB width multiplier")
    ridge: float = Field(default=1.0, gt=0)
    batch: int = Field(default=32, ge=1, description="requests between learner updates")

    def cache_config(self, policy: CachePolicyConfig) -> CacheConfig:
        """The controller's knobs in this scenario: its slots and clusters, demand
        forgotten with a half-life of an eighth of the popularity period."""
        return CacheConfig(
            policy=policy,
            slots_per_replica=self.slots,
            clusters=self.n_clusters,
            demand_half_life_s=self.period_s / 8,
            latency_weight_per_s=self.latency_weight_per_s,
        )


SCENARIOS: dict[str, ScenarioConfig] = {
    s.name: s
    for s in (
        ScenarioConfig(
            name="drift",
            description="32 adapters, 8 clusters, 4 replicas x 2 slots, popularity drifting with a 400 s period",
            popularity="drift",
        ),
        ScenarioConfig(
            name="shift",
            description="as drift, but fixed popularity that is permuted at once halfway",
            popularity="shift",
        ),
        ScenarioConfig(
            name="stationary",
            description="as drift, with fixed popularity",
            popularity="stationary",
        ),
    )
}


def get_scenario(name: str, **overrides: object) -> ScenarioConfig:
    if name not in SCENARIOS:
        raise KeyError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    return SCENARIOS[name].model_copy(update=overrides) if overrides else SCENARIOS[name]


@dataclass(frozen=True)
class World:
    """One seeded draw of a scenario: the truth, the request trace, the paging model."""

    scenario: ScenarioConfig
    arms: tuple[str, ...]
    theta: np.ndarray  # (N, d)
    centers: np.ndarray  # (C, d)
    share: np.ndarray  # (T, C) popularity at each request
    times: np.ndarray  # (T,) arrival times
    clusters: np.ndarray  # (T,)
    contexts: np.ndarray  # (T, d)
    noise: np.ndarray  # (T,) reward noise
    paging: PagingCostModel

    def hindsight(self, start: float, end: float) -> tuple[np.ndarray, np.ndarray]:
        """True centroids and the expected requests per cluster in [start, end)."""
        lo, hi = np.searchsorted(self.times, [start, end])
        return self.centers, self.share[lo:hi].sum(axis=0)


def quality_table(s: ScenarioConfig, rng: np.random.Generator) -> np.ndarray:
    """Q (N, C): specialist per cluster, generalists on three clusters, the rest mediocre."""
    n, c = s.n_adapters, s.n_clusters
    q = rng.uniform(0.3, 0.55, size=(n, c))
    order = rng.permutation(n)
    for k in range(c):
        q[order[k % n], k] = rng.uniform(0.88, 0.95)
    for g in range(min(s.n_generalists, max(n - c, 0))):
        covered = rng.choice(c, size=min(3, c), replace=False)
        q[order[c + g], covered] = rng.uniform(0.76, 0.82, size=len(covered))
    return q


def popularity_logits(s: ScenarioConfig, times: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    c = s.n_clusters
    if s.popularity == "drift":
        phase = rng.uniform(0, 2 * np.pi, size=c)
        return np.asarray(
            s.amplitude * np.sin(2 * np.pi * times[:, None] / s.period_s + phase[None, :])
        )
    base = s.amplitude * rng.standard_normal(c)
    logits = np.tile(base, (len(times), 1))
    if s.popularity == "shift":
        at = s.shift_at * s.horizon / s.rate_per_s
        logits[times >= at] = base[rng.permutation(c)]
    return logits


def build_world(s: ScenarioConfig, seed: int) -> World:
    rng = np.random.default_rng([seed, 0])
    n, c, t = s.n_adapters, s.n_clusters, s.horizon
    arms = tuple(f"adapter-{i:02d}" for i in range(n))
    q = quality_table(s, rng)
    theta = np.hstack([np.zeros((n, 1)), q])
    centers = np.hstack([np.ones((c, 1)), np.eye(c)])
    times = np.arange(t) / s.rate_per_s
    logits = popularity_logits(s, times, rng)
    share = np.exp(logits - logits.max(axis=1, keepdims=True))
    share /= share.sum(axis=1, keepdims=True)
    u = rng.random(t)
    clusters = np.minimum((share.cumsum(axis=1) < u[:, None]).sum(axis=1), c - 1)
    contexts = centers[clusters].copy()
    contexts[:, 1:] += s.context_noise * rng.standard_normal((t, c))
    noise = s.reward_noise * rng.standard_normal(t)
    ranks = rng.choice(np.array(s.ranks), size=n)
    paging = PagingCostModel.from_ranks(
        dict(zip(arms, ranks.tolist(), strict=True)), s.latency_weight_per_s
    )
    return World(s, arms, theta, centers, share, times, clusters, contexts, noise, paging)
