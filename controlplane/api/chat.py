"""OpenAI-compatible chat completions (JSON or server-sent events) and the model list.

Both need an API key with the chat scope unless ``auth.open_chat`` (:mod:`.auth`).
``app.state.admission`` (:class:`controlplane.admission.Admission`) applies the key's
rate limits and the budgets before a request is decided, and learns its real usage
after. The gateway generates every decision's request id; the client's ``x-request-id``
(or, behind Ray Serve, the proxy's) is kept only as the decision's ``client_request_id``,
for correlation, and returned as ``x-request-id``. Bodies are checked by
:mod:`.validation` before anything is decided.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from controlplane.admission import Admission
from controlplane.api.auth import ChatKeyDep
from controlplane.api.deps import CoreDep, read_json
from controlplane.api.validation import client_request_id, validate_chat

router = APIRouter()


@router.get("/v1/models")
async def models(core: CoreDep, _key: ChatKeyDep) -> dict[str, Any]:
    names = ["auto", *core.config.routes, *(a.name for a in core.config.arms)]
    return {
        "object": "list",
        "data": [
            {"id": n, "object": "model", "owned_by": "banditctl"} for n in dict.fromkeys(names)
        ],
    }


@router.post("/v1/chat/completions")
async def chat(request: Request, core: CoreDep, key: ChatKeyDep) -> Any:
    body = core.validate_body(validate_chat(await read_json(request), core.config.limits))
    correlation = client_request_id(request, core.config.limits)
    proxied = request.app.state.proxy_request_id is not None  # the proxy sets x-request-id
    if key is not None and key.tenant is not None:  # the key's tenant, whatever the body says
        body = {**body, "metadata": {**(body.get("metadata") or {}), "tenant": key.tenant}}
    admission: Admission = request.app.state.admission
    arms = core.route_arms(body.get("model") or "auto")
    ticket = await admission.admit(key, body, arms, core.policy.learner, uuid.uuid4())
    result = None
    try:
        result = await core.complete(
            body,
            ticket.request_id,
            key_id=key.name if key is not None else None,
            exclude=ticket.exclude,
            client_request_id=correlation,
        )
    finally:
        admission.settle(ticket, result)
    meta = result["banditctl"]
    headers = {
        "x-banditctl-request-id": meta["request_id"],
        "x-banditctl-arm": meta["arm"],
        "x-banditctl-policy-version": str(meta["policy_version"]),
        "x-banditctl-feedback-token": meta["feedback_token"],
    }
    if not proxied:  # else the proxy returns its id (the client's, when it sent one)
        headers["x-request-id"] = correlation or meta["request_id"]
    if body.get("stream"):
        return StreamingResponse(_sse(result), media_type="text/event-stream", headers=headers)
    return JSONResponse(result, headers=headers)


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
