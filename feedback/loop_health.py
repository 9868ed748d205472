"""Health of the background loops: the decision log writer, the learner, the policy
listener and refresher, the cache controller.

Each loop owns a :class:`LoopHealth` and calls :meth:`~LoopHealth.beat` after every turn
that did its work (an idle turn counts: nothing was due), :meth:`~LoopHealth.failed` when
a turn raised, and :meth:`~LoopHealth.restarted` when it started over after an error
(the learner's recovery, a writer turn resumed after an unexpected error). A loop is
healthy while its thread (or task) is alive and its last good turn is at most
``stale_after_s`` old (a loop not started, ``alive`` None, is neither); ``/healthz``
reports every loop and answers 503 when one is not healthy.

The error text kept here is :func:`public_error`'s: the exception's class and, for a
database error, only that the database failed, so that no database message (which may
quote data or name hosts) reaches an anonymous caller; the logs hold the full text.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

DEFAULT_STALE_AFTER_S = 60.0


def public_error(exc: BaseException) -> str:
    """What may be shown of ``exc`` to anyone: its class, and no database message."""
    name = type(exc).__name__
    module = type(exc).__module__
    if module.startswith(("sqlalchemy", "psycopg")):
        return f"{name}: database error"
    return name


class LoopHealth:
    """The health signal of one background loop (thread-safe; cheap to call each turn)."""

    def __init__(
        self,
        name: str,
        *,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
        alive: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.stale_after_s = stale_after_s
        self.alive = alive  # None: not started yet (not counted as dead)
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self.started_at = wall()
        self._last_beat = clock()  # a loop just created has not failed yet
        self.last_success: float | None = None  # wall time of the last good turn
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.errors = 0
        self.restarts = 0
        self.state: str | None = None  # what the loop says it is doing (e.g. "standby")

    def beat(self, state: str | None = None) -> None:
        with self._lock:
            self._last_beat = self._clock()
            self.last_success = self._wall()
            if state is not None:
                self.state = state

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = public_error(exc)
            self.last_error_at = self._wall()

    def restarted(self) -> None:
        with self._lock:
            self.restarts += 1

    def report(self) -> dict[str, Any]:
        with self._lock:
            age = self._clock() - self._last_beat
            started = self.alive is not None
            alive = self.alive is None or bool(self.alive())
            problem = None if alive else "dead"
            if started and alive and age > self.stale_after_s:
                problem = f"stuck: no good turn for {age:.0f}s"
            return {
                "healthy": problem is None,
                "problem": problem,
                "alive": alive,
                "state": self.state if started else "not started",
                "seconds_since_success": round(age, 3),
                "last_success": self.last_success,
                "last_error": self.last_error,
                "last_error_at": self.last_error_at,
                "errors": self.errors,
                "restarts": self.restarts,
            }
