"""Steady chat + feedback load over HTTP for the fault probes and the soak bench: a few
threads, each a closed loop (a chat completion, then its feedback with the answer's
token), every request recorded with what it got, so that a probe can count sent,
answered, refused and failed requests and check the database for each answered one."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

PROMPTS = (
    "Write a python function that sorts a list of ints and returns the sum.",
    "What is the capital of France?",
    "Summarize the plot of Hamlet in two sentences.",
    "Prove that the square root of two is irrational.",
    "Translate 'good morning' into German.",
    "Explain what a hash map is to a beginner.",
)


@dataclass
class Call:
    """One chat request and its feedback."""

    started: float  # time.monotonic()
    seconds: float
    status: int | None  # None: no HTTP answer (connection error, timeout)
    retry_after: bool = False  # a 503 carried Retry-After
    request_id: str | None = None
    arm: str | None = None
    feedback_status: int | None = None
    feedback_retry_after: bool = False
    feedback_token: str | None = None
    quality: float | None = None
    error: str | None = None

    @property
    def answered(self) -> bool:
        return self.status == 200

    @property
    def refused(self) -> bool:
        """Shed with 503 and Retry-After (the decision log's buffer was full)."""
        return self.status == 503 and self.retry_after


@dataclass
class Load:
    base_url: str
    concurrency: int = 4
    timeout_s: float = 30.0
    seed: int = 0
    # after a request that got no HTTP answer (nothing listens on the port), wait this long
    # before the next, as a client's retry backoff does, rather than spin
    backoff_s: float = 0.2
    feedback: bool = True
    calls: list[Call] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _n: int = 0

    def one(self, http: httpx.Client, j: int) -> Call:
        rng = np.random.default_rng((self.seed, j))
        prompt = PROMPTS[int(rng.integers(len(PROMPTS)))]
        body = {
            "model": "auto",
            "messages": [{"role": "user", "content": prompt}],
            "metadata": {"replay_row": int(rng.integers(0, 200))},
        }
        t0 = time.monotonic()
        try:
            r = http.post(self.base_url + "/v1/chat/completions", json=body)
        except httpx.HTTPError as exc:
            return Call(t0, time.monotonic() - t0, None, error=repr(exc)[:300])
        c = Call(t0, time.monotonic() - t0, r.status_code)
        c.retry_after = "retry-after" in r.headers
        c.request_id = r.headers.get("x-banditctl-request-id")
        if r.status_code != 200:
            c.error = r.text[:300]
            return c
        meta = r.json()["banditctl"]
        c.request_id, c.arm, c.feedback_token = (
            meta["request_id"],
            meta["arm"],
            meta["feedback_token"],
        )
        c.quality = round(float(rng.random()), 3)
        if self.feedback:
            self.post_feedback(http, c)
        return c

    def post_feedback(self, http: httpx.Client, c: Call) -> None:
        try:
            fb = http.post(
                self.base_url + "/v1/feedback",
                json={
                    "request_id": c.request_id,
                    "quality": c.quality,
                    "source": "probe",
                    "feedback_token": c.feedback_token,
                },
            )
        except httpx.HTTPError as exc:
            c.feedback_status, c.error = None, f"feedback: {exc!r}"[:300]
            return
        c.feedback_status = fb.status_code
        c.feedback_retry_after = "retry-after" in fb.headers
        if fb.status_code != 200:
            c.error = f"feedback {fb.status_code}: {fb.text[:200]}"

    def retry_feedback(self) -> int:
        """Post again every feedback that was not stored (as a client honouring
        Retry-After does); how many were retried."""
        todo = [c for c in self.snapshot() if c.answered and c.feedback_status != 200]
        with httpx.Client(timeout=self.timeout_s) as http:
            for c in todo:
                self.post_feedback(http, c)
        return len(todo)

    def start(self) -> Load:
        self._stop.clear()

        def loop() -> None:
            with httpx.Client(timeout=self.timeout_s) as http:
                while not self._stop.is_set():
                    with self._lock:
                        self._n += 1
                        j = self._n
                    c = self.one(http, j)
                    with self._lock:
                        self.calls.append(c)
                    if c.status is None:
                        self._stop.wait(self.backoff_s)

        self._threads = [
            threading.Thread(target=loop, name=f"load-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> list[Call]:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout_s * 2 + 5)
        return self.snapshot()

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)


def tally(calls: list[Call]) -> dict[str, Any]:
    """What a probe's table shows: sent, answered, refused (503 + Retry-After), other
    5xx, no answer at all, and the feedback counts."""
    answered = [c for c in calls if c.answered]
    return {
        "sent": len(calls),
        "answered": len(answered),
        "refused": sum(1 for c in calls if c.refused),
        "5xx": sum(1 for c in calls if c.status is not None and c.status >= 500 and not c.refused),
        "no_answer": sum(1 for c in calls if c.status is None),
        "other": sum(
            1 for c in calls if c.status is not None and c.status < 500 and c.status != 200
        ),
        "feedback_stored": sum(1 for c in answered if c.feedback_status == 200),
        "feedback_refused": sum(1 for c in answered if c.feedback_status == 503),
    }


def longest_gap(calls: list[Call], since: float, until: float) -> float:
    """The longest time in [since, until] with no request answered (by end time): how
    long the clients saw nothing served."""
    ends = sorted(c.started + c.seconds for c in calls if c.answered)
    points = [since, *(t for t in ends if since < t < until), until]
    return max(b - a for a, b in zip(points, points[1:], strict=False))


def percentile_ms(calls: list[Call], q: float) -> float | None:
    xs = [c.seconds for c in calls if c.answered]
    return float(np.percentile(np.array(xs) * 1000.0, q)) if xs else None
