"""Route explain: every arm's score for a chat body, without serving it (chat scope)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from controlplane.api import schemas
from controlplane.api.auth import ChatKeyDep
from controlplane.api.deps import CoreDep, read_json
from controlplane.api.validation import validate_chat

router = APIRouter()


@router.post("/v1/route/explain", openapi_extra=schemas.EXPLAIN_BODY)
async def explain(request: Request, core: CoreDep, _key: ChatKeyDep) -> Any:
    return core.explain(validate_chat(await read_json(request), core.config.limits))
