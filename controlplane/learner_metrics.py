"""What the learner knows about its own progress, kept in its memory for ``/metrics``.

The learner credits every reward event, so it counts them as it goes: events
and the sums of each reward component and of the objective's reward, per arm
and credit kind (:class:`CreditTally`); how long ratings waited to be credited
(:class:`WaitHistogram`); its update rate over the last minute
and how far behind the ready events it is (:class:`Progress`). Gateways fetch
these through the learner's Serve handle (``LearnerService.metrics``), so no
scrape aggregates the decision log. Counters start at zero with the learner
process (Prometheus's ``rate`` and ``increase`` handle the reset); events
released by a restart or a rollback and credited again count again.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from feedback.records import RewardRow

COMPONENTS = ("quality", "energy_j", "latency_ms", "cost_usd")
_FIELDS = ("events", "reward", *COMPONENTS)


class CreditTally:
    """Per (arm, credit kind): events credited, the sum of the objective's reward over
    those credited with a quality, and the sum of each raw component (a missing
    quality counts 0). Thread-safe: the learner thread adds, a handle call reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sums: dict[tuple[str, str], list[float]] = {}

    def add(self, rows: Sequence[RewardRow], rewarded: Sequence[RewardRow], reward: Any) -> None:
        """``rewarded``: the rows with a quality, in order, and ``reward`` their scalar rewards."""
        with self._lock:
            sums = self._sums
            for r in rows:
                key = (r.arm_id, r.credit_kind)
                s = sums.get(key)
                if s is None:
                    s = sums[key] = [0.0] * len(_FIELDS)
                s[0] += 1.0
                s[2] += r.quality or 0.0
                s[3] += r.energy_j
                s[4] += r.latency_ms
                s[5] += r.cost_usd
            for r, value in zip(rewarded, np.asarray(reward).tolist(), strict=True):
                sums[(r.arm_id, r.credit_kind)][1] += value

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._sums.items())
        return [
            {"arm": arm, "kind": kind, **dict(zip(_FIELDS, v, strict=True))}
            for (arm, kind), v in items
        ]


# seconds from a rating's arrival to its credit: a poll (0.25 s) and a log flush (1 s) when
# the learner keeps up; a sweep (30 s) when a rating slipped behind the claim frontier
FEEDBACK_WAIT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)


class WaitHistogram:
    """How long ratings waited to be credited: a Prometheus histogram's buckets, count and
    sum, kept in the learner's memory. Thread-safe: the learner thread adds, a handle call
    reads."""

    def __init__(self, buckets: Sequence[float] = FEEDBACK_WAIT_BUCKETS) -> None:
        self.buckets = tuple(float(b) for b in buckets)
        self._lock = threading.Lock()
        self._counts = [0] * (len(self.buckets) + 1)  # the last: above every bucket
        self._sum = 0.0

    def add(self, waits: Sequence[float]) -> None:
        with self._lock:
            for w in waits:
                self._counts[bisect.bisect_left(self.buckets, w)] += 1
                self._sum += w

    def snapshot(self) -> dict[str, Any]:
        """``le``: each bucket's bound and the count at or under it (cumulative), then
        ``count`` and ``sum``: the shape of a Prometheus histogram."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative = list(itertools.accumulate(counts))
        return {
            "le": [[b, c] for b, c in zip(self.buckets, cumulative, strict=False)],
            "count": cumulative[-1],
            "sum": total,
        }


class Progress:
    """Events applied per second over ``window_s``, and the learner's lag.

    Lag: when a claim comes back short of a full batch the learner has caught up
    with every ready event (lag 0, no query); while claims come back full it is
    behind, and :meth:`lag_due` asks for the real count at most every
    ``lag_every_s`` (one query of the ready events, on the learner's thread), and
    never more than ``max_share`` of the time: a count that took 1 s waits 20 s.
    """

    def __init__(
        self, window_s: float = 60.0, lag_every_s: float = 5.0, max_share: float = 0.05
    ) -> None:
        self.window_s = window_s
        self.lag_every_s = lag_every_s
        self.max_share = max_share
        self._samples: deque[tuple[float, int]] = deque()
        self.lag: dict[str, float] = {"events_behind": 0.0, "seconds_behind": 0.0}
        self._lag_at: float | None = None
        self._lag_wait = lag_every_s

    def stepped(self, now: float, events_applied: int) -> None:
        self._samples.append((now, events_applied))
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()

    def rate(self, now: float) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, e0), (_t1, e1) = self._samples[0], self._samples[-1]
        span = max(now, _t1) - t0
        return max(0.0, (e1 - e0) / span) if span > 0 else 0.0

    def caught_up(self, now: float) -> None:
        self.lag = {"events_behind": 0.0, "seconds_behind": 0.0}
        self._lag_at = now

    def lag_due(self, now: float) -> bool:
        return self._lag_at is None or now - self._lag_at >= self._lag_wait

    def measured(self, now: float, lag: dict[str, float], took_s: float = 0.0) -> None:
        """``lag`` counted at ``now`` by a query that took ``took_s``."""
        self.lag = dict(lag)
        self._lag_at = now
        self._lag_wait = max(self.lag_every_s, took_s / self.max_share)
