"""Prometheus ``/metrics``: every figure from memory; no scrape aggregates the log.

What a scrape reads, and from where:

* this gateway replica's instruments (:mod:`controlplane.instruments`): request
  latency, time to first token, decision overhead, decisions by arm and route,
  fallbacks, 429s, budget refusals, feedback stored by source, policy updates;
* this replica's counters: requests, errors, feedback duplicates, feedback
  refused by status (the middleware :func:`install_metrics` adds), the decision
  log writer's buffer and counts, and the policy listener's state;
* the learner's own figures (``LearnerService.metrics`` through its handle):
  reward events and sums per arm and kind, how long ratings waited to be
  credited, update rate, lag; asked at most once a second with a short timeout,
  and ``banditctl_learner_up`` says whether it answered;
* the cache controller's totals of page-ins, hits and misses (planned cache
  policies, through its handle, the same way);
* one row of Postgres by primary key: the latest snapshot's version, watermark,
  events applied and time.

Counters of a gateway replica are its own since it started: sum them over
replicas. The learner's, the cache controller's and the database's figures are
the same on every replica: take their ``max`` over replicas, not their sum.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from controlplane.gateway_core import GatewayCore
from feedback.repositories import reports

log = logging.getLogger(__name__)

COMPONENTS = ("quality", "energy_j", "latency_ms", "cost_usd")

Fetch = Callable[[], Awaitable[dict[str, Any]]]


@dataclass
class FeedbackRejections:
    """Feedback answered with 4xx/5xx, by status code (this replica)."""

    by_status: dict[int, int] = field(default_factory=dict)

    def add(self, status: int) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1


class CachedFetch:
    """Another service's figures, asked at most once per ``ttl_s`` and given ``timeout_s``
    to answer; None when it failed or was late (until the next try)."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        ttl_s: float = 1.0,
        timeout_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fetch = fetch
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.clock = clock
        self.value: dict[str, Any] | None = None
        self.error: str | None = None
        self._at: float | None = None

    async def get(self) -> dict[str, Any] | None:
        now = self.clock()
        if self._at is not None and now - self._at < self.ttl_s:
            return self.value
        self._at = now
        try:
            self.value, self.error = await asyncio.wait_for(self.fetch(), self.timeout_s), None
        except Exception as exc:  # a scrape must answer whatever the service does
            self.value, self.error = None, repr(exc)[:200]
            log.debug("metrics source failed: %s", self.error)
        return self.value


@dataclass
class Scrape:
    """What one scrape gathered before rendering (None: not configured, or no answer)."""

    head: dict[str, Any] | None  # {} before the first snapshot; None: unreadable
    learner: dict[str, Any] | None
    cache: dict[str, Any] | None
    learner_asked: bool
    cache_asked: bool


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def gateway_families(core: GatewayCore, rejections: FeedbackRejections) -> Iterator[Metric]:
    """This replica's own counters, writer and listener (read from memory)."""
    yield _gauge(
        "banditctl_gateway_policy_version",
        "Policy version this gateway replica decides with",
        core.policy.version,
    )
    yield _counter(
        "banditctl_gateway_requests",
        "Chat completions served by this gateway replica",
        core.counters.get("requests", 0),
    )
    yield _counter(
        "banditctl_gateway_errors",
        "Chat completions whose arm failed (this gateway replica)",
        core.counters.get("errors", 0),
    )
    yield _counter(
        "banditctl_feedback_duplicates",
        "Feedback for a (request, source) already stored, answered as a duplicate "
        "(this gateway replica)",
        core.counters.get("feedback_duplicates", 0),
    )
    rejected = CounterMetricFamily(
        "banditctl_feedback_rejected",
        "Feedback requests refused, by HTTP status (this gateway replica)",
        labels=["status"],
    )
    for status, n in sorted(rejections.by_status.items()):
        rejected.add_metric([str(status)], n)
    yield rejected
    yield from _writer(core)
    yield from _listener(core)


