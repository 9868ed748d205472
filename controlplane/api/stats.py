"""Liveness (``/healthz``, with the deployment's instance id) and the gateway's
statistics (``/v1/stats``, with the budgets).

``app.state.learner_status`` and ``app.state.cache_status``: async callables that
ask the learner and the cache controller for their status (the Gateway
deployment's handle calls), or None.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request

from controlplane.admission import Admission
from controlplane.api.deps import CoreDep
from feedback.repositories import candidates, reports

router = APIRouter()


@router.get("/healthz")
async def healthz(request: Request, core: CoreDep) -> dict[str, Any]:
    # ``instance``: the id the launcher gave this deployment (None elsewhere), so that its
    # readiness probe knows it reached this gateway and not another server on the port
    return {
        "ok": True,
        "policy_version": core.policy.version,
        "instance": request.app.state.instance_id,
    }


@router.get("/v1/stats")
async def stats(request: Request, core: CoreDep) -> Any:
    def load() -> Any:
        with core.engine.connect() as conn:
            return reports.table_counts(conn)

    def load_releases() -> Any:
        with core.engine.connect() as conn:
            return candidates.release_summary(conn)

    return {
        "learner": await _service_status(request.app.state.learner_status),
        "cache": await _service_status(request.app.state.cache_status),
        "tables": await asyncio.to_thread(load),
        "gateway": dict(core.counters),
        "writer": core.writer.stats.as_dict(),
        "policy_version": core.policy.version,
        "budgets": await _budgets(request),
        "releases": await asyncio.to_thread(load_releases),
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
        return await asyncio.wait_for(ask(), timeout=5)
    except Exception as exc:
        return {"error": repr(exc)}
