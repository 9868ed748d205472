"""The learner's background loop: :class:`LearnerLoop` steps on a thread that recovers
from any error.

One turn (:meth:`LearnerRunner.turn`): without the lock, try to take it and resume from
the latest snapshot (another learner holding it: ``standby``, nothing learned); with it,
one step. A step that raises (a lost connection, a claim made ahead that failed, the
lock lost after a database restart) is counted in :attr:`LearnerRunner.health`, the loop
forgets its state and lock (:meth:`LearnerLoop.recover`) and the next turns take the lock
again and resume, backing off while the database is away. ``LearnerService`` (Ray Serve)
runs one; tests drive :meth:`turn` directly.
"""

from __future__ import annotations

import logging
import threading

from controlplane.learner_loop import LearnerBusy, LearnerLoop
from feedback.loop_health import LoopHealth

log = logging.getLogger(__name__)


class LearnerRunner:
    def __init__(
        self,
        loop: LearnerLoop,
        *,
        stale_after_s: float = 60.0,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.loop = loop
        self.poll_s = loop.config.learner_service.poll_interval_s
        self.max_backoff_s = max_backoff_s
        self.health = LoopHealth("learner", stale_after_s=stale_after_s)
        self.health.state = "starting"
        self.error: str | None = None
        self._backoff = self.poll_s
        self._started_once = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def turn(self) -> int | None:
        """One turn; returns events claimed, or None when nothing could be learned (no
        lock, or an error). Never raises."""
        if not self.loop.holding:
            try:
                self.loop.start()
            except LearnerBusy:
                self.health.state = "standby"  # no beat: a standby learner learns nothing
                return None
            except Exception as exc:
                self._failed(exc, "taking the learner lock and resuming failed")
                return None
            if self._started_once:
                self.health.restarted()
                log.info("learner recovered at version %d", self.loop.version)
            self._started_once = True
        try:
            n = self.loop.step()
        except Exception as exc:
            self._failed(exc, "learner step failed; recovering from the latest snapshot")
            self.loop.recover()
            return None
        self._backoff = self.poll_s
        self.health.beat("learning")
        return n

    def _failed(self, exc: Exception, what: str) -> None:
        self.health.failed(exc)
        self.health.state = "recovering"
        self.error = self.health.last_error
        log.warning("%s: %r", what, exc)

    # -- the thread -------------------------------------------------------

    def start(self) -> LearnerRunner:
        if self._thread is None:
            thread = threading.Thread(target=self._run, name="learner", daemon=True)
            self._thread = thread
            self.health.alive = thread.is_alive
            thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                n = self.turn()
            except BaseException as exc:  # turn() does not raise; keep the thread anyway
                log.exception("learner turn raised")
                self.health.failed(exc)
                n = None
            if n is None:
                if self.health.state == "standby":
                    self._stop.wait(1.0)
                else:
                    self._stop.wait(self._backoff)
                    self._backoff = min(self._backoff * 2, self.max_backoff_s)
            elif n < self.loop.config.learner_service.batch_size:
                # drained what was ready: wait for more, rather than claim again at once for
                # the few decisions that became ready meanwhile (a busy loop under load)
                self._stop.wait(self.poll_s)
        try:
            if self.loop.holding:
                self.loop.stop()
        except Exception:
            log.warning("stopping the learner failed", exc_info=True)