def _writer(core: GatewayCore) -> Iterator[Metric]:
    s = core.writer.stats
    yield _gauge(
        "banditctl_decision_log_buffered",
        "Decision and outcome records accepted but not yet written (in the spool's files"
        " too unless it is off)",
        s.buffered,
    )
    written = CounterMetricFamily(
        "banditctl_decision_log_rows_written",
        "Rows the decision log writer stored, by table (a retried batch counts once)",
        labels=["table"],
    )
    written.add_metric(["decisions"], s.written_decisions)
    written.add_metric(["outcomes"], s.written_outcomes)
    yield written
    yield _counter(
        "banditctl_decision_log_spool_errors",
        "Spool writes the disk refused (the spool is then off for this replica)",
        s.spool_errors,
    )
    yield _counter(
        "banditctl_decision_log_replayed_records",
        "Records that dead gateway processes left in the spool, read by this replica",
        s.replayed_records,
    )
    yield _counter(
        "banditctl_decision_log_replayed_rows",
        "Rows from dead gateway processes' spools that the database did not hold yet",
        s.replayed_rows,
    )
    yield _counter(
        "banditctl_decision_log_retries",
        "Batch writes retried after a transient database error",
        s.retries,
    )
    yield _counter(
        "banditctl_decision_log_rejected",
        "Records refused because the buffer was full (the request got HTTP 503)",
        s.rejected,
    )
    yield _counter(
        "banditctl_decision_log_invalid",
        "Records the database refused on their own data, dropped",
        s.invalid,
    )


def _listener(core: GatewayCore) -> Iterator[Metric]:
    listener = core.listener
    yield _gauge(
        "banditctl_gateway_policy_listener_connected",
        "1 while this gateway replica listens for NOTIFY banditctl_policy, else 0 "
        "(it polls every gateway.policy_refresh_s either way)",
        1.0 if listener is not None and listener.connected else 0.0,
    )
    yield _counter(
        "banditctl_gateway_policy_notifications",
        "NOTIFY banditctl_policy messages this gateway replica received",
        0 if listener is None else listener.notifications,
    )
    yield _counter(
        "banditctl_gateway_policy_listener_reconnects",
        "Times the listening connection was opened again after it was lost or refused",
        0 if listener is None else listener.reconnects,
    )


def snapshot_families(head: dict[str, Any] | None) -> Iterator[Metric]:
    """The latest snapshot's header (zeros before the first; nothing when unreadable)."""
    if head is None:
        return
    h = head
    created = h.get("created_at")
    yield _gauge(
        "banditctl_policy_version",
        "Latest published policy version",
        float(h.get("version", 0)),
    )
    yield _gauge(
        "banditctl_learner_watermark",
        "Highest credit sequence number in the latest snapshot",
        float(h.get("watermark", 0)),
    )
    yield _counter(
        "banditctl_learner_events_applied",
        "Reward events the latest snapshot has applied",
        float(h.get("events_applied", 0)),
    )
    yield _gauge(
        "banditctl_policy_published_timestamp_seconds",
        "When the latest policy version was published (Unix time; 0 before the first)",
        0.0 if created is None else created.timestamp(),
    )


def learner_families(learner: dict[str, Any] | None, asked: bool) -> Iterator[Metric]:
    """The learner's figures from its memory (nothing but ``up`` when it did not answer)."""
    if not asked:
        return
    yield _gauge(
        "banditctl_learner_up",
        "1 when the learner answered this scrape's question (cached 1 s), else 0",
        0.0 if learner is None else 1.0,
    )
    if learner is None:
        return
    yield _gauge(
        "banditctl_learner_update_rate",
        "Reward events the learner applied per second over the last minute",
        float(learner["events_per_s"]),
    )
    yield _gauge(
        "banditctl_learner_lag_events",
        "Reward events ready but not yet credited (0 once a claim finds fewer than a batch)",
        float(learner["lag_events"]),
    )
    yield _gauge(
        "banditctl_learner_lag_seconds",
        "Age of the oldest reward event ready but not yet credited",
        float(learner["lag_seconds"]),
    )
    yield _counter(
        "banditctl_learner_snapshots",
        "Snapshots the learner process has written since it started",
        float(learner.get("snapshots", 0)),
    )
    waits = learner.get("feedback_waits")
    if waits is not None:
        hist = HistogramMetricFamily(
            "banditctl_learner_feedback_wait_seconds",
            "Seconds from a rating's row in the database to the learner's credit of it, "
            "for the decisions the learner process credited with their feedback",
        )
        hist.add_metric(
            [],
            [(str(float(b)), float(c)) for b, c in waits["le"]] + [("+Inf", float(waits["count"]))],
            float(waits["sum"]),
        )
        yield hist
    released = learner.get("releases") or {}
    yield _counter(
        "banditctl_policy_auto_rollbacks",
        "Promotions the learner process rolled back automatically since it started (their "
        "credited reward fell below the lower bound of their estimate at promotion)",
        float(released.get("auto_rollbacks", 0)),
    )
    yield _gauge(
        "banditctl_policy_release_watching",
        "The promoted policy version under watch for an automatic rollback (0: none)",
        float(released.get("watching") or 0),
    )
    events = CounterMetricFamily(
        "banditctl_reward_events",
        "Decisions the learner credited, by arm and credit kind (feedback, prior, error, "
        "skip), since the learner started",
        labels=["arm", "kind"],
    )
    reward = CounterMetricFamily(
        "banditctl_reward",
        "Sum of the objective's reward over decisions credited with a quality (divide by "
        "banditctl_reward_events_total for the mean; skip credits add nothing)",
        labels=["arm", "kind"],
    )
    sums = CounterMetricFamily(
        "banditctl_reward_component",
        "Sum of each raw reward component over credited decisions (divide by "
        "banditctl_reward_events_total for the mean)",
        labels=["arm", "kind", "component"],
    )
    for r in learner.get("rewards", ()):
        events.add_metric([r["arm"], r["kind"]], float(r["events"]))
        reward.add_metric([r["arm"], r["kind"]], float(r["reward"]))
        for c in COMPONENTS:
            sums.add_metric([r["arm"], r["kind"], c], float(r[c]))
    yield events
    yield reward
    yield sums


