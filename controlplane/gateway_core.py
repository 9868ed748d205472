"""What a gateway replica does per request, without Ray or HTTP.

featurize -> select (in-process, current snapshot) -> log decision (buffered)
-> call the chosen pool -> log outcome -> answer with the request id, arm,
policy version and a signed feedback token. Nothing here waits on the
learner or on a database round trip per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine

from cache_manager.router import ArmPrices, ArmTerms
from controlplane.config import BanditConfig
from controlplane.learner_loop import Policy, latest_policy, snapshot_learner
from controlplane.tokens import FeedbackTokens
from feedback.records import COMPLETION_ID_PREFIX, DecisionRecord, OutcomeRecord
from feedback.repositories import residency as residency_repo
from feedback.writer import DecisionLogWriter
from learners import Decision

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
    ) -> None:
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
        self.counters: dict[str, float] = {"requests": 0, "errors": 0}

    # -- policy ---------------------------------------------------------

    def refresh_policy(self) -> bool:
        """Load the latest snapshot if it is newer than ours (blocking DB call)."""
        policy = latest_policy(self.engine, self.config, self.policy.version)
        if policy is None:
            return False
        self.policy = policy
        return True

    def refresh_residency(self) -> None:
        """Price paging for adapter arms resident nowhere (planned cache policies)."""
        if not self.prices.active:
            return
        with self.engine.connect() as conn:
            held = {
                a for adapters in residency_repo.resident_adapters(conn).values() for a in adapters
            }
        self.paging = self.prices.terms(held)

    async def policy_refresher(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.refresh_policy)
                await asyncio.to_thread(self.refresh_residency)
            except Exception:  # keep serving on the current policy
                log.exception("policy refresh failed")
            await asyncio.sleep(self.config.gateway.policy_refresh_s)

    # -- the request path ------------------------------------------------

    def _select(
        self, policy: Policy, x: np.ndarray, arms: list[str], rng: np.random.Generator
    ) -> Decision:
        paging = self.paging
        return policy.learner.select(
            x,
            arms,
            rng,
            penalties=paging.penalties or None,
            width_scale=paging.width_scale or None,
        )

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
        route = body.get("model") or "auto"
        arms = [a for a in self.route_arms(route) if a not in exclude]
        if not arms:
            raise BadRequest("model", f"no arm of {route!r} is allowed for this request", 429)
        x = self.featurizer.featurize(body)
        policy = self.policy
        decision = self._select(policy, x, arms, self.rng)
        rid = request_id or uuid.uuid4()
        meta = body.get("metadata") or {}
        self.writer.log_decision(
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
            )
        )
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
        ``key_id`` and ``exclude`` as for :meth:`decide`."""
        body = self.validate_body(body)
        rid, _x, decision, version, route = self.decide(
            body, request_id, key_id=key_id, exclude=exclude
        )
        self.counters["requests"] += 1
        start = time.perf_counter()
        try:
            gen = await self.call_pool(decision.arm, body)
        except Exception as exc:
            self.counters["errors"] += 1
            self.writer.log_outcome(
                OutcomeRecord(
                    request_id=rid,
                    created_at=datetime.now(UTC),
                    status="error",
                    latency_ms=(time.perf_counter() - start) * 1000.0,
                    error=str(exc)[:500],
                )
            )
            raise UpstreamError(f"arm {decision.arm} failed: {exc}") from exc
        self.writer.log_outcome(
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
            )
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


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)[:200]


def _finite(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return f if np.isfinite(f) else None
