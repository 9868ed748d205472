"""The dashboard: its page and assets (package data, no CDN) and the JSON it reads.

The figures come from :mod:`controlplane.dashboard_data` and
:mod:`controlplane.dashboard_routing` (no HTTP there); ``app.state.policy_cache``
holds the snapshot learners they replay. Every JSON endpoint takes ``window_s``:
the figures cover the decisions of its last seconds (absent: all time). The JSON
endpoints hold per-user data (recent feedback with comments and request ids): they need
a key with the read scope unless ``auth.open_dashboard`` (:func:`.auth.read_key`); the
page and its assets are static and open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from controlplane import dashboard_data as data
from controlplane import dashboard_routing
from controlplane.api.auth import ReadDep
from controlplane.api.deps import CoreDep
from controlplane.api.errors import error_response
from controlplane.dashboard_stats import Window
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

MAX_WINDOW_S = 366 * 86400.0


async def get_window(
    window_s: Annotated[
        float | None,
        Query(gt=0, le=MAX_WINDOW_S, description="the last seconds covered (absent: all time)"),
    ] = None,
) -> Window:
    return Window(window_s, datetime.now(UTC))


WindowDep = Annotated[Window, Depends(get_window)]


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


@router.get("/v1/dashboard/overview", dependencies=[ReadDep])
async def overview(core: CoreDep, cache: PolicyCacheDep, window: WindowDep) -> Any:
    result = await _read(core, data.overview, core.config, cache, window)
    result["gateway"] = {
        "policy_version": core.policy.version,
        "requests": core.counters.get("requests", 0),
        "errors": core.counters.get("errors", 0),
    }
    return result


@router.get("/v1/dashboard/routing", dependencies=[ReadDep])
async def routing(
    core: CoreDep,
    cache: PolicyCacheDep,
    window: WindowDep,
    limit: int = Query(dashboard_routing.ROUTING_LIMIT, ge=1, le=50_000),
) -> Any:
    return await _read(core, dashboard_routing.routing, core.config, cache, window, limit)


@router.get("/v1/dashboard/learning", dependencies=[ReadDep])
async def learning(core: CoreDep, window: WindowDep, buckets: int = Query(40, ge=1, le=500)) -> Any:
    return await _read(core, data.learning_curves, core.config, window, buckets)


@router.get("/v1/dashboard/feedback", dependencies=[ReadDep])
async def feedback(core: CoreDep, window: WindowDep, limit: int = Query(50, ge=1, le=500)) -> Any:
    return await _read(core, data.recent_feedback, window, limit)


@router.get("/v1/dashboard/residency", dependencies=[ReadDep])
async def residency(
    core: CoreDep, window: WindowDep, limit: int = Query(500, ge=1, le=5000)
) -> Any:
    return await _read(core, data.residency, window, limit)
