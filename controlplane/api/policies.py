"""Published policies: the current one, one by version, the list, and the
admin-only rollback (which publishes an old version's state as a new version)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from controlplane.api.auth import ApiKeysDep, authorise_rollback
from controlplane.api.deps import CoreDep
from controlplane.gateway_core import GatewayCore
from controlplane.releases import record_manual_rollback
from feedback.errors import NotFound
from feedback.repositories import reports, snapshots

router = APIRouter()

# a policy version is a PostgreSQL integer: a larger one is refused (422), not looked up
Version = Annotated[int, Path(ge=0, le=2**31 - 1, description="a policy version")]


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
        "compacted": snap["state"] is None,
        "objective": (snap.get("config") or {}).get("objective"),
        "arms": _clean(arms),
    }


def _load_policy(core: GatewayCore, version: int | None) -> dict[str, Any]:
    with core.engine.connect() as conn:
        snap = (
            snapshots.latest_snapshot(conn)
            if version is None
            else snapshots.get_snapshot(conn, version)
        )
        if snap is None:
            raise NotFound("policy version", "current")
        return _policy_view(snap, reports.traffic_by_arm(conn))


@router.get("/v1/policies/current")
async def policy_current(core: CoreDep) -> Any:
    return await asyncio.to_thread(_load_policy, core, None)


@router.get("/v1/policies/{version}")
async def policy_version(version: Version, core: CoreDep) -> Any:
    return await asyncio.to_thread(_load_policy, core, version)


@router.get("/v1/policies")
async def policy_list(core: CoreDep) -> Any:
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
                "compacted": s["compacted"],
            }
            for s in snaps
        ]
    }


@router.post("/v1/policies/{version}/rollback")
async def rollback(version: Version, request: Request, core: CoreDep, keys: ApiKeysDep) -> Any:
    authorise_rollback(request, keys)
    key = keys.identify(request)

    def publish() -> int:
        with core.engine.begin() as conn:
            replaced = snapshots.latest_version(conn)
            new = snapshots.publish_rollback(conn, version)
            record_manual_rollback(
                conn,
                key_id=None if key is None else key.name,
                from_version=replaced,
                restored=version,
                new=new,
            )
            return new

    new = await asyncio.to_thread(publish)
    return {"version": new, "rolled_back_to": version, "reason": "rollback"}


def _clean(obj: Any) -> Any:
    """NaN/inf are not JSON: map them to null."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    return obj