def cache_families(cache: dict[str, Any] | None, asked: bool) -> Iterator[Metric]:
    """The cache controller's residency totals (planned cache policies)."""
    if not asked:
        return
    yield _gauge(
        "banditctl_cache_controller_up",
        "1 when the cache controller answered this scrape's question (cached 1 s), else 0",
        0.0 if cache is None else 1.0,
    )
    if cache is None:
        return
    page_ins = CounterMetricFamily(
        "banditctl_adapter_page_ins", "Adapter loads, by replica", labels=["replica"]
    )
    hits = CounterMetricFamily(
        "banditctl_adapter_residency_hits",
        "Requests whose adapter was resident, by replica",
        labels=["replica"],
    )
    misses = CounterMetricFamily(
        "banditctl_adapter_residency_misses",
        "Requests whose adapter had to be paged in, by replica",
        labels=["replica"],
    )
    for replica, t in sorted((cache.get("totals") or {}).items()):
        page_ins.add_metric([replica], float(t["page_ins"]))
        hits.add_metric([replica], float(t["hits"]))
        misses.add_metric([replica], float(t["misses"]))
    yield page_ins
    yield hits
    yield misses


def render(core: GatewayCore, rejections: FeedbackRejections, scrape: Scrape) -> bytes:
    """The exposition text: this replica's instruments, then the figures gathered."""
    families: list[Metric] = list(core.instruments.registry.collect())
    families += gateway_families(core, rejections)
    families += snapshot_families(scrape.head)
    families += learner_families(scrape.learner, scrape.learner_asked)
    families += cache_families(scrape.cache, scrape.cache_asked)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)


def _snapshot_head(core: GatewayCore) -> dict[str, Any]:
    with core.engine.connect() as conn:
        return reports.latest_snapshot_head(conn) or {}


class _RejectionCounter:
    """Plain ASGI middleware (no per-request cost off the feedback paths)."""

    passes_chat = True  # chat completions may skip it (controlplane.api.front)

    def __init__(self, app: Any, rejections: FeedbackRejections) -> None:
        self.app = app
        self.rejections = rejections

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/feedback"):
            await self.app(scope, receive, send)
            return

        async def record(message: Any) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                self.rejections.add(int(message["status"]))
            await send(message)

        await self.app(scope, receive, record)


def install_metrics(
    app: FastAPI,
    core: GatewayCore,
    *,
    learner_metrics: Fetch | None = None,
    cache_status: Fetch | None = None,
    db_timeout_s: float = 2.0,
) -> None:
    """Add ``GET /metrics`` and the feedback-rejection middleware to ``app``.

    ``learner_metrics``: asks the learner for its figures (``LearnerService.metrics``);
    ``cache_status``: asks the cache controller for its status, whose ``totals`` are
    the residency counters. Each is asked at most once a second, for 0.5 s at most.
    """
    rejections = FeedbackRejections()
    learner = CachedFetch(learner_metrics) if learner_metrics is not None else None
    cache = CachedFetch(cache_status) if cache_status is not None else None
    app.state.metrics_sources = {"learner": learner, "cache": cache}

    app.add_middleware(_RejectionCounter, rejections=rejections)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        try:
            head = await asyncio.wait_for(asyncio.to_thread(_snapshot_head, core), db_timeout_s)
        except Exception as exc:  # the database down must not take the metrics with it
            log.warning("metrics: latest snapshot unreadable: %r", exc)
            head = None
        scrape = Scrape(
            head=head,
            learner=await learner.get() if learner is not None else None,
            cache=await cache.get() if cache is not None else None,
            learner_asked=learner is not None,
            cache_asked=cache is not None,
        )
        body = await asyncio.to_thread(render, core, rejections, scrape)
        return Response(body, media_type=CONTENT_TYPE_LATEST)
