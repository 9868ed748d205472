"""What one gateway replica counts and times in memory (prometheus_client).

Each :class:`GatewayInstruments` has its own :class:`CollectorRegistry`, so
several gateways in one process (tests, benchmarks) never share a counter; the
``/metrics`` route (:mod:`controlplane.metrics`) renders it with the figures
read at scrape time from the decision log writer, the learner and the cache
controller. Every counter here is this replica's since it started: Prometheus
sums them over replicas (``sum by (arm) (rate(banditctl_decisions_total[5m]))``).

The request path pays a dictionary look-up and a locked increment per
instrument: children for the label values known from the config are made once.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram

from controlplane.config import BanditConfig

# seconds; a chat completion spans a cached replay (ms) to a long generation (a minute)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# featurize + select + enqueue: a quarter of a millisecond on a quiet core
DECISION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1)

REFRESH_TRIGGERS = ("start", "notify", "poll")


def route_arm_pairs(config: BanditConfig) -> list[tuple[str, str]]:
    """Every (route, arm) a decision can be logged under: ``auto``, each route, each arm."""
    arms = [a.name for a in config.arms]
    pairs = [("auto", a) for a in arms]
    pairs += [(route, a) for route, members in config.routes.items() for a in members]
    pairs += [(a, a) for a in arms]
    return list(dict.fromkeys(pairs))


MAX_SOURCE_LABELS = 32  # distinct feedback sources with a series of their own


class GatewayInstruments:
    def __init__(self, config: BanditConfig) -> None:
        reg = self.registry = CollectorRegistry(auto_describe=True)
        arms = [a.name for a in config.arms]
        self.request_seconds = Histogram(
            "banditctl_request_duration_seconds",
            "Chat completions served by this gateway replica: seconds from the request to "
            "the answer (decision, model call, logging), by arm and status (ok, error)",
            ["arm", "status"],
            buckets=REQUEST_BUCKETS,
            registry=reg,
        )
        self.ttft_seconds = Histogram(
            "banditctl_time_to_first_token_seconds",
            "Time to the first token, by arm, for answers whose backend reports it",
            ["arm"],
            buckets=TTFT_BUCKETS,
            registry=reg,
        )
        self.decision_seconds = Histogram(
            "banditctl_decision_overhead_seconds",
            "What a decision costs the gateway in process: featurize, select and enqueue "
            "the decision log record",
            buckets=DECISION_BUCKETS,
            registry=reg,
        )
        self.decisions = Counter(
            "banditctl_decisions",
            "Routing decisions made and logged by this gateway replica, by arm and route",
            ["arm", "route"],
            registry=reg,
        )
        self.fallbacks = Counter(
            "banditctl_fallbacks",
            "Requests served by another arm than the one first chosen (this gateway replica)",
            registry=reg,
        )
        self.rate_limited = Counter(
            "banditctl_rate_limited",
            "Requests refused with HTTP 429 by a rate limit (this gateway replica)",
            registry=reg,
        )
        self.budget_refusals = Counter(
            "banditctl_budget_refusals",
            "Requests refused because a budget was spent (this gateway replica)",
            registry=reg,
        )
        self.feedback_received = Counter(
            "banditctl_feedback_received",
            "Feedback rows stored by this gateway replica, by source (duplicates excluded)",
            ["source"],
            registry=reg,
        )
        self.policy_updates = Counter(
            "banditctl_gateway_policy_updates",
            "New policy versions this gateway replica loaded, by what told it: start, "
            "notify (LISTEN banditctl_policy) or poll (gateway.policy_refresh_s)",
            ["trigger"],
            registry=reg,
        )
        self._decisions = {(r, a): self.decisions.labels(a, r) for r, a in route_arm_pairs(config)}
        self._ok = {a: self.request_seconds.labels(a, "ok") for a in arms}
        self._error = {a: self.request_seconds.labels(a, "error") for a in arms}
        self._ttft = {a: self.ttft_seconds.labels(a) for a in arms}
        self._sources: set[str] = {"user", "other"}
        for source in self._sources:
            self.feedback_received.labels(source)
        for trigger in REFRESH_TRIGGERS:
            self.policy_updates.labels(trigger)

    # -- the request path ------------------------------------------------

    def decided(self, route: str, arm: str, seconds: float) -> None:
        child = self._decisions.get((route, arm))
        if child is None:
            child = self._decisions[(route, arm)] = self.decisions.labels(arm, route)
        child.inc()
        self.decision_seconds.observe(seconds)

    def served(self, arm: str, seconds: float, ttft_s: float | None = None) -> None:
        self._ok[arm].observe(seconds)
        if ttft_s is not None:
            self._ttft[arm].observe(ttft_s)

    def failed(self, arm: str, seconds: float) -> None:
        self._error[arm].observe(seconds)

    def feedback_stored(self, sources: Iterable[str]) -> None:
        """By source: a client picks the source, so only the first ``MAX_SOURCE_LABELS``
        distinct ones get a series of their own, the rest count as ``other`` (a flood of
        made-up sources must not grow the registry without bound)."""
        for source in sources:
            if source not in self._sources:
                if len(self._sources) >= MAX_SOURCE_LABELS:
                    source = "other"
                self._sources.add(source)
            self.feedback_received.labels(source).inc()
