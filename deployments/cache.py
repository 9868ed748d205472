"""CacheControllerService: POLAR epochs on Ray Serve (one replica), running
:class:`controlplane.cache_core.CacheCore` on a thread every ``cache.tick_s``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from controlplane.cache_core import CacheCore, PoolExecutor
from controlplane.config import BanditConfig
from deployments.pool import pool_name
from feedback.database import make_engine
from feedback.loop_health import LoopHealth

log = logging.getLogger(__name__)


class _PoolCalls:
    """``PoolCalls`` through a pool deployment's handle (blocking, with a timeout)."""

    def __init__(self, handle: DeploymentHandle[Any], timeout_s: float = 30.0) -> None:
        self.handle = handle
        self.timeout_s = timeout_s

    def resident(self) -> Sequence[str]:
        result: Sequence[str] = self.handle.resident.remote().result(timeout_s=self.timeout_s)
        return result

    def prefetch(self, adapter: str) -> float:
        return float(self.handle.prefetch.remote(adapter).result(timeout_s=self.timeout_s))

    def evict(self, adapter: str) -> None:
        self.handle.evict.remote(adapter).result(timeout_s=self.timeout_s)

    def set_admission(self, values: Mapping[str, float]) -> None:
        self.handle.set_admission.remote(dict(values)).result(timeout_s=self.timeout_s)

    def residency_stats(self) -> Mapping[str, Any]:
        stats: Mapping[str, Any] = self.handle.residency_stats.remote().result(
            timeout_s=self.timeout_s
        )
        return stats


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class CacheControllerService:
    def __init__(
        self, config: BanditConfig, database_url: str, pools: dict[str, DeploymentHandle[Any]]
    ) -> None:
        self.config = config
        self.engine = make_engine(database_url, pool_size=2)
        adapter_models = {a.model for a in config.arms if a.adapter}
        replicas = {pool_name(m): _PoolCalls(h) for m, h in pools.items() if m in adapter_models}
        executor = PoolExecutor(replicas, config.cache.slots_per_replica)
        self.core = CacheCore(
            config,
            self.engine,
            executor,
            {a.name: pool_name(a.model) for a in config.arms if a.adapter},
            traffic=executor.traffic,
            load_times=executor.load_times,
            admit=executor.set_admission,
        )
        self.error: str | None = None
        self.health = LoopHealth("cache_controller", stale_after_s=config.gateway.loop_stale_s)
        self._stop = threading.Event()
        thread = threading.Thread(target=self._run, name="cache-controller", daemon=True)
        self.health.alive = thread.is_alive
        thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.core.step()
                self.health.beat("planning")
            except Exception as exc:  # keep planning after a transient failure
                self.health.failed(exc)
                self.error = self.health.last_error
                log.exception("cache controller tick failed")
            self._stop.wait(self.config.cache.tick_s)

    def status(self) -> dict[str, Any]:
        return {**self.core.status(), "error": self.error, "health": self.health.report()}

    def check_health(self) -> None:
        """Serve restarts the replica when its controller thread died."""
        if not self.health.report()["alive"]:
            raise RuntimeError("the cache controller thread is dead")

    def __del__(self) -> None:
        self._stop.set()
