"""OpenAI-compatible chat completions (JSON or server-sent events) and the model list.

A streamed answer (``stream: true``) forwards the pool's deltas as they arrive
(:meth:`GatewayCore.open_stream`); a client that disconnects closes the stream, which
stops the generation. Request fields are checked and routed by
:mod:`controlplane.completions`.

Both need an API key with the chat scope unless ``auth.open_chat`` (:mod:`.auth`).
``app.state.admission`` (:class:`controlplane.admission.Admission`) applies the key's
rate limits and the budgets before a request is decided, and learns its real usage
after. The gateway generates every decision's request id; the client's ``x-request-id``
(or, behind Ray Serve, the proxy's) is kept only as the decision's ``client_request_id``,
for correlation, and returned as ``x-request-id``. Bodies are checked by
:mod:`.validation` before anything is decided.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from controlplane.admission import Admission
from controlplane.api import schemas
from controlplane.api.auth import ChatKeyDep, chat_key
from controlplane.api.deps import CoreDep, read_json
from controlplane.api.encode import JSONResponse, dumps
from controlplane.api.flood import limit_anonymous
from controlplane.api.validation import client_request_id, validate_chat
from controlplane.gateway_core import GatewayCore
from feedback.records import new_request_id

router = APIRouter()
# chat completions alone, included first and without the app's per-address dependency:
# the endpoint applies it itself (FastAPI's solving of a dependency costs more than the
# check does, on the one route every request takes)
completions = APIRouter()


@router.get("/v1/models")
async def models(core: CoreDep, _key: ChatKeyDep) -> dict[str, Any]:
    names = ["auto", *core.config.routes, *(a.name for a in core.config.arms)]
    return {
        "object": "list",
        "data": [
            {"id": n, "object": "model", "owned_by": "banditctl"} for n in dict.fromkeys(names)
        ],
    }


@completions.post("/v1/chat/completions", openapi_extra=schemas.CHAT_BODY)
async def chat(request: Request) -> Any:
    # the route's endpoint, and the gateway app's front calls it too (.front): it takes
    # only the request (no dependency, no parameter FastAPI would read) and returns the
    # response to send, so that both ways answer alike (a comment, not a docstring: FastAPI
    # would publish a docstring in the OpenAPI schema)
    # what the app's dependency, ``CoreDep`` and ``ChatKeyDep`` give the other routes, in
    # the same order, taken here rather than as dependencies (see ``completions``)
    await limit_anonymous(request)
    core: GatewayCore = request.app.state.core
    key = await chat_key(request, request.app.state.api_keys)
    body = core.validate_body(validate_chat(await read_json(request), core.config.limits))
    correlation = client_request_id(request, core.config.limits)
    proxied = request.app.state.proxy_request_id is not None  # the proxy sets x-request-id
    if key is not None and key.tenant is not None:  # the key's tenant, whatever the body says
        body = {**body, "metadata": {**(body.get("metadata") or {}), "tenant": key.tenant}}
    admission: Admission = request.app.state.admission
    arms = core.servable_arms(body)
    ticket = await admission.admit(key, body, arms, core.policy.learner, new_request_id())
    key_id = key.name if key is not None else None
    if body.get("stream"):
        # the pool's deltas as they come; settled once the stream ends (or fails)
        streamed = await core.open_stream(
            body,
            ticket.request_id,
            key_id=key_id,
            exclude=ticket.exclude,
            on_done=lambda result: admission.settle(ticket, result),
            client_request_id=correlation,
            servable=arms,
        )
        return StreamingResponse(
            _sse(streamed.events),
            media_type="text/event-stream",
            headers=_headers(streamed.meta, proxied, correlation),
        )
    result = None
    try:
        result = await core.complete(
            body,
            ticket.request_id,
            key_id=key_id,
            exclude=ticket.exclude,
            client_request_id=correlation,
            servable=arms,
        )
    finally:
        admission.settle(ticket, result)
    return JSONResponse(result, headers=_headers(result["banditctl"], proxied, correlation))


def _headers(meta: dict[str, Any], proxied: bool, correlation: str | None) -> dict[str, str]:
    headers = {
        "x-banditctl-request-id": meta["request_id"],
        "x-banditctl-arm": meta["arm"],
        "x-banditctl-policy-version": str(meta["policy_version"]),
        "x-banditctl-feedback-token": meta["feedback_token"],
    }
    if not proxied:  # else the proxy returns its id (the client's, when it sent one)
        headers["x-request-id"] = correlation or meta["request_id"]
    return headers


async def _sse(events: AsyncGenerator[dict[str, Any], None]) -> AsyncIterator[bytes]:
    """Server-sent events: each chunk as it comes, then ``[DONE]`` (not after an error)."""
    async with aclosing(events):  # a client that left closes it: the generation stops
        async for event in events:
            yield b"data: " + dumps(event) + b"\n\n"
            if "error" in event:
                return
    yield b"data: [DONE]\n\n"
