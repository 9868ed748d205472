"""``build_app(config, database_url, secret)``: the Serve application graph.

``instance_id``: what the gateway's ``/healthz`` reports, so that whoever deployed
the app can tell its gateway from any other server on the port."""

from __future__ import annotations

from typing import Any

from controlplane.config import BanditConfig
from deployments.gateway import Gateway
from deployments.learner import LearnerService
from deployments.pool import ModelPool, pool_actor_options, pool_name


def build_app(
    config: BanditConfig, database_url: str, secret: str, *, instance_id: str | None = None
) -> Any:
    pools = {
        model: ModelPool.options(  # type: ignore[attr-defined]
            name=pool_name(model),
            num_replicas=config.pools.replicas,
            max_ongoing_requests=config.pools.max_ongoing_requests,
            ray_actor_options=pool_actor_options(config, model),
        ).bind(config, model)
        for model in config.base_models
    }
    learner = LearnerService.bind(config, database_url)  # type: ignore[attr-defined]
    cache = None
    if config.cache_planned:
        from deployments.cache import CacheControllerService

        cache = CacheControllerService.bind(config, database_url, pools)  # type: ignore[attr-defined]
    return Gateway.options(  # type: ignore[attr-defined]
        num_replicas=config.gateway.replicas,
        max_ongoing_requests=config.gateway.max_ongoing_requests,
    ).bind(config, database_url, secret, pools, learner, cache, instance_id)
