"""What a gateway replica does per request, without Ray or HTTP.

featurize -> select (in-process, current snapshot) -> log decision (buffered)
-> call the chosen pool -> log outcome -> answer with the request id, arm,
policy version and a signed feedback token. Nothing here waits on the
learner or on a database round trip per request.

Each replica counts and times its requests in memory (:attr:`GatewayCore.instruments`,
rendered by ``/metrics``) and, where a tracer provider is set, traces them
(:mod:`controlplane.tracing`). New policies arrive by ``NOTIFY banditctl_policy``
(:mod:`controlplane.policy_listener`), with polling every ``gateway.policy_refresh_s``
as the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime
from typing import Any

import numpy as np
from opentelemetry import trace
from opentelemetry.trace import Tracer
from sqlalchemy import URL, Engine

from cache_manager.router import ArmPrices, ArmTerms
from controlplane.config import BanditConfig
from controlplane.instruments import GatewayInstruments
from controlplane.learner_loop import Policy, latest_policy, snapshot_learner
from controlplane.policy_listener import PolicyListener
from controlplane.tokens import FeedbackTokens
from controlplane.tracing import RequestTracer, set_attributes, span
from feedback.records import COMPLETION_ID_PREFIX, DecisionRecord, OutcomeRecord
from feedback.repositories import residency as residency_repo
from feedback.writer import DecisionLogWriter
from learners import Decision
from learners.floor import with_floor

log = logging.getLogger(__name__)

# arm name, chat body -> generation dict (deployments wire this to pool handles)
PoolCall = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class BadRequest(ValueError):
    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


class UpstreamError(RuntimeError):
    pass


class GatewayCore:
    def __init__(
        self,
        config: BanditConfig,
        engine: Engine,
        call_pool: PoolCall,
        tokens: FeedbackTokens,
        *,
        writer: DecisionLogWriter | None = None,
        rng: np.random.Generator | None = None,
        tracer: Tracer | None = None,
        listen: bool = True,
        listen_url: str | URL | None = None,
    ) -> None:
        """``tracer``: spans go there (default: the global provider's, once one is set).
        ``listen``: the policy refresher also listens for NOTIFY, on ``listen_url``
        (default: the engine's database)."""
        self.config = config
        self.engine = engine
        self.call_pool = call_pool
        self.tokens = tokens
        self.featurizer = config.featurizer
        self.writer = writer or DecisionLogWriter(
            engine,
            max_buffer=config.gateway.log_buffer,
            flush_interval_s=config.gateway.log_flush_s,
        )
        self.rng = rng or np.random.default_rng(config.gateway.seed)
        # the current snapshot's learner, swapped atomically when a new version lands
        self.policy = Policy(snapshot_learner(config, None), 0)
        # the cache policy's router rule for adapter arms (cache_manager.router): what a
        # page-in costs and how much of the width counts for an adapter resident nowhere,
        # which is all of them until the first residency plan says otherwise
        adapters = config.adapter_arms
        self.prices = ArmPrices(
            config.cache.policy.build().rule,
            adapters,
            config.cache.paging_model(set(adapters.values())),
        )
        self.paging: ArmTerms = self.prices.terms(())
        self.measured_s: dict[str, float] = {}  # adapter -> measured load seconds priced
        self.counters: dict[str, float] = {"requests": 0, "errors": 0}
        self.instruments = GatewayInstruments(config)
        self.tracing = RequestTracer(tracer)
        self.listen = listen
        self.listen_url: str | URL = engine.url if listen_url is None else listen_url
        self.listener: PolicyListener | None = None

    # -- policy ---------------------------------------------------------

    def refresh_policy(self, trigger: str = "poll") -> bool:
        """Load the latest snapshot if it is newer than ours (blocking DB call).
        ``trigger``: what asked (start, notify, poll), counted when a version loads."""
        policy = latest_policy(self.engine, self.config, self.policy.version)
        if policy is None or policy.version <= self.policy.version:
            return False
        self.policy = policy
        self.instruments.policy_updates.labels(trigger).inc()
        return True

    def refresh_residency(self) -> None:
        """Price paging for adapter arms resident nowhere (planned cache policies), at
        the load times the replicas measured (``adapter_load_times``) once known."""
        if not self.prices.active:
            return
        with self.engine.connect() as conn:
            held = {
                a for adapters in residency_repo.resident_adapters(conn).values() for a in adapters
            }
            measured = residency_repo.load_times_s(conn)
        if measured and measured != self.measured_s:  # the replicas' measured load times
            self.measured_s = measured
            adapters = self.config.adapter_arms
            self.prices.reprice(self.config.cache.paging_model(set(adapters.values()), measured))
        self.paging = self.prices.terms(held)

    async def policy_refresher(self) -> None:
        """Refresh when a NOTIFY arrives (a listener thread wakes this task), else every
        ``gateway.policy_refresh_s``. Runs until cancelled; the listener stops with it."""
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def notified(_version: int | None) -> None:
            # the loop may have closed under us: then there is nothing left to refresh
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)

        if self.listen:
            self.listener = PolicyListener(self.listen_url, notified).start()
        trigger = "poll"
        try:
            while True:
                self.tracing.refresh()
                try:
                    await asyncio.to_thread(self.refresh_policy, trigger)
                    await asyncio.to_thread(self.refresh_residency)
                except Exception:  # keep serving on the current policy
                    log.exception("policy refresh failed")
                try:
                    await asyncio.wait_for(wake.wait(), self.config.gateway.policy_refresh_s)
                    trigger = "notify"
                except TimeoutError:
                    trigger = "poll"
                wake.clear()
        finally:
            if self.listener is not None:
                listener, self.listener = self.listener, None
                await asyncio.to_thread(listener.stop)

    # -- the request path ------------------------------------------------

    def _select(
        self, policy: Policy, x: np.ndarray, arms: list[str], rng: np.random.Generator
    ) -> Decision:
        paging = self.paging
        decision = policy.learner.select(
            x,
            arms,
            rng,
            penalties=paging.penalties or None,
            width_scale=paging.width_scale or None,
        )
        return with_floor(decision, self.config.releases.exploration_floor, rng)

    def route_arms(self, model: Any) -> tuple[str, ...]:
        if not isinstance(model, str) or not model:
            raise BadRequest("model", "must be 'auto', a route or an arm name", 422)
        try:
            return self.config.route_arms(model)
        except KeyError:
            raise BadRequest("model", f"unknown model or route {model!r}", 404) from None

    @staticmethod
    def validate_body(body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequest("body", "must be a JSON object", 422)
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise BadRequest("messages", "must be a non-empty list", 422)
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise BadRequest(f"messages[{i}]", "each message needs a string 'role'", 422)
        meta = body.get("metadata")
        if meta is not None and not isinstance(meta, dict):
            raise BadRequest("metadata", "must be an object", 422)
        return body

    def decide(
        self,
        body: dict[str, Any],
        request_id: uuid.UUID | None = None,
        *,
        key_id: str | None = None,
        exclude: Collection[str] = (),
    ) -> tuple[uuid.UUID, np.ndarray, Decision, int, str]:
        """Featurize, select, and enqueue the decision log (the in-process overhead).

        ``exclude``: arms the request may not go to (its budgets); the policy selects
        among the route's other arms. ``key_id``: the API key's name, logged."""
        start = time.perf_counter()
        tracer = self.tracing.current()
        route = body.get("model") or "auto"
        arms = [a for a in self.route_arms(route) if a not in exclude]
        if not arms:
            raise BadRequest("model", f"no arm of {route!r} is allowed for this request", 429)
        with span(tracer, "banditctl.featurize"):
            x = self.featurizer.featurize(body)
        policy = self.policy
        with span(tracer, "banditctl.select"):
            decision = self._select(policy, x, arms, self.rng)
        rid = request_id or uuid.uuid4()
        meta = body.get("metadata") or {}
        self._log_decision(
            tracer,
            DecisionRecord(
                request_id=rid,
                created_at=datetime.now(UTC),
                route=route,
                arm_id=decision.arm,
                context=x.astype(np.float32),
                propensity=max(float(decision.propensity), 1e-9),
                policy_version=policy.version,
                learner=decision.learner,
                tenant=_opt_str(meta.get("tenant")),
                task=_opt_str(body.get("task") or meta.get("task")),
                key_id=key_id,
            ),
        )
        self.instruments.decided(route, decision.arm, time.perf_counter() - start)
        return rid, x, decision, policy.version, route

    async def complete(
        self,
        body: dict[str, Any],
        request_id: uuid.UUID | None = None,
        *,
        key_id: str | None = None,
        exclude: Collection[str] = (),
    ) -> dict[str, Any]:
        """Serve one chat completion; ``request_id`` (e.g. the proxy's) else a new UUID;
        ``key_id`` and ``exclude`` as for :meth:`decide`. Traced as ``banditctl.request``
        (arm, route, policy version, propensity)."""
        with span(self.tracing.current(), "banditctl.request"):
            return await self._complete(body, request_id, key_id=key_id, exclude=exclude)

    async def _complete(
        self,
        body: dict[str, Any],
        request_id: uuid.UUID | None,
        *,
        key_id: str | None,
        exclude: Collection[str],
    ) -> dict[str, Any]:
        received = time.perf_counter()
        tracer = self.tracing.current()
        body = self.validate_body(body)
        rid, _x, decision, version, route = self.decide(
            body, request_id, key_id=key_id, exclude=exclude
        )
        if tracer is not None:
            set_attributes(
                trace.get_current_span(), _span_attributes(rid, decision, version, route)
            )
        self.counters["requests"] += 1
        start = time.perf_counter()
        try:
            with span(tracer, "banditctl.pool_call"):
                gen = await self.call_pool(decision.arm, body)
        except Exception as exc:
            self.counters["errors"] += 1
            self._log_outcome(
                tracer,
                OutcomeRecord(
                    request_id=rid,
                    created_at=datetime.now(UTC),
                    status="error",
                    latency_ms=(time.perf_counter() - start) * 1000.0,
                    error=str(exc)[:500],
                ),
            )
            self.instruments.failed(decision.arm, time.perf_counter() - received)
            raise UpstreamError(f"arm {decision.arm} failed: {exc}") from exc
        self._log_outcome(
            tracer,
            OutcomeRecord(
                request_id=rid,
                created_at=datetime.now(UTC),
                status="ok",
                latency_ms=(time.perf_counter() - start) * 1000.0,
                ttft_ms=gen.get("ttft_ms"),
                prompt_tokens=int(gen["prompt_tokens"]),
                completion_tokens=int(gen["completion_tokens"]),
                energy_j=float(gen["energy_j"]),
                cost_usd=float(gen["cost_usd"]),
            ),
        )
        ttft_ms = gen.get("ttft_ms")
        self.instruments.served(
            decision.arm,
            time.perf_counter() - received,
            None if ttft_ms is None else float(ttft_ms) / 1000.0,
        )
        return {
            "id": f"{COMPLETION_ID_PREFIX}{rid.hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": decision.arm,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": gen["text"]},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": int(gen["prompt_tokens"]),
                "completion_tokens": int(gen["completion_tokens"]),
                "total_tokens": int(gen["prompt_tokens"]) + int(gen["completion_tokens"]),
            },
            "banditctl": {
                "request_id": str(rid),
                "arm": decision.arm,
                "route": route,
                "policy_version": version,
                "propensity": float(decision.propensity),
                "feedback_token": self.tokens.issue(rid),
                "cost_usd": float(gen["cost_usd"]),
                "energy_j": float(gen["energy_j"]),
            },
        }

    def _log_decision(self, tracer: Tracer | None, record: DecisionRecord) -> None:
        with span(tracer, "banditctl.log") as logged:
            set_attributes(logged, {"banditctl.record": "decision"})
            self.writer.log_decision(record)

    def _log_outcome(self, tracer: Tracer | None, record: OutcomeRecord) -> None:
        with span(tracer, "banditctl.log") as logged:
            set_attributes(logged, {"banditctl.record": "outcome"})
            self.writer.log_outcome(record)

    def explain(self, body: dict[str, Any]) -> dict[str, Any]:
        body = self.validate_body(body)
        arms = list(self.route_arms(body.get("model") or "auto"))
        x = self.featurizer.featurize(body)
        policy = self.policy
        learner = policy.learner
        decision = self._select(policy, x, arms, np.random.default_rng(0))
        rows = []
        mean, width = learner.estimates(x, arms)
        summary = learner.arm_summary()
        for i, arm in enumerate(arms):
            rows.append(
                {
                    "arm": arm,
                    "score": _finite(decision.scores.get(arm)),
                    "propensity": float(decision.propensities.get(arm, 0.0)),
                    "mean": float(mean[i]),
                    "uncertainty": float(width[i]),
                    "pulls": float(summary.get(arm, {}).get("pulls", 0.0)),
                }
            )
        return {
            "policy_version": policy.version,
            "learner": decision.learner,
            "chosen": decision.arm,
            "arms": sorted(rows, key=lambda r: -(r["score"] if r["score"] is not None else -1e300)),
        }


def _span_attributes(
    rid: uuid.UUID, decision: Decision, version: int, route: str
) -> dict[str, Any]:
    return {
        "banditctl.request_id": str(rid),
        "banditctl.arm": decision.arm,
        "banditctl.route": route,
        "banditctl.policy_version": version,
        "banditctl.propensity": float(decision.propensity),
    }


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)[:200]


def _finite(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return f if np.isfinite(f) else None
