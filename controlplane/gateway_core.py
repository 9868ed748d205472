"""What a gateway replica does per request, without Ray or HTTP.

featurize -> select (in-process, current snapshot) -> log decision (buffered)
-> call the chosen pool -> log outcome -> answer with the request id, arm,
policy version and a signed feedback token. Nothing here waits on the
learner or on a database round trip per request.

A whole answer comes from the pool's ``generate`` (:meth:`GatewayCore.complete`), a
streamed one from its ``generate_stream``, forwarded delta by delta
(:meth:`GatewayCore.open_stream`; :mod:`controlplane.answers`). Request fields are
checked, and arms that cannot serve them left out, by :mod:`controlplane.completions`.
An arm that fails (an upstream error or timeout; a stream only before its first delta)
is followed by up to ``gateway.fallbacks`` more attempts on other arms, each its own
decision (``attempt``, ``fallback_of``).

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
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Sequence,
)
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from opentelemetry import trace
from opentelemetry.trace import Tracer
from sqlalchemy import URL, Engine

from cache_manager.router import ArmPrices, ArmTerms
from controlplane.answers import (
    StreamProgress,
    aclose_quietly,
    choices_of,
    error_json,
    finish_choice,
    opening_choice,
)
from controlplane.completions import (
    FieldError,
    UpstreamStatus,
    check_request,
    chunk_event,
    include_usage,
    tool_call_deltas,
    unsupported,
    usage_json,
)
from controlplane.config import BanditConfig
from controlplane.instruments import GatewayInstruments
from controlplane.learner_loop import Policy, latest_policy, snapshot_learner
from controlplane.policy_listener import PolicyListener
from controlplane.tokens import FeedbackTokens
from controlplane.tracing import RequestTracer, set_attributes, span
from feedback.loop_health import LoopHealth
from feedback.records import (
    COMPLETION_ID_PREFIX,
    DecisionRecord,
    OutcomeRecord,
    clean_text,
    new_request_id,
)
from feedback.repositories import residency as residency_repo
from feedback.spool import Spool
from feedback.writer import DecisionLogWriter
from learners import Decision
from learners.floor import with_floor

log = logging.getLogger(__name__)

# arm name, chat body -> the whole answer: a generation dict (text, choices, tokens,
# latency, ttft_ms, energy, cost; deployments wire this to the pools' ``generate``)
PoolCall = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
# arm name, chat body -> the answer as it is produced: delta dicts (index, text, tool_calls,
# finish_reason, extra), the last one with usage (the pools' ``generate_stream``); closing
# the iterator stops the generation
PoolStream = Callable[[str, dict[str, Any]], AsyncIterator[dict[str, Any]]]


class BadRequest(ValueError):
    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


class UpstreamError(RuntimeError):
    """Every arm tried failed; ``request_id``: the last attempt's decision (it has its
    error outcome), returned as ``x-banditctl-request-id``."""

    def __init__(self, message: str, request_id: uuid.UUID | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class PoolUnavailable(RuntimeError):
    """No replica of the arm's pool took the call within ``gateway.pool_wait_s`` (a crashed
    replica restarting): the call fails fast, and the pool's arms are left out of
    decisions for ``gateway.pool_down_s`` (:meth:`GatewayCore.pool_down`)."""


@dataclass
class StreamedCompletion:
    """A streamed answer whose first delta has arrived: ``meta`` (request id, arm, route,
    policy version, propensity, feedback token) for the headers, and ``events``, the
    ``chat.completion.chunk`` dicts to send (an ``{"error": ...}`` dict if the upstream
    fails after the first token). Closing ``events`` early (the client went away) stops
    the generation; the outcome is logged when ``events`` ends, either way."""

    meta: dict[str, Any]
    events: AsyncGenerator[dict[str, Any], None]


def _executor_shut_down(exc: RuntimeError) -> bool:
    """Whether ``exc`` is the event loop's thread pool refusing work because it was shut
    down (``asyncio.to_thread`` while a replica or an app stops): the pool's own refusal,
    or the loop's once ``shutdown_default_executor`` was called."""
    text = str(exc)
    return (
        "cannot schedule new futures after" in text or "Executor shutdown has been called" in text
    )


