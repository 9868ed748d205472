"""One seeded run of one policy over a scenario's request trace.

The run wires the real pieces together: the policy and its epoch schedule, the
:class:`~cache_manager.controller.CacheController` on a simulated clock, an
:class:`~cache_manager.executor.InMemoryExecutor` as the replicas, the LinUCB
scorer learning in batches (the oracle gets the true parameters instead), and the
cache-aware (or plain) router. Every request is routed to a replica holding the
chosen adapter, or paged in where the policy says. Reward = observed quality minus
the objective's price of any load on the request path; prefetches at epoch
boundaries are off the request path but count as page-ins and paging time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cache_manager.clock import ManualClock
from cache_manager.config import CachePolicyConfig
from cache_manager.controller import CacheController
from cache_manager.executor import InMemoryExecutor
from cache_manager.plan import PlanStatus
from cache_manager.router import CacheAwareRouter
from cache_manager.scorer import ArmScorer, FixedScorer, LinUCBScorer
from cache_manager.sim.scenarios import World


@dataclass(frozen=True)
class RunResult:
    policy: str
    seed: int
    requests: int
    mean_reward: float
    page_ins: int
    prefetches: int
    paging_s: float
    hits: int
    expected_reward: np.ndarray  # (T,) expected reward of each decision
    epochs: int
    epochs_failed: int
    max_resident: int  # most adapters ever resident on one replica
    capacity: int

    @property
    def hit_rate(self) -> float:
        return self.hits / self.requests


def make_scorer(world: World, truth: bool) -> ArmScorer:
    s = world.scenario
    if truth:
        return FixedScorer(world.theta)
    return LinUCBScorer(world.arms, world.theta.shape[1], ridge=s.ridge)


def run_policy(world: World, config: CachePolicyConfig, seed: int) -> RunResult:
    s = world.scenario
    rng = np.random.default_rng([seed, 1])
    paging_rng = np.random.default_rng([seed, 2])
    cache = s.cache_config(config)
    built = cache.policy.build(hindsight=world.hindsight)
    policy = built.policy
    scorer = make_scorer(world, built.needs_truth)
    clock = ManualClock(float(world.times[0]))
    replicas = {f"replica-{r}": cache.slots_per_replica for r in range(s.replicas)}
    paging = world.paging
    executor = InMemoryExecutor(replicas, load=lambda _r, a: paging.sample_s(a, paging_rng))
    demand = cache.demand_tracker(world.theta.shape[1], rng)
    controller = CacheController(
        policy, executor, built.schedule, clock, demand, scorer, world.arms, paging, rng
    )
    router = CacheAwareRouter(alpha=0.0 if built.needs_truth else s.alpha, rule=built.rule)
    arms = world.arms
    index = {a: i for i, a in enumerate(arms)}
    penalty = controller.penalty
    weight = cache.latency_weight_per_s

    t_total = s.horizon
    expected = np.empty(t_total)
    chosen = np.empty(t_total, dtype=np.int64)
    quality = np.empty(t_total)
    reward_sum = 0.0
    page_ins = hits = 0
    paging_s = 0.0
    max_resident = 0
    mask_version = -1
    resident_anywhere = np.zeros(len(arms), dtype=bool)
    for b0 in range(0, t_total, s.batch):
        b1 = min(b0 + s.batch, t_total)
        clock.now = float(world.times[b0])
        controller.tick()
        X = world.contexts[b0:b1]
        mean, width = scorer.estimate(X)
        true_mean = X @ world.theta.T
        choices = np.zeros(b1 - b0, dtype=np.int64)
        choices_version = -1
        for i in range(b1 - b0):
            t = b0 + i
            clock.now = float(world.times[t])
            if executor.version != mask_version:
                resident_anywhere = np.array([bool(executor.where.get(a)) for a in arms])
                mask_version = executor.version
                max_resident = max(max_resident, *(len(executor.resident(r)) for r in replicas))
            if choices_version != mask_version:
                # the router's choices for the rest of the batch, until residency changes
                choices[i:] = router.choose_many(mean[i:], width[i:], resident_anywhere, penalty)
                choices_version = mask_version
            forced = policy.forced_arm(rng)
            a = index[forced] if forced is not None else int(choices[i])
            name = arms[a]
            holders = executor.where.get(name)
            load_s = 0.0
            if holders:
                replica = (
                    min(holders)
                    if len(holders) == 1
                    else sorted(holders)[int(rng.integers(len(holders)))]
                )
                hit = True
            else:
                replica = controller.choose_replica(name)
                loaded = controller.page_in(replica, name)
                load_s = loaded if loaded is not None else paging.sample_s(name, paging_rng)
                page_ins += 1
                paging_s += load_s
                hit = False
            hits += hit
            controller.record_access(replica, name, hit)
            q = true_mean[i, a] + world.noise[t]
            chosen[t], quality[t] = a, q
            reward_sum += q - weight * load_s
            expected[t] = true_mean[i, a] - (0.0 if hit else penalty[a])
        scorer.update(X, chosen[b0:b1], quality[b0:b1])
        controller.observe(X)
    for r in replicas:
        max_resident = max(max_resident, len(executor.resident(r)))
    prefetches = sum(rec.page_ins for rec in controller.history)
    prefetch_s = sum(rec.load_s for rec in controller.history)
    return RunResult(
        policy=policy.name,
        seed=seed,
        requests=t_total,
        mean_reward=reward_sum / t_total,
        page_ins=page_ins + prefetches,
        prefetches=prefetches,
        paging_s=paging_s + prefetch_s,
        hits=hits,
        expected_reward=expected,
        epochs=len(controller.history),
        epochs_failed=sum(rec.status is PlanStatus.FAILED for rec in controller.history),
        max_resident=max_resident,
        capacity=cache.slots_per_replica,
    )
