"""Liveness (``/healthz``) and the gateway's statistics (``/v1/stats``).

``app.state.learner_status``: an async callable that asks the learner for its
status (the Gateway deployment's handle call), or None.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from controlplane.api.deps import CoreDep
from feedback.repositories import reports

router = APIRouter()


@router.get("/healthz")
async def healthz(core: CoreDep) -> dict[str, Any]:
    return {"ok": True, "policy_version": core.policy.version}


@router.get("/v1/stats")
async def stats(request: Request, core: CoreDep) -> Any:
    def load() -> Any:
        with core.engine.connect() as conn:
            return reports.table_counts(conn)

    learner_status = request.app.state.learner_status
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