class GatewayCore:
    def __init__(
        self,
        config: BanditConfig,
        engine: Engine,
        call_pool: PoolCall,
        tokens: FeedbackTokens,
        *,
        stream_pool: PoolStream | None = None,
        writer: DecisionLogWriter | None = None,
        spool: Spool | None = None,
        rng: np.random.Generator | None = None,
        tracer: Tracer | None = None,
        listen: bool = True,
        listen_url: str | URL | None = None,
    ) -> None:
        """``call_pool``: whole answers; ``stream_pool``: streamed ones (``stream: true``;
        unset: the whole answer from ``call_pool``, sent as one delta per choice).
        ``tracer``: spans go there (default: the global provider's, once one is set).
        ``listen``: the policy refresher also listens for NOTIFY, on ``listen_url``
        (default: the engine's database). ``spool``: the writer keeps accepted records there
        until written (unless ``writer`` is given)."""
        self.config = config
        self.engine = engine
        self.call_pool = call_pool
        self.stream_pool: PoolStream = stream_pool or self._whole_as_stream
        self.arm_configs = {a.name: a for a in config.arms}
        self.tokens = tokens
        self.featurizer = config.featurizer
        self.writer = writer or DecisionLogWriter(
            engine,
            max_buffer=config.gateway.log_buffer,
            max_batch=min(5_000, config.gateway.log_buffer),
            flush_interval_s=config.gateway.log_flush_s,
            stale_after_s=config.gateway.loop_stale_s,
            spool=spool,
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
        self.down_until: dict[str, float] = {}  # model -> time.monotonic() it is tried again
        self.instruments = GatewayInstruments(config)
        self.tracing = RequestTracer(tracer)
        self.listen = listen
        self.listen_url: str | URL = engine.url if listen_url is None else listen_url
        self.listener: PolicyListener | None = None
        self._next_policy_poll = 0.0  # time.monotonic() of the next poll that reads the version
        self.refresher_health = LoopHealth(
            "policy_refresher", stale_after_s=config.gateway.loop_stale_s
        )

    def loops(self) -> list[LoopHealth]:
        """The health of this replica's background loops (``/healthz``)."""
        loops = [self.writer.health, self.refresher_health]
        if self.listener is not None:
            loops.append(self.listener.health)
        return loops

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

    def listening(self) -> bool:
        """Whether a connected listener brings new policy versions (NOTIFY)."""
        return self.listener is not None and self.listener.connected

    def _refresh(self, trigger: str) -> None:
        """One refresh (in a worker thread): the policy, then the residency prices. A
        poll reads the version only every ``gateway.policy_poll_listening_s`` while the
        listener is connected."""
        now = time.monotonic()
        if trigger != "poll" or not self.listening() or now >= self._next_policy_poll:
            self._next_policy_poll = now + self.config.gateway.policy_poll_listening_s
            self.refresh_policy(trigger)
        self.refresh_residency()

    def _poll_every(self) -> float:
        """The refresher's timer: ``gateway.policy_refresh_s``, or the listening poll's
        period when a connected listener brings versions and no residency prices need it."""
        gw = self.config.gateway
        if self.listening() and not self.prices.active:
            return max(gw.policy_refresh_s, gw.policy_poll_listening_s)
        return gw.policy_refresh_s

    async def policy_refresher(self) -> None:
        """Refresh when a NOTIFY arrives (a listener thread wakes this task), else every
        ``gateway.policy_refresh_s`` (``policy_poll_listening_s`` while the listener is
        connected and no residency prices need refreshing; a listener that loses its
        connection wakes this task, so it polls fast again at once). Runs until
        cancelled; the listener stops with it."""
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        told = False  # whether a NOTIFY (rather than the poll's timer) set ``wake``

        def tell() -> None:
            nonlocal told
            told = True
            wake.set()

        def notified(_version: int | None) -> None:
            # the loop may have closed under us: then there is nothing left to refresh
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(tell)

        if self.listen:
            self.listener = PolicyListener(
                self.listen_url, notified, stale_after_s=self.config.gateway.loop_stale_s
            ).start()
        task = asyncio.current_task()
        self.refresher_health.alive = lambda: task is not None and not task.done()
        trigger = "poll"
        try:
            while True:
                self.tracing.refresh()
                try:
                    await asyncio.to_thread(self._refresh, trigger)
                    self.refresher_health.beat("polling")
                except Exception as exc:  # keep serving on the current policy
                    if isinstance(exc, RuntimeError) and _executor_shut_down(exc):
                        return  # the replica is stopping: nothing left to refresh
                    self.refresher_health.failed(exc)
                    log.exception("policy refresh failed")
                # a NOTIFY or, at the latest, the poll's timer (a timer handle rather than
                # ``wait_for``, which makes a task each time)
                timer = loop.call_later(self._poll_every(), wake.set)
                try:
                    await wake.wait()
                finally:
                    timer.cancel()
                trigger = "notify" if told else "poll"
                told = False
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

    def servable_arms(self, body: dict[str, Any]) -> tuple[str, ...]:
        """The route's arms whose backend can serve every field of ``body``
        (:func:`controlplane.completions.unsupported`); none: a 400 naming the field."""
        arms = self.route_arms(body.get("model") or "auto")
        refused: dict[str, tuple[str, str] | None] = {}  # by backend kind: asked once each
        for a in arms:
            kind = self.arm_configs[a].backend
            if kind not in refused:
                refused[kind] = unsupported(body, kind)
        able = tuple(a for a in arms if refused[self.arm_configs[a].backend] is None)
        if not able:
            field, why = unsupported(body, self.arm_configs[arms[0]].backend) or ("model", "")
            route = body.get("model") or "auto"
            raise BadRequest(field, f"no arm of {route!r} can serve it ({why})", 400)
        return able

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
        try:
            check_request(body)
        except FieldError as exc:
            raise BadRequest(exc.field, exc.message, 400) from None
        return body

    def decide(
        self,
        body: dict[str, Any],
        request_id: uuid.UUID | None = None,
        *,
        key_id: str | None = None,
        exclude: Collection[str] = (),
        fallback_of: uuid.UUID | None = None,
        attempt: int = 1,
        client_request_id: str | None = None,
        servable: Sequence[str] | None = None,
    ) -> tuple[uuid.UUID, np.ndarray, Decision, int, str]:
        """Featurize, select, and enqueue the decision log (the in-process overhead).

        ``exclude``: arms the request may not go to (its budgets); the policy selects
        among the route's other arms. ``key_id``: the API key's name, logged.
        ``fallback_of``, ``attempt``: a fallback's first attempt and its number; its
        request id is derived from them (:func:`attempt_id`). ``client_request_id``: the
        client's own id, logged for correlation only. ``servable``: what
        :meth:`servable_arms` gives for ``body``, where the caller has it already."""
        start = time.perf_counter()
        tracer = self.tracing.current()
        route = body.get("model") or "auto"
        if servable is None:
            servable = self.servable_arms(body)
        arms = [a for a in servable if a not in exclude]
        if not arms:
            raise BadRequest("model", f"no arm of {route!r} is allowed for this request", 429)
        arms = self._up(arms)
        with span(tracer, "banditctl.featurize"):
            x = self.featurizer.featurize(body)
        policy = self.policy
        with span(tracer, "banditctl.select"):
            decision = self._select(policy, x, arms, self.rng)
        if fallback_of is not None:
            rid = attempt_id(fallback_of, attempt)
        else:
            rid = request_id or new_request_id()
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
                attempt=attempt,
                fallback_of=fallback_of,
                client_request_id=client_request_id,
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
        client_request_id: str | None = None,
        servable: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Serve one chat completion; ``request_id`` (generated by the caller, never a
        client's) else a new UUID; ``key_id``, ``exclude``, ``client_request_id`` and
        ``servable`` as for :meth:`decide`. Traced as ``banditctl.request`` (arm, route,
        policy version, propensity)."""
        with span(self.tracing.current(), "banditctl.request"):
            return await self._complete(
                body,
                request_id,
                key_id=key_id,
                exclude=exclude,
                client_request_id=client_request_id,
                servable=servable,
            )

    def _start(
        self,
        body: dict[str, Any],
        request_id: uuid.UUID | None,
        key_id: str | None,
        exclude: Collection[str],
        client_request_id: str | None = None,
        servable: Sequence[str] | None = None,
    ) -> tuple[uuid.UUID, Decision, int, str]:
        body = self.validate_body(body)
        rid, _x, decision, version, route = self.decide(
            body,
            request_id,
            key_id=key_id,
            exclude=exclude,
            client_request_id=client_request_id,
            servable=servable,
        )
        if self.tracing.current() is not None:
            set_attributes(
                trace.get_current_span(), _span_attributes(rid, decision, version, route)
            )
        self.counters["requests"] += 1
        return rid, decision, version, route

    def _meta(self, attempt: _Attempt, route: str, tried: Sequence[str] = ()) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "request_id": str(attempt.rid),
            "arm": attempt.decision.arm,
            "route": route,
            "policy_version": attempt.version,
            "propensity": float(attempt.decision.propensity),
            "feedback_token": self.tokens.issue(attempt.rid),
        }
        if tried:  # served by a fallback: which attempt, and the arms that failed first
            meta.update(
                attempt=len(tried) + 1, fallback_of=str(attempt.first), failed_arms=list(tried)
            )
        return meta

    def _fallback(
        self,
        body: dict[str, Any],
        exc: BaseException,
        first: uuid.UUID,
        tried: Sequence[str],
        key_id: str | None,
        exclude: Collection[str],
        client_request_id: str | None = None,
    ) -> _Attempt | None:
        """The next attempt after ``tried`` failed (``exc`` the last failure): the policy's
        pick among the arms not tried yet, logged as its own decision; ``None`` when
        ``gateway.fallbacks`` is spent, no arm is left or the failure was the request's
        own fault (a field the upstream refused)."""
        if len(tried) > self.config.gateway.fallbacks:
            return None
        if isinstance(exc, UpstreamStatus) and exc.client_error:
            return None
        left = {*exclude, *tried}
        if all(a in left for a in self.servable_arms(body)):
            return None
        rid, _x, decision, version, _route = self.decide(
            body,
            key_id=key_id,
            exclude=left,
            fallback_of=first,
            attempt=len(tried) + 1,
            client_request_id=client_request_id,
        )
        log.info(
            "arm %s failed (%s): attempt %d on %s", tried[-1], exc, len(tried) + 1, decision.arm
        )
        return _Attempt(rid, decision, version, first)

    def pool_down(self, arm: str) -> None:
        """Leave ``arm``'s pool (all arms of its model) out of decisions for
        ``gateway.pool_down_s``: it took no call within ``gateway.pool_wait_s``."""
        until = time.monotonic() + self.config.gateway.pool_down_s
        self.down_until[self.arm_configs[arm].model] = until
        log.warning("pool of %s took no call: left out of decisions for a while", arm)

    def _up(self, arms: list[str]) -> list[str]:
        """``arms`` less those whose pool is down (all of them when every one is)."""
        if not self.down_until:
            return arms
        now = time.monotonic()
        up = [a for a in arms if self.down_until.get(self.arm_configs[a].model, 0.0) <= now]
        return up or arms

    def _log_failure(
        self, tracer: Tracer | None, rid: uuid.UUID, started: float, status: str, error: str
    ) -> None:
        """A decision that got no answer still gets its outcome (``error`` or ``timeout``)."""
        self._log_outcome(
            tracer,
            OutcomeRecord(
                request_id=rid,
                created_at=datetime.now(UTC),
                status=status,
                latency_ms=(time.perf_counter() - started) * 1000.0,
                error=error,
            ),
        )

    def _cancelled(self, tracer: Tracer | None, rid: uuid.UUID, started: float) -> None:
        """The client went away before the answer: the decision still gets its outcome."""
        self._log_failure(tracer, rid, started, "error", "cancelled: the client went away")

    def _failed(
        self, tracer: Tracer | None, rid: uuid.UUID, arm: str, exc: BaseException, started: float
    ) -> Exception:
        """Log the failed outcome; the exception to raise (a field the upstream refused is
        the client's 4xx, anything else a 502)."""
        self.counters["errors"] += 1
        if isinstance(exc, PoolUnavailable):
            self.pool_down(arm)
        timeout = isinstance(exc, UpstreamStatus) and exc.status == 504
        status = "timeout" if timeout else "error"
        self._log_failure(tracer, rid, started, status, clean_text(str(exc))[:500])
        if isinstance(exc, UpstreamStatus) and exc.client_error:
            return BadRequest(exc.param or "body", exc.message, exc.status)
        return UpstreamError(f"arm {arm} failed: {exc}", rid)

    async def _complete(
        self,
        body: dict[str, Any],
        request_id: uuid.UUID | None,
        *,
        key_id: str | None,
        exclude: Collection[str],
        client_request_id: str | None,
        servable: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        received = time.perf_counter()
        tracer = self.tracing.current()
        rid, decision, version, route = self._start(
            body, request_id, key_id, exclude, client_request_id, servable
        )
        attempt = _Attempt(rid, decision, version, rid)
        tried: list[str] = []
        while True:
            start = time.perf_counter()
            try:
                with span(tracer, "banditctl.pool_call"):
                    gen = await self.call_pool(attempt.decision.arm, body)
                break
            except asyncio.CancelledError:  # the client went away: the decision keeps an outcome
                self._cancelled(tracer, attempt.rid, start)
                raise
            except Exception as exc:
                arm = attempt.decision.arm
                error = self._failed(tracer, attempt.rid, arm, exc, start)
                self.instruments.failed(arm, time.perf_counter() - received)
                tried.append(arm)
                following = self._fallback(
                    body, exc, rid, tried, key_id, exclude, client_request_id
                )
                if following is None:
                    raise error from exc
                attempt = following
        rid, decision, version = attempt.rid, attempt.decision, attempt.version
        if tried:
            self.instruments.fallbacks.inc()
        ttft_ms = gen.get("ttft_ms")
        self._log_outcome(
            tracer,
            OutcomeRecord(
                request_id=rid,
                created_at=datetime.now(UTC),
                status="ok",
                latency_ms=(time.perf_counter() - start) * 1000.0,
                ttft_ms=ttft_ms,
                prompt_tokens=int(gen["prompt_tokens"]),
                completion_tokens=int(gen["completion_tokens"]),
                energy_j=float(gen["energy_j"]),
                cost_usd=float(gen["cost_usd"]),
            ),
        )
        self.instruments.served(
            decision.arm,
            time.perf_counter() - received,
            None if ttft_ms is None else float(ttft_ms) / 1000.0,
        )
        await self._durable()
        meta = self._meta(attempt, route, tried)
        return {
            "id": f"{COMPLETION_ID_PREFIX}{rid.hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": decision.arm,
            "choices": choices_of(gen),
            "usage": usage_json(gen),
            "banditctl": {
                **meta,
                "cost_usd": float(gen["cost_usd"]),
                "energy_j": float(gen["energy_j"]),
            },
        }

    async def _whole_as_stream(
        self, arm: str, body: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """A pool without streaming: its whole answer as one delta per choice."""
        gen = await self.call_pool(arm, body)
        for choice in choices_of(gen):
            message = choice["message"]
            yield {
                "index": choice["index"],
                "text": message.get("content") or "",
                "tool_calls": tool_call_deltas(message.get("tool_calls") or []) or None,
                "finish_reason": choice["finish_reason"],
            }
        yield {"usage": gen}

    async def open_stream(
        self,
        body: dict[str, Any],
        request_id: uuid.UUID | None = None,
        *,
        key_id: str | None = None,
        exclude: Collection[str] = (),
        on_done: Callable[[dict[str, Any] | None], None] | None = None,
        client_request_id: str | None = None,
        servable: Sequence[str] | None = None,
    ) -> StreamedCompletion:
        """Decide, call the chosen pool's stream and wait for its first delta: an error
        before it raises as :meth:`complete` does (no answer has begun); after it, the
        answer streams (:class:`StreamedCompletion`). The outcome's ``ttft_ms`` is the
        time from the pool call to the first text or tool call delta here. ``on_done``
        gets the answer's usage and cost (``None`` if it failed) once it ends."""
        received = time.perf_counter()
        tracer = self.tracing.current()
        try:
            rid, decision, version, route = self._start(
                body, request_id, key_id, exclude, client_request_id, servable
            )
        except Exception:
            if on_done is not None:  # refused before any decision: nothing spent
                on_done(None)
            raise
        attempt = _Attempt(rid, decision, version, rid)
        tried: list[str] = []
        while True:  # fall back to another arm only until the first delta
            start = time.perf_counter()
            deltas = aiter(self.stream_pool(attempt.decision.arm, body))
            try:
                with span(tracer, "banditctl.pool_call"):
                    first = await anext(deltas, None)
                break
            except asyncio.CancelledError:  # the client went away before the first delta
                await aclose_quietly(deltas)
                self._cancelled(tracer, attempt.rid, start)
                if on_done is not None:
                    on_done(None)
                raise
            except Exception as exc:
                await aclose_quietly(deltas)
                arm = attempt.decision.arm
                error = self._failed(tracer, attempt.rid, arm, exc, start)
                self.instruments.failed(arm, time.perf_counter() - received)
                tried.append(arm)
                following = None
                try:
                    following = self._fallback(
                        body, exc, rid, tried, key_id, exclude, client_request_id
                    )
                finally:
                    if following is None and on_done is not None:
                        on_done(None)  # no answer will come
                if following is None:
                    raise error from exc
                attempt = following
        if tried:
            self.instruments.fallbacks.inc()
        await self._durable()  # the decision (and any failed attempt's), before a token goes
        meta = self._meta(attempt, route, tried)
        answer = StreamProgress(attempt.rid, attempt.decision.arm, body, received, start)
        events = self._events(answer, meta, first, deltas, tracer, on_done)
        return StreamedCompletion(meta, events)

    async def _events(
        self,
        answer: StreamProgress,
        meta: dict[str, Any],
        first: dict[str, Any] | None,
        deltas: AsyncIterator[dict[str, Any]],
        tracer: Tracer | None,
        on_done: Callable[[dict[str, Any] | None], None] | None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        base = {
            "id": f"{COMPLETION_ID_PREFIX}{answer.rid.hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": answer.arm,
        }
        opened = {**base, "choices": [opening_choice(0)], "banditctl": meta}
        started: set[int] = {0}
        ended = False
        failure: BaseException | None = None
        try:
            yield opened
            delta = first
            while delta is not None:
                answer.add(delta)
                index = int(delta.get("index") or 0)
                event = chunk_event(base, delta, first=index not in started)
                if event is not None:
                    started.add(index)
                    yield event
                try:
                    delta = await anext(deltas, None)
                except Exception as exc:  # the upstream failed after the first token
                    failure = exc
                    yield {"error": error_json(exc)}
                    return
            for index in answer.unfinished():  # a backend that only stated it in usage
                yield {**base, "choices": [finish_choice(index, answer.finish_default())]}
            if include_usage(answer.body):
                yield {**base, "choices": [], "usage": usage_json(answer.usage())}
            ended = True
        finally:
            await aclose_quietly(deltas)  # stops the generation if the client went away
            result = self._streamed(answer, tracer, ended=ended, failure=failure)
            if on_done is not None:
                on_done(result)

    def _streamed(
        self,
        answer: StreamProgress,
        tracer: Tracer | None,
        *,
        ended: bool,
        failure: BaseException | None,
    ) -> dict[str, Any] | None:
        """Log a streamed answer's outcome: ok, an upstream failure after the first token
        (error), or a client that left before the end (ok, its ``error`` says so, tokens
        and cost as far as it went). Returns the usage and cost, ``None`` if it failed."""
        now = time.perf_counter()
        if failure is not None:
            self._failed(tracer, answer.rid, answer.arm, failure, answer.start)
            self.instruments.failed(answer.arm, now - answer.received)
            return None
        usage = answer.usage(self.arm_configs.get(answer.arm))
        self._log_outcome(
            tracer,
            OutcomeRecord(
                request_id=answer.rid,
                created_at=datetime.now(UTC),
                status="ok",
                latency_ms=(now - answer.start) * 1000.0,
                ttft_ms=answer.ttft_ms,
                prompt_tokens=int(usage["prompt_tokens"]),
                completion_tokens=int(usage["completion_tokens"]),
                energy_j=float(usage["energy_j"]),
                cost_usd=float(usage["cost_usd"]),
                error=None if ended else f"client disconnected after {answer.deltas} deltas",
            ),
        )
        ttft_s = None if answer.ttft_ms is None else answer.ttft_ms / 1000.0
        self.instruments.served(answer.arm, now - answer.received, ttft_s)
        return {
            "usage": usage_json(usage),
            "banditctl": {"cost_usd": usage["cost_usd"], "energy_j": usage["energy_j"]},
        }

    async def _durable(self) -> None:
        """Under ``gateway.durable_log``, wait until what this request logged so far is
        written (at most ``durable_log_timeout_s``; then it is answered anyway)."""
        gw = self.config.gateway
        if gw.durable_log and not await self.writer.written(gw.durable_log_timeout_s):
            self.counters["durable_log_timeouts"] = self.counters.get("durable_log_timeouts", 0) + 1
            log.warning("durable_log: records not written within %.1f s", gw.durable_log_timeout_s)

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
    """A label for the decision row; the API edge refused anything but a clean string."""
    return None if v is None else clean_text(str(v))[:200]


def _finite(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return f if np.isfinite(f) else None


def attempt_id(first: uuid.UUID, attempt: int) -> uuid.UUID:
    """The request id of a request's ``attempt`` (2, 3, ...): derived from the first's."""
    return uuid.uuid5(first, f"attempt-{attempt}")


@dataclass(frozen=True)
class _Attempt:
    rid: uuid.UUID
    decision: Decision
    version: int
    first: uuid.UUID  # the request's first attempt
