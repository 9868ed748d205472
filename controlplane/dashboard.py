"""The dashboard: its page and assets (package data, no CDN), the JSON it reads,
and the admin-only policy rollback.

``dashboard_router(core, scopes)``: ``scopes(request)`` returns the API key's
scopes, None without a key, and raises the app's 401 error for an unknown key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from importlib import resources
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from controlplane import dashboard_data as data
from controlplane.gateway_core import GatewayCore
from feedback.repositories import snapshots

ScopesOf = Callable[[Request], "set[str] | None"]

ASSETS = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
}


def _asset(name: str) -> bytes:
    return resources.files("controlplane").joinpath("static", name).read_bytes()


def _auth_error(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": "authentication_error", "param": None}},
        status_code=status,
    )


def dashboard_router(core: GatewayCore, scopes: ScopesOf) -> APIRouter:
    router = APIRouter()
    cache = data.PolicyCache(core.config)
    config = core.config

    def read(fn: Callable[..., Any], *args: Any) -> Any:
        def run() -> Any:
            with core.engine.connect() as conn:
                return fn(conn, *args)

        return asyncio.to_thread(run)

    @router.get("/dashboard", include_in_schema=False)
    async def page() -> Response:
        body = await asyncio.to_thread(_asset, "dashboard.html")
        return Response(body, media_type="text/html; charset=utf-8")

    @router.get("/dashboard/static/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in ASSETS:
            return JSONResponse(
                {"error": {"message": f"no asset {name!r}", "type": "not_found", "param": "name"}},
                status_code=404,
            )
        body = await asyncio.to_thread(_asset, name)
        return Response(body, media_type=ASSETS[name], headers={"cache-control": "no-cache"})

    @router.get("/v1/dashboard/overview")
    async def overview() -> Any:
        result = await read(data.overview, config, cache)
        result["gateway"] = {
            "policy_version": core.policy.version,
            "requests": core.counters.get("requests", 0),
            "errors": core.counters.get("errors", 0),
        }
        return result

    @router.get("/v1/dashboard/learning")
    async def learning(buckets: int = Query(40, ge=1, le=500)) -> Any:
        return await read(data.learning_curves, config, buckets)

    @router.get("/v1/dashboard/feedback")
    async def feedback(limit: int = Query(50, ge=1, le=500)) -> Any:
        return await read(data.recent_feedback, limit)

    @router.get("/v1/dashboard/residency")
    async def residency(limit: int = Query(500, ge=1, le=5000)) -> Any:
        return await read(data.residency, limit)

    @router.post("/v1/policies/{version}/rollback")
    async def rollback(version: int, request: Request) -> Any:
        granted = scopes(request)
        if granted is None:
            return _auth_error(401, "rollback needs an API key with the admin scope")
        if "admin" not in granted:
            return _auth_error(403, "API key lacks the admin scope")

        def publish() -> int:
            with core.engine.begin() as conn:
                return snapshots.publish_rollback(conn, version)

        new = await asyncio.to_thread(publish)
        return {"version": new, "rolled_back_to": version, "reason": "rollback"}

    return router
