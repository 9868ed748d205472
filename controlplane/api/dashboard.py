"""The dashboard: its page and assets (package data, no CDN) and the JSON it reads.

The figures come from :mod:`controlplane.dashboard_data` (no HTTP there);
``app.state.policy_cache`` holds the snapshot learners it replays.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from controlplane import dashboard_data as data
from controlplane.api.deps import CoreDep
from controlplane.api.errors import error_response
from controlplane.gateway_core import GatewayCore

ASSETS = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
}

router = APIRouter()


async def get_policy_cache(request: Request) -> data.PolicyCache:
    cache: data.PolicyCache = request.app.state.policy_cache
    return cache


PolicyCacheDep = Annotated[data.PolicyCache, Depends(get_policy_cache)]


def _asset(name: str) -> bytes:
    return resources.files("controlplane").joinpath("static", name).read_bytes()


def _read(core: GatewayCore, fn: Callable[..., Any], *args: Any) -> Any:
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
        return error_response(404, f"no asset {name!r}", "not_found", "name")
    body = await asyncio.to_thread(_asset, name)
    return Response(body, media_type=ASSETS[name], headers={"cache-control": "no-cache"})


@router.get("/v1/dashboard/overview")
async def overview(core: CoreDep, cache: PolicyCacheDep) -> Any:
    result = await _read(core, data.overview, core.config, cache)
    result["gateway"] = {
        "policy_version": core.policy.version,
        "requests": core.counters.get("requests", 0),
        "errors": core.counters.get("errors", 0),
    }
    return result


@router.get("/v1/dashboard/learning")
async def learning(core: CoreDep, buckets: int = Query(40, ge=1, le=500)) -> Any:
    return await _read(core, data.learning_curves, core.config, buckets)


@router.get("/v1/dashboard/feedback")
async def feedback(core: CoreDep, limit: int = Query(50, ge=1, le=500)) -> Any:
    return await _read(core, data.recent_feedback, limit)


@router.get("/v1/dashboard/residency")
async def residency(core: CoreDep, limit: int = Query(500, ge=1, le=5000)) -> Any:
    return await _read(core, data.residency, limit)
