"""LearnerService: the single learner replica, running :class:`LearnerLoop` on the thread
of a :class:`LearnerRunner` (which recovers from any error and reports its health)."""

from __future__ import annotations

import logging
import time
from typing import Any

from ray import serve

from controlplane.config import BanditConfig
from controlplane.learner_loop import LearnerLoop
from controlplane.learner_runner import LearnerRunner
from feedback.database import make_engine

log = logging.getLogger(__name__)


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class LearnerService:
    def __init__(self, config: BanditConfig, database_url: str) -> None:
        self.config = config
        self.engine = make_engine(database_url, pool_size=2)
        self.loop = LearnerLoop(self.engine, config)
        self.runner = LearnerRunner(self.loop, stale_after_s=config.gateway.loop_stale_s).start()

    @property
    def error(self) -> str | None:
        return self.runner.error

    def status(self) -> dict[str, Any]:
        return {
            "version": self.loop.version,
            "watermark": self.loop.watermark,
            "events_applied": self.loop.events_applied,
            "pending": self.loop.pending,
            "stats": dict(self.loop.stats),
            "releases": self.loop.release_watch.status(),
            "shadows": self.loop.shadows.status(),
            "error": self.error,
            "health": self.runner.health.report(),
            "time": time.time(),
        }

    def metrics(self) -> dict[str, Any]:
        """What ``/metrics`` shows of the learner (gateways fetch it, cached briefly)."""
        return {**self.loop.metrics(), "error": self.error}

    def check_health(self) -> None:
        """Serve restarts the replica when its learner thread died."""
        if not self.runner.health.report()["alive"]:
            raise RuntimeError("the learner thread is dead")

    def __del__(self) -> None:
        self.runner.stop(timeout_s=1.0)
