"""What the router needs to know about adapter residency: the paging price.

Under a planned cache policy, an arm whose adapter is resident on no replica
pays a page-in on the request path; the router subtracts its expected cost in
reward units (POLAR's fast scale) before choosing.
"""

from __future__ import annotations

from collections.abc import Iterable

from cache_manager.fake_adapter import FakeAdapterSpec
from cache_manager.paging import PagingCostModel
from controlplane.config import BanditConfig


def paging_model(config: BanditConfig) -> PagingCostModel:
    """Load-time model of the configured adapters, priced by the cache config."""
    mib = {
        adapter: FakeAdapterSpec(adapter, rank=config.cache.adapter_rank).nbytes / 2**20
        for adapter in set(config.adapter_arms.values())
    }
    return PagingCostModel(adapter_mib=mib, latency_weight_per_s=config.cache.latency_weight_per_s)


def paging_penalties(config: BanditConfig, resident: Iterable[str]) -> dict[str, float]:
    """Per adapter arm resident nowhere: the expected reward lost to paging it in."""
    if config.cache.policy == "lru" or not config.adapter_arms:
        return {}
    held = set(resident)
    model = paging_model(config)
    return {arm: model.penalty(a) for arm, a in config.adapter_arms.items() if a not in held}
