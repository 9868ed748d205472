"""Policy push: ``LISTEN banditctl_policy`` on one connection, on a thread.

Snapshots are announced with ``NOTIFY banditctl_policy, '<version>'`` in the
transaction that saves them (``feedback.repositories.snapshots``). A gateway
replica holds one extra connection (outside its pool) listening on that
channel and calls ``on_notify(version)`` for each message; the gateway then
loads the new policy at once instead of at its next poll. When the connection
cannot be opened or is lost, the thread tries again with backoff while polling
(``gateway.policy_refresh_s``) carries on; after each (re)connect it calls
``on_notify(None)`` so that a version published while nobody listened is
picked up too. :attr:`PolicyListener.health` beats on every turn of a live
connection (at least every ``wait_s``) and counts each lost or refused one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import URL, create_engine
from sqlalchemy.pool import NullPool

from feedback.loop_health import LoopHealth
from feedback.repositories import snapshots

log = logging.getLogger(__name__)

# libpq settings of the listening connection: give up connecting after a few seconds,
# and let TCP keepalives notice a server that vanished without closing the socket
CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


def _version(payload: str) -> int | None:
    try:
        return int(payload)
    except ValueError:
        return None


class PolicyListener:
    """``on_notify`` runs on the listener's thread: keep it short (hand over and return)."""

    def __init__(
        self,
        url: str | URL,
        on_notify: Callable[[int | None], None],
        *,
        wait_s: float = 0.5,
        max_backoff_s: float = 5.0,
        stale_after_s: float = 60.0,
    ) -> None:
        self.engine = create_engine(url, poolclass=NullPool, connect_args=CONNECT_ARGS)
        self.on_notify = on_notify
        self.wait_s = wait_s
        self.max_backoff_s = max_backoff_s
        self.connected = False
        self.connects = 0
        self.notifications = 0
        self.backend_pid: int | None = None
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.health = LoopHealth("policy_listener", stale_after_s=stale_after_s)

    def start(self) -> PolicyListener:
        if self._thread is None:
            thread = threading.Thread(target=self._run, name="policy-listener", daemon=True)
            self._thread = thread
            self.health.alive = thread.is_alive
            thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.engine.dispose()

    @property
    def reconnects(self) -> int:
        return max(0, self.connects - 1)

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            lost = False
            try:
                self._listen()
            except Exception as exc:  # down: poll on, and try again
                lost = self.connected
                if lost:  # a working connection was lost: retry soon
                    backoff = 0.1
                self.last_error = repr(exc)[:500]
                self.health.failed(exc)
                log.warning("policy listener: %s; retrying in %.1fs", self.last_error, backoff)
            self.connected = False
            self.backend_pid = None
            if lost:  # the refresher polls slowly only while this listens: wake it
                self.on_notify(None)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)

    def _listen(self) -> None:
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            snapshots.listen_policy(conn)
            driver = conn.connection.driver_connection
            assert driver is not None
            self.backend_pid = int(driver.info.backend_pid)
            self.connected = True
            self.connects += 1
            self.on_notify(None)  # catch up: a version may have landed while not listening
            while not self._stop.is_set():
                self.health.beat("listening")
                for note in driver.notifies(timeout=self.wait_s):
                    if note.channel == snapshots.POLICY_CHANNEL:
                        self.notifications += 1
                        self.on_notify(_version(note.payload))
