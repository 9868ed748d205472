"""Policy releases over HTTP: register a candidate, watch its shadow's estimate against
the live policy, promote it through the gate (admin scope), and the release log.

``POST /v1/policies/candidates`` registers ``{name, learner?, objective?: {weights},
prior_weight?}`` (a learner spec as ``banditctl ope`` takes it, ``"linucb:alpha=0.1"``,
or a config object; objective weights over quality, energy_j, latency_ms and cost_usd;
``prior_weight`` in [0, 1]: start from the live learner's data, each event counted as
that much of one, under the candidate's config: linear learners with the live one's
context view); the learner service starts its shadow (``controlplane.shadows``).
``POST /v1/policies/candidates/{id}/promote`` ``{force?, reason?}``: 200 promoted,
409 ``promotion_refused`` with the estimates (the refusal is recorded too).
``POST /v1/policies/candidates/{id}/retire`` stops a shadow.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse

from controlplane import releases
from controlplane.api import schemas
from controlplane.api.auth import INSUFFICIENT_SCOPE, INVALID_KEY, ApiKeys, ApiKeysDep
from controlplane.api.deps import CoreDep, read_json
from controlplane.api.errors import AuthError
from controlplane.config import BanditConfig
from controlplane.gateway_core import GatewayCore
from feedback.errors import InvalidInput
from feedback.repositories import candidates as repo
from learners.base import REWARD_COMPONENTS
from learners.config import for_layout, parse_config
from learners.replay.ope_policies import parse_policy_spec

router = APIRouter()

# a candidate's id is a PostgreSQL integer: a larger one is refused (422), not looked up
MAX_RELEASES = 10_000
CandidateId = Annotated[int, Path(ge=1, le=2**31 - 1, description="a candidate's id")]


def admin_key_id(request: Request, keys: ApiKeys, what: str) -> str:
    """The admin key's id; 401 without a key or with an unknown one, 403 without the
    admin scope."""
    key = keys.identify(request)
    if key is None:
        raise AuthError(401, f"{what} needs an API key with the admin scope", INVALID_KEY)
    if "admin" not in key.scopes:
        raise AuthError(403, "API key lacks the admin scope", INSUFFICIENT_SCOPE)
    return key.name


def candidate_spec(payload: Any, config: BanditConfig) -> tuple[str, dict[str, Any]]:
    """The candidate's name and spec from a request body (``InvalidInput`` naming the
    field)."""
    if not isinstance(payload, dict):
        raise InvalidInput("body", "must be a JSON object")
    name = payload.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise InvalidInput("name", "a name of 1-200 characters is required")
    spec: dict[str, Any] = {}
    learner = payload.get("learner")
    if learner is not None:
        try:
            cfg = (
                parse_policy_spec(learner, config.featurizer)
                if isinstance(learner, str)
                else dict(learner)
            )
            parse_config(cfg)
        except (ValueError, TypeError) as exc:
            raise InvalidInput("learner", str(exc).splitlines()[0]) from None
        arm = cfg.get("arm")
        if arm is not None and arm not in {a.name for a in config.arms}:
            raise InvalidInput("learner", f"unknown arm {arm!r}")
        spec["learner"] = cfg
    objective = payload.get("objective")
    if objective is not None:
        weights = objective.get("weights") if isinstance(objective, dict) else None
        if not isinstance(weights, dict) or not weights:
            raise InvalidInput("objective.weights", "an object of component: weight")
        for k, v in weights.items():
            if k not in REWARD_COMPONENTS:
                raise InvalidInput(
                    "objective.weights", f"unknown component {k!r} (one of {REWARD_COMPONENTS})"
                )
            if not isinstance(v, int | float) or isinstance(v, bool):
                raise InvalidInput(f"objective.weights.{k}", "must be a number")
        spec["objective"] = {"weights": {k: float(v) for k, v in weights.items()}}
    prior = payload.get("prior_weight")
    if not spec and prior is None:
        raise InvalidInput(
            "learner", "a candidate needs a learner, objective weights, a prior weight or more"
        )
    if prior is not None:
        if not isinstance(prior, int | float) or isinstance(prior, bool) or not 0 <= prior <= 1:
            raise InvalidInput("prior_weight", "a number in [0, 1]")
        live_cfg = config.learner
        new_cfg = for_layout(spec["learner"], config.featurizer) if "learner" in spec else live_cfg
        linear = ("linucb", "lints", "greenserv")
        if live_cfg.kind not in linear or new_cfg.kind not in linear:
            raise InvalidInput("prior_weight", f"applies to linear learners ({', '.join(linear)})")
        if getattr(new_cfg, "context_indices", None) != getattr(live_cfg, "context_indices", None):
            raise InvalidInput(
                "prior_weight", "the learner's context_indices must be the live learner's"
            )
        spec["prior_weight"] = float(prior)
    return name.strip(), spec


def _candidate_view(c: dict[str, Any], estimate: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": c["id"],
        "name": c["name"],
        "status": c["status"],
        "spec": c["spec"],
        "created_at": c["created_at"].isoformat(),
        "created_by": c["created_by"],
        "watermark": c["watermark"],
        "events_applied": c["events_applied"],
        "estimate": estimate,
    }


class EstimateCache:
    """Each candidate's estimate and series, recomputed only when its shadow has recorded
    picks since (the dashboard asks every few seconds; a DR fit over thousands of rows
    is not free)."""

    def __init__(self) -> None:
        self._by_candidate: dict[int, tuple[tuple[int, int], dict[str, Any], list[Any]]] = {}

    def get(
        self, conn: Any, candidate_id: int, position: tuple[int, int]
    ) -> tuple[dict[str, Any], list[Any]]:
        hit = self._by_candidate.get(candidate_id)
        if hit is not None and hit[0] == position:
            return hit[1], hit[2]
        log = repo.shadow_log(conn, candidate_id)
        estimate, series = releases.estimate_log(log), releases.estimate_series(log)
        self._by_candidate[candidate_id] = (position, estimate, series)
        return estimate, series


def _estimates(request: Request) -> EstimateCache:
    cache: EstimateCache | None = getattr(request.app.state, "release_estimates", None)
    if cache is None:
        cache = request.app.state.release_estimates = EstimateCache()
    return cache


def _load_candidates(core: GatewayCore, cache: EstimateCache, series: bool) -> list[dict[str, Any]]:
    out = []
    with core.engine.connect() as conn:
        positions = repo.pick_positions(conn)
        for c in repo.list_candidates(conn):
            cid = int(c["id"])
            estimate, points = cache.get(conn, cid, positions.get(cid, (0, 0)))
            view = _candidate_view(c, estimate)
            if series:
                view["series"] = points
            out.append(view)
    return out


@router.post("/v1/policies/candidates", status_code=201, openapi_extra=schemas.CANDIDATE_BODY)
async def register(request: Request, core: CoreDep, keys: ApiKeysDep) -> Any:
    key_id = admin_key_id(request, keys, "registering a candidate")
    name, spec = candidate_spec(await read_json(request), core.config)

    def insert() -> int:
        with core.engine.begin() as conn:
            cid = repo.register_candidate(conn, name, spec, key_id)
            repo.record_release(
                conn, "register", key_id=key_id, candidate_id=cid, reason=f"candidate {name}"
            )
            return cid

    cid = await asyncio.to_thread(insert)
    return {"id": cid, "name": name, "status": "shadow", "spec": spec}


@router.get("/v1/policies/candidates")
async def list_candidates(request: Request, core: CoreDep) -> Any:
    cache = _estimates(request)
    return {"candidates": await asyncio.to_thread(_load_candidates, core, cache, False)}


@router.get("/v1/policies/candidates/{candidate_id}")
async def get_candidate(candidate_id: CandidateId, request: Request, core: CoreDep) -> Any:
    cache = _estimates(request)

    def load() -> Any:
        with core.engine.connect() as conn:
            c = repo.get_candidate(conn, candidate_id)
            position = repo.pick_positions(conn).get(candidate_id, (0, 0))
            estimate, series = cache.get(conn, candidate_id, position)
            view = _candidate_view(c, estimate)
            view["series"] = series
            return view

    return await asyncio.to_thread(load)


@router.post(
    "/v1/policies/candidates/{candidate_id}/promote",
    openapi_extra=schemas.PROMOTE_BODY,
)
async def promote(
    candidate_id: CandidateId, request: Request, core: CoreDep, keys: ApiKeysDep
) -> Any:
    key_id = admin_key_id(request, keys, "promotion")
    body = await read_json(request) if await request.body() else {}
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be a JSON object")
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise InvalidInput("force", "must be true or false")
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise InvalidInput("reason", "must be a string")
    try:
        return await asyncio.to_thread(
            releases.promote,
            core.engine,
            core.config,
            candidate_id,
            key_id=key_id,
            force=force,
            reason=reason,
        )
    except releases.PromotionRefused as exc:
        return JSONResponse(
            {
                "error": {
                    "message": exc.message,
                    "type": "promotion_refused",
                    "param": "id",
                    "code": "gate",
                },
                "release": exc.release_id,
                "estimates": exc.estimates,
            },
            status_code=409,
        )


@router.post("/v1/policies/candidates/{candidate_id}/retire")
async def retire(
    candidate_id: CandidateId, request: Request, core: CoreDep, keys: ApiKeysDep
) -> Any:
    """Stop a candidate's shadow (admin scope); its picks and estimate stay readable."""
    key_id = admin_key_id(request, keys, "retiring a candidate")

    def store() -> None:
        with core.engine.begin() as conn:
            c = repo.get_candidate(conn, candidate_id)
            if c["status"] != "shadow":
                raise InvalidInput(
                    "id", f"candidate {candidate_id} is {c['status']}, not in shadow"
                )
            repo.set_status(conn, candidate_id, "retired")
            repo.record_release(
                conn, "retire", key_id=key_id, candidate_id=candidate_id, reason="retired by hand"
            )

    await asyncio.to_thread(store)
    return {"id": candidate_id, "status": "retired"}


@router.get("/v1/policies/releases")
async def release_log(
    request: Request,
    core: CoreDep,
    limit: int = Query(100, ge=1, le=MAX_RELEASES, description="newest entries"),
    candidates: bool = False,
) -> Any:
    """The release log (newest first) and its summary (automatic rollbacks, the
    promotion under watch); ``candidates=true`` adds each candidate with its estimate over
    time (the dashboard's panel). Not windowed: a candidate's estimate covers its shadow's
    decisions since it was registered."""
    cache = _estimates(request)

    def load() -> Any:
        with core.engine.connect() as conn:
            log = [repo.release_view(r) for r in repo.list_releases(conn, limit)]
            summary = repo.release_summary(conn)
        out: dict[str, Any] = {"releases": log, "summary": summary}
        if candidates:
            out["candidates"] = _load_candidates(core, cache, True)
        return out

    return await asyncio.to_thread(load)
