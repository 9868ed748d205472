"""The HTTP API, built around a :class:`GatewayCore` by :func:`create_app`.

OpenAI-compatible chat completions and models, feedback (single and batch),
policy inspection and route explanation. Errors are JSON
``{"error": {"message", "type", "param"}}`` with 4xx/5xx codes.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from controlplane.dashboard import dashboard_router
from controlplane.gateway_core import BadRequest, GatewayCore, UpstreamError
from controlplane.metrics import install_metrics
from controlplane.tokens import TokenError
from feedback.errors import InvalidInput, NotFound, WriterFull
from feedback.records import FeedbackInput, parse_request_id
from feedback.repositories import feedback as feedback_repo
from feedback.repositories import reports, snapshots

THUMBS = {"up": 1.0, "thumbs_up": 1.0, "down": 0.0, "thumbs_down": 0.0}


class AuthError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param}}, status_code=status
    )


def quality_from(payload: dict[str, Any]) -> tuple[float, str | None]:
    """``quality`` in [0, 1], or ``rating``: thumbs ("up"/"down") or 1-5 stars."""
    if "quality" in payload and payload["quality"] is not None:
        return payload["quality"], None
    rating = payload.get("rating")
    if rating is None:
        raise InvalidInput("quality", "give quality in [0, 1] or a rating")
    if isinstance(rating, str) and rating.lower() in THUMBS:
        return THUMBS[rating.lower()], rating
    if isinstance(rating, int) and not isinstance(rating, bool) and 1 <= rating <= 5:
        return (rating - 1) / 4.0, str(rating)
    raise InvalidInput("rating", "must be 'up', 'down' or an integer 1-5")


class ApiKeys:
    def __init__(self, config_keys: Any) -> None:
        self.keys: dict[str, set[str]] = {}
        for k in config_keys:
            value = os.environ.get(k.key_env)
            if value:
                self.keys[value] = set(k.scopes)

    def scopes(self, request: Request) -> set[str] | None:
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            return None
        key = auth[7:].strip()
        if key not in self.keys:
            raise AuthError(401, "unknown API key")
        return self.keys[key]


def create_app(
    core: GatewayCore,
    *,
    start_background: bool = True,
    learner_status: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    proxy_request_id: Callable[[], str | None] | None = None,
) -> FastAPI:
    """``proxy_request_id``: the id a fronting proxy (Ray Serve's) already put in
    ``x-request-id``; when it is a UUID, the decision is logged under it."""
    keys = ApiKeys(core.config.api_keys)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = None
        if start_background:
            core.writer.start()
            task = asyncio.create_task(core.policy_refresher())
        yield
        if task is not None:
            task.cancel()
        await asyncio.to_thread(core.writer.close)

    app = FastAPI(title="banditctl gateway", lifespan=lifespan)

    @app.exception_handler(BadRequest)
    async def _bad(_: Request, exc: BadRequest) -> JSONResponse:
        kind = "model_not_found" if exc.status == 404 else "invalid_request_error"
        return _error(exc.status, exc.message, kind, exc.field)

    @app.exception_handler(InvalidInput)
    async def _invalid(_: Request, exc: InvalidInput) -> JSONResponse:
        return _error(422, exc.message, "invalid_request_error", exc.field)

    @app.exception_handler(NotFound)
    async def _nf(_: Request, exc: NotFound) -> JSONResponse:
        return _error(404, str(exc), "not_found", exc.resource)

    @app.exception_handler(AuthError)
    async def _auth(_: Request, exc: AuthError) -> JSONResponse:
        return _error(exc.status, exc.message, "authentication_error")

    @app.exception_handler(WriterFull)
    async def _full(_: Request, exc: WriterFull) -> JSONResponse:
        return _error(503, str(exc), "overloaded")

    @app.exception_handler(UpstreamError)
    async def _upstream(_: Request, exc: UpstreamError) -> JSONResponse:
        return _error(502, str(exc), "upstream_error")

    async def _json(request: Request) -> Any:
        try:
            return await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadRequest("body", "not valid JSON", 400) from None

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "policy_version": core.policy.version}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        names = ["auto", *core.config.routes, *(a.name for a in core.config.arms)]
        return {
            "object": "list",
            "data": [
                {"id": n, "object": "model", "owned_by": "banditctl"} for n in dict.fromkeys(names)
            ],
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await _json(request)
        proxied = _as_uuid(proxy_request_id() if proxy_request_id else None)
        result = await core.complete(body, proxied)
        meta = result["banditctl"]
        headers = {
            "x-banditctl-request-id": meta["request_id"],
            "x-banditctl-arm": meta["arm"],
            "x-banditctl-policy-version": str(meta["policy_version"]),
            "x-banditctl-feedback-token": meta["feedback_token"],
        }
        if proxied is None:  # else the proxy sets x-request-id to the same id
            headers["x-request-id"] = meta["request_id"]
        if body.get("stream"):
            return StreamingResponse(_sse(result), media_type="text/event-stream", headers=headers)
        return JSONResponse(result, headers=headers)

    # -- feedback ----------------------------------------------------------

    def _authorise(request: Request, payload: dict[str, Any], rid: Any) -> bool:
        """Returns whether the decision must already be stored (API key path)."""
        token = payload.get("feedback_token") or request.headers.get("x-feedback-token")
        scopes = keys.scopes(request)
        if scopes is not None:
            if "feedback" not in scopes and "admin" not in scopes:
                raise AuthError(403, "API key lacks the feedback scope")
            return True
        if not token:
            raise AuthError(401, "feedback needs the answer's feedback_token or an API key")
        try:
            core.tokens.verify(str(token), rid)
        except TokenError as exc:
            raise AuthError(403 if exc.expired else 401, str(exc)) from None
        return False

    def _parse_feedback(request: Request, payload: Any) -> tuple[FeedbackInput, bool]:
        if not isinstance(payload, dict):
            raise InvalidInput("body", "must be a JSON object")
        rid = parse_request_id(payload.get("request_id"))
        require_known = _authorise(request, payload, rid)
        quality, raw = quality_from(payload)
        comment = payload.get("comment")
        if comment is not None and not isinstance(comment, str):
            raise InvalidInput("comment", "must be a string")
        fb = FeedbackInput.validated(
            rid, quality, payload.get("source", "user"), raw_rating=raw, comment=comment
        )
        return fb, require_known

    def _counted(results: list[Any]) -> list[dict[str, Any]]:
        """Count stored feedback and duplicates on this replica; the answer per item."""
        dups = sum(r.duplicate for r in results)
        core.counters["feedback_duplicates"] = core.counters.get("feedback_duplicates", 0) + dups
        core.counters["feedback"] = core.counters.get("feedback", 0) + len(results) - dups
        return [
            {"request_id": str(r.request_id), "source": r.source, "duplicate": r.duplicate}
            for r in results
        ]

    def _store_one(fb: FeedbackInput, require_known: bool) -> Any:
        with core.engine.begin() as conn:
            return feedback_repo.record_feedback(conn, fb, require_known=require_known)

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> Any:
        fb, require_known = _parse_feedback(request, await _json(request))
        res = await asyncio.to_thread(_store_one, fb, require_known)
        return _counted([res])[0]

    @app.post("/v1/feedback/batch")
    async def feedback_batch(request: Request) -> Any:
        payload = await _json(request)
        items = payload.get("items") if isinstance(payload, dict) else None
        if not isinstance(items, list) or not items or len(items) > 1000:
            raise InvalidInput("items", "must be a list of 1 to 1000 feedback objects")
        parsed = []
        for i, item in enumerate(items):
            try:
                parsed.append(_parse_feedback(request, item))
            except InvalidInput as exc:
                raise InvalidInput(f"items[{i}].{exc.field}", exc.message) from None
        if any(req for _, req in parsed):

            def store() -> Any:
                with core.engine.begin() as conn:
                    return feedback_repo.record_feedback_many(conn, [fb for fb, _ in parsed])

            results = await asyncio.to_thread(store)
        else:

            def store_tokens() -> Any:
                with core.engine.begin() as conn:
                    return [
                        feedback_repo.record_feedback(conn, fb, require_known=False)
                        for fb, _ in parsed
                    ]

            results = await asyncio.to_thread(store_tokens)
        return {"results": _counted(results)}

    # -- policies ----------------------------------------------------------

    def _policy_view(snap: dict[str, Any], traffic: dict[str, Any]) -> dict[str, Any]:
        arms = {}
        summary = (snap.get("summary") or {}).get("arms", {})
        for arm in dict.fromkeys([*summary, *traffic]):
            s = summary.get(arm, {})
            t = traffic.get(arm, {})
            arms[arm] = {
                "pulls": s.get("pulls", 0.0),
                "mean_quality": s.get("mean_quality"),
                "mean_energy_j": s.get("mean_energy_j"),
                "mean_latency_ms": s.get("mean_latency_ms"),
                "mean_cost_usd": s.get("mean_cost_usd"),
                "uncertainty": s.get("uncertainty"),
                "traffic_share": t.get("share", 0.0),
                "decisions": t.get("decisions", 0.0),
            }
        return {
            "version": snap["version"],
            "learner": snap["learner_kind"],
            "created_at": snap["created_at"].isoformat(),
            "watermark": snap["watermark"],
            "events_applied": snap["events_applied"],
            "reason": snap["reason"],
            "objective": (snap.get("config") or {}).get("objective"),
            "arms": _clean(arms),
        }

    def _load_policy(version: int | None) -> dict[str, Any]:
        with core.engine.connect() as conn:
            snap = (
                snapshots.latest_snapshot(conn)
                if version is None
                else snapshots.get_snapshot(conn, version)
            )
            if snap is None:
                raise NotFound("policy version", "current")
            return _policy_view(snap, reports.traffic_by_arm(conn))

    @app.get("/v1/policies/current")
    async def policy_current() -> Any:
        return await asyncio.to_thread(_load_policy, None)

    @app.get("/v1/policies/{version}")
    async def policy_version(version: int) -> Any:
        return await asyncio.to_thread(_load_policy, version)

    @app.get("/v1/policies")
    async def policy_list() -> Any:
        def load() -> Any:
            with core.engine.connect() as conn:
                return snapshots.list_snapshots(conn)

        snaps = await asyncio.to_thread(load)
        return {
            "versions": [
                {
                    "version": s["version"],
                    "created_at": s["created_at"].isoformat(),
                    "events_applied": s["events_applied"],
                    "reason": s["reason"],
                }
                for s in snaps
            ]
        }

    @app.post("/v1/route/explain")
    async def explain(request: Request) -> Any:
        return core.explain(await _json(request))

    @app.get("/v1/stats")
    async def stats() -> Any:
        def load() -> Any:
            with core.engine.connect() as conn:
                return reports.table_counts(conn)

        learner = None
        if learner_status is not None:
            try:
                learner = await asyncio.wait_for(learner_status(), timeout=5)
            except Exception as exc:  # the stats page must not fail with the learner
                learner = {"error": repr(exc)}
        return {
            "learner": learner,
            "tables": await asyncio.to_thread(load),
            "gateway": dict(core.counters),
            "writer": core.writer.stats.as_dict(),
            "policy_version": core.policy.version,
        }

    app.include_router(dashboard_router(core, keys.scopes))
    install_metrics(app, core)
    return app


async def _sse(result: dict[str, Any]) -> AsyncIterator[bytes]:
    text = result["choices"][0]["message"]["content"]
    base = {
        "id": result["id"],
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": result["model"],
    }
    first = {
        **base,
        "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}],
    }
    first["banditctl"] = result["banditctl"]
    yield f"data: {json.dumps(first)}\n\n".encode()
    words = text.split(" ")
    for i, w in enumerate(words):
        piece = w if i == 0 else " " + w
        chunk = {
            **base,
            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
        }
        yield f"data: {json.dumps(chunk)}\n\n".encode()
    last = {
        **base,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": result["usage"],
    }
    yield f"data: {json.dumps(last)}\n\n".encode()
    yield b"data: [DONE]\n\n"


def _as_uuid(value: str | None) -> uuid.UUID | None:
    if not value:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _clean(obj: Any) -> Any:
    """NaN/inf are not JSON: map them to null."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    return obj
