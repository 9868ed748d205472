"""Client traffic for the cluster tests: chat completions over HTTP (httpx) through one or
more Serve proxies, each answer's user feedback posted back with its feedback token,
every request recorded (answered or not) so that the database can be checked for it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from learners.datasets import RoutingDataset


@dataclass
class Sent:
    url: str
    started: float  # time.monotonic()
    seconds: float
    status: int | None  # None: no HTTP answer (connection error, timeout)
    request_id: str | None = None  # the decision's UUID (x-banditctl-request-id), if answered
    arm: str | None = None
    policy_version: int | None = None
    feedback_status: int | None = None
    error: str | None = None


@dataclass
class Traffic:
    """Requests from ``ds`` sent to ``urls()`` (round robin, re-read per request, so a
    test can drop a proxy while traffic flows) by ``concurrency`` threads."""

    ds: RoutingDataset
    models: list[str]
    key: str
    urls: Callable[[], list[str]]
    concurrency: int = 4
    timeout_s: float = 30.0
    seed: int = 0
    sent: list[Sent] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _n: int = 0

    def one(self, http: httpx.Client, j: int) -> Sent:
        urls = self.urls()
        url = urls[j % len(urls)]
        rng = np.random.default_rng((self.seed, j))
        i = int(rng.integers(0, len(self.ds)))
        req = self.ds.requests[i]
        body = {
            "model": "auto",
            "messages": req["messages"],
            "metadata": {"replay_row": i, "task": str(self.ds.tasks[i])},
        }
        t0 = time.monotonic()
        try:
            r = http.post(
                url + "/v1/chat/completions",
                json=body,
                headers={"authorization": f"Bearer {self.key}"},
            )
        except httpx.HTTPError as exc:
            return Sent(url, t0, time.monotonic() - t0, None, error=repr(exc)[:300])
        s = Sent(url, t0, time.monotonic() - t0, r.status_code)
        s.request_id = r.headers.get("x-banditctl-request-id")
        if r.status_code != 200:
            s.error = r.text[:300]
            return s
        meta = r.json()["banditctl"]
        s.arm, s.policy_version = meta["arm"], int(meta["policy_version"])
        if meta["request_id"] != s.request_id:  # the body's id is the decision's key
            s.error = (
                f"x-banditctl-request-id {s.request_id} "
                f"but banditctl.request_id {meta['request_id']}"
            )
            s.request_id = meta["request_id"]
        quality = float(self.ds.quality[i, self.models.index(meta["arm"])])
        try:
            fb = http.post(
                url + "/v1/feedback",
                json={
                    "request_id": r.json()["id"],  # the completion's own id is accepted
                    "quality": quality,
                    "source": "cluster-test",
                    "feedback_token": meta["feedback_token"],
                },
            )
            s.feedback_status = fb.status_code
            if fb.status_code != 200:
                s.error = f"feedback {fb.status_code}: {fb.text[:200]}"
        except httpx.HTTPError as exc:
            s.error = f"feedback: {exc!r}"[:300]
        return s

    def _record(self, s: Sent) -> None:
        with self._lock:
            self.sent.append(s)

    def _next(self) -> int:
        with self._lock:
            self._n += 1
            return self._n

    def run(self, n: int) -> list[Sent]:
        """Send ``n`` requests and wait for them; what they got."""
        start = len(self.sent)
        with (
            httpx.Client(timeout=self.timeout_s) as http,
            ThreadPoolExecutor(self.concurrency) as pool,
        ):
            for s in pool.map(lambda _: self.one(http, self._next()), range(n)):
                self._record(s)
        return self.sent[start:]

    def start(self, max_requests: int = 5000) -> None:
        """Keep sending from background threads until :meth:`stop` (or ``max_requests``
        more)."""
        self._stop.clear()
        limit = self._n + max_requests

        def loop() -> None:
            with httpx.Client(timeout=self.timeout_s) as http:
                while not self._stop.is_set() and self._n < limit:
                    self._record(self.one(http, self._next()))

        self._threads = [
            threading.Thread(target=loop, daemon=True) for _ in range(self.concurrency)
        ]
        for t in self._threads:
            t.start()

    def stop(self) -> list[Sent]:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout_s + 5)
        return list(self.sent)

    def since(self, t: float) -> list[Sent]:
        with self._lock:
            return [s for s in self.sent if s.started >= t]


def summary(sent: list[Sent]) -> dict[str, Any]:
    ok = [s for s in sent if s.status == 200]
    return {
        "requests": len(sent),
        "ok": len(ok),
        "failed": len(sent) - len(ok),
        "feedback_ok": sum(1 for s in ok if s.feedback_status == 200),
        "arms": sorted({s.arm for s in ok if s.arm}),
        "statuses": sorted({str(s.status) for s in sent}),
        "p50_s": float(np.median([s.seconds for s in ok])) if ok else None,
    }
