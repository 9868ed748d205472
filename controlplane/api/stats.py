"""Liveness (``/healthz``, with the deployment's instance id and the health of every
background loop) and the gateway's statistics (``/v1/stats``, with the budgets).

``/healthz`` answers 200 while every loop is healthy and 503 when one is dead or stuck
(:class:`feedback.loop_health.LoopHealth`): this replica's decision log writer, policy
refresher and policy listener, and, asked through ``app.state.learner_status`` and
``app.state.cache_status``, the learner's and the cache controller's.

``app.state.learner_status`` and ``app.state.cache_status``: async callables that
ask the learner and the cache controller for their status (the Gateway
deployment's handle calls), or None.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from controlplane.admission import Admission
from controlplane.api.auth import ApiKeysDep, may_read
from controlplane.api.deps import CoreDep
from controlplane.gc_tuning import gc_state
from feedback.loop_health import public_error
from feedback.repositories import candidates, reports

SERVICE_TIMEOUT_S = 5.0

router = APIRouter()


@router.get("/healthz")
async def healthz(request: Request, core: CoreDep) -> JSONResponse:
    # ``instance``: the id the launcher gave this deployment (None elsewhere), so that its
    # readiness probe knows it reached this gateway and not another server on the port
    loops = {h.name: h.report() for h in core.loops()}
    for name, ask in (
        ("learner", request.app.state.learner_status),
        ("cache_controller", request.app.state.cache_status),
    ):
        if ask is not None:
            loops[name] = _service_health(await _service_status(ask))
    ok = all(r["healthy"] for r in loops.values())
    body = {
        "ok": ok,
        "policy_version": core.policy.version,
        "instance": request.app.state.instance_id,
        "loops": loops,
    }
    return JSONResponse(body, status_code=200 if ok else 503)


def _service_health(status: Any) -> dict[str, Any]:
    if isinstance(status, dict) and isinstance(status.get("health"), dict):
        report: dict[str, Any] = status["health"]
        return report
    error = status.get("error") if isinstance(status, dict) else None
    return {"healthy": False, "problem": f"unreachable: {error}", "alive": False}


@router.get("/v1/stats")
async def stats(request: Request, core: CoreDep, keys: ApiKeysDep) -> Any:
    """``budgets`` (who spent what: key names, tenants) only to a reader (``read`` scope,
    or ``auth.open_dashboard``); null otherwise."""

    def load() -> Any:
        with core.engine.connect() as conn:
            return reports.table_counts(conn)

    try:
        tables = await asyncio.to_thread(load)
    except Exception as exc:  # the database is away: say so, without its message
        tables = {"error": public_error(exc)}
    writer = core.writer.stats.as_dict()
    if writer.get("last_error") is not None:  # database text may quote data: the logs have it
        writer["last_error"] = core.writer.health.last_error or "error"

    def load_releases() -> Any:
        with core.engine.connect() as conn:
            return candidates.release_summary(conn)

    try:
        releases = await asyncio.to_thread(load_releases)  # counts and versions: no user data
    except Exception as exc:  # the database is away: say so, without its message
        releases = {"error": public_error(exc)}
    return {
        "learner": await _service_status(request.app.state.learner_status),
        "cache": await _service_status(request.app.state.cache_status),
        "tables": tables,
        "gateway": dict(core.counters),
        "process": {"gc": gc_state()},  # this replica's garbage collector (gc_tuning)
        # task names outside featurizer.tasks that share a task slot: counts, no names
        "featurizer": {
            k: v for k, v in core.featurizer.task_sharing().items() if k != "shared_slots"
        },
        "writer": writer,
        "policy_version": core.policy.version,
        "budgets": await _budgets(request) if may_read(request, keys) else None,
        "releases": releases,
    }


async def _budgets(request: Request) -> list[dict[str, Any]]:
    """Each budget's limits, spend this period, remaining and reset time (this replica's
    view: Postgres at the last refresh plus what it spent since)."""
    admission: Admission = request.app.state.admission
    await admission.keep_fresh()
    return admission.budgets.report()


async def _service_status(ask: Callable[[], Awaitable[dict[str, Any]]] | None) -> Any:
    """A service's status, or its error: the stats page must not fail with a service."""
    if ask is None:
        return None
    try:
        return await asyncio.wait_for(ask(), timeout=SERVICE_TIMEOUT_S)
    except Exception as exc:
        return {"error": public_error(exc)}
