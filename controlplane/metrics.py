"""Prometheus ``/metrics``: one :class:`CollectorRegistry` per app, read at scrape time.

Totals that every gateway replica shares (decisions, reward components,
feedback stored, learner progress and lag, policy version, adapter page-ins and
residency hits) are computed from the database, so any replica answers the
same. Feedback duplicates and rejections never reach the database: they are
this replica's counters since it started (``GatewayCore.counters`` and the
middleware :func:`install_metrics` adds), as are the gateway's own requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controlplane.gateway_core import GatewayCore
from feedback.repositories import reports, reward_stream

COMPONENTS = ("quality", "energy_j", "latency_ms", "cost_usd")


@dataclass
class FeedbackRejections:
    """Feedback answered with 4xx/5xx, by status code (this replica)."""

    by_status: dict[int, int] = field(default_factory=dict)

    def add(self, status: int) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1


class BanditCollector(Collector):
    def __init__(self, core: GatewayCore, rejections: FeedbackRejections) -> None:
        self.core = core
        self.rejections = rejections

    def collect(self) -> Iterator[Metric]:
        with self.core.engine.connect() as conn:
            decisions = reports.decision_counts(conn)
            rewards = reports.reward_sums_by_arm(conn)
            feedback = reports.feedback_counts(conn)
            progress = reports.learner_progress(conn)
            lag = reward_stream.learner_lag(conn, self.core.config.objective, datetime.now(UTC))
            residency = reports.residency_totals(conn)
        yield from _decisions(decisions)
        yield from _rewards(rewards)
        yield from self._feedback(feedback)
        yield from _learner(progress, lag)
        yield from self._gateway()
        yield from _residency(residency)

    def _feedback(self, stored: dict[str, int]) -> Iterator[Metric]:
        received = CounterMetricFamily(
            "banditctl_feedback_received",
            "Feedback rows stored, by source (duplicates excluded)",
            labels=["source"],
        )
        for source, n in sorted(stored.items()):
            received.add_metric([source], n)
        yield received
        yield CounterMetricFamily(
            "banditctl_feedback_duplicates",
            "Feedback for a (request, source) already stored, answered as a duplicate "
            "(this gateway replica)",
            value=self.core.counters.get("feedback_duplicates", 0),
        )
        rejected = CounterMetricFamily(
            "banditctl_feedback_rejected",
            "Feedback requests refused, by HTTP status (this gateway replica)",
            labels=["status"],
        )
        for status, n in sorted(self.rejections.by_status.items()):
            rejected.add_metric([str(status)], n)
        yield rejected

    def _gateway(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "banditctl_gateway_policy_version",
            "Policy version this gateway replica decides with",
            value=self.core.policy.version,
        )
        yield CounterMetricFamily(
            "banditctl_gateway_requests",
            "Chat completions served by this gateway replica",
            value=self.core.counters.get("requests", 0),
        )
        yield CounterMetricFamily(
            "banditctl_gateway_errors",
            "Chat completions whose arm failed (this gateway replica)",
            value=self.core.counters.get("errors", 0),
        )


def _decisions(rows: list[tuple[str, str, int]]) -> Iterator[Metric]:
    fam = CounterMetricFamily(
        "banditctl_decisions", "Routing decisions logged, by arm and route", labels=["arm", "route"]
    )
    for arm, route, n in rows:
        fam.add_metric([arm, route], n)
    yield fam


def _rewards(rows: list[dict[str, Any]]) -> Iterator[Metric]:
    events = CounterMetricFamily(
        "banditctl_reward_events",
        "Decisions credited to the learner, by arm and credit kind (feedback, prior, error, skip)",
        labels=["arm", "kind"],
    )
    sums = CounterMetricFamily(
        "banditctl_reward_component",
        "Sum of each raw reward component over credited decisions (divide by "
        "banditctl_reward_events_total for the mean)",
        labels=["arm", "kind", "component"],
    )
    for r in rows:
        events.add_metric([r["arm"], r["kind"]], int(r["n"]))
        for c in COMPONENTS:
            sums.add_metric([r["arm"], r["kind"], c], float(r[c]))
    yield events
    yield sums


def _learner(progress: dict[str, float], lag: dict[str, float]) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "banditctl_policy_version", "Latest published policy version", value=progress["version"]
    )
    yield GaugeMetricFamily(
        "banditctl_learner_watermark",
        "Highest credit sequence number in the latest snapshot",
        value=progress["watermark"],
    )
    yield CounterMetricFamily(
        "banditctl_learner_events_applied",
        "Reward events the latest snapshot has applied",
        value=progress["events_applied"],
    )
    yield GaugeMetricFamily(
        "banditctl_learner_update_rate",
        "Reward events applied per second over the last minute of snapshots",
        value=progress["events_per_s"],
    )
    yield GaugeMetricFamily(
        "banditctl_learner_lag_events",
        "Reward events ready but not yet credited by the learner",
        value=lag["events_behind"],
    )
    yield GaugeMetricFamily(
        "banditctl_learner_lag_seconds",
        "Age of the oldest reward event ready but not yet credited",
        value=lag["seconds_behind"],
    )


def _residency(rows: list[dict[str, Any]]) -> Iterator[Metric]:
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
    for r in rows:
        page_ins.add_metric([r["replica"]], int(r["page_ins"]))
        hits.add_metric([r["replica"]], int(r["hits"]))
        misses.add_metric([r["replica"]], int(r["misses"]))
    yield page_ins
    yield hits
    yield misses


class _RejectionCounter:
    """Plain ASGI middleware (no per-request cost off the feedback paths)."""

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


def install_metrics(app: FastAPI, core: GatewayCore) -> CollectorRegistry:
    """Add ``GET /metrics`` and the feedback-rejection middleware to ``app``."""
    registry = CollectorRegistry(auto_describe=False)
    rejections = FeedbackRejections()
    registry.register(BanditCollector(core, rejections))

    app.add_middleware(_RejectionCounter, rejections=rejections)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        body = await asyncio.to_thread(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return registry
