"""LearnerService: the single learner replica, running :class:`LearnerLoop` on a thread."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ray import serve

from controlplane.config import BanditConfig
from controlplane.learner_loop import LearnerBusy, LearnerLoop
from feedback.database import make_engine

log = logging.getLogger(__name__)


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class LearnerService:
    def __init__(self, config: BanditConfig, database_url: str) -> None:
        self.config = config
        self.engine = make_engine(database_url, pool_size=2)
        self.loop = LearnerLoop(self.engine, config)
        self._stop = threading.Event()
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="learner", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poll = self.config.learner_service.poll_interval_s
        while not self._stop.is_set():
            try:
                self.loop.start()
                break
            except LearnerBusy:
                log.warning("another learner holds the lock; retrying")
                self._stop.wait(1.0)
        while not self._stop.is_set():
            try:
                if self.loop.step() == 0:
                    self._stop.wait(poll)
            except Exception as exc:  # keep learning after a transient DB error
                self.error = repr(exc)
                log.exception("learner step failed")
                self._stop.wait(min(5.0, poll * 4))

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
            "time": time.time(),
        }

    def metrics(self) -> dict[str, Any]:
        """What ``/metrics`` shows of the learner (gateways fetch it, cached briefly)."""
        return {**self.loop.metrics(), "error": self.error}

    def __del__(self) -> None:
        self._stop.set()
