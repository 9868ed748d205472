"""The API's one error shape and every exception handler, registered in one place.

Errors are JSON ``{"error": {"message", "type", "param"}}`` with 4xx/5xx codes:

- ``BadRequest``: its status; ``invalid_request_error`` (``model_not_found`` when
  404); param: the field.
- ``InvalidInput``: 422 ``invalid_request_error``; param: the field.
- ``NotFound``: 404 ``not_found``; param: the resource.
- ``Compacted``: 409 ``policy_compacted`` (a version whose state retention
  deleted); param: ``version``.
- ``AuthError``: its status (401, 403) ``authentication_error``.
- ``WriterFull``: 503 ``overloaded``; ``UpstreamError``: 502 ``upstream_error``.

FastAPI's own answers (a path or query parameter that fails validation, an
unknown route or method) keep FastAPI's ``{"detail": ...}`` shape.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from controlplane.gateway_core import BadRequest, UpstreamError
from feedback.errors import Compacted, InvalidInput, NotFound, WriterFull


class AuthError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param}}, status_code=status
    )


async def _bad(_: Request, exc: BadRequest) -> JSONResponse:
    kind = "model_not_found" if exc.status == 404 else "invalid_request_error"
    return error_response(exc.status, exc.message, kind, exc.field)


async def _invalid(_: Request, exc: InvalidInput) -> JSONResponse:
    return error_response(422, exc.message, "invalid_request_error", exc.field)


async def _nf(_: Request, exc: NotFound) -> JSONResponse:
    return error_response(404, str(exc), "not_found", exc.resource)


async def _compacted(_: Request, exc: Compacted) -> JSONResponse:
    return error_response(409, str(exc), "policy_compacted", "version")


async def _auth(_: Request, exc: AuthError) -> JSONResponse:
    return error_response(exc.status, exc.message, "authentication_error")


async def _full(_: Request, exc: WriterFull) -> JSONResponse:
    return error_response(503, str(exc), "overloaded")


async def _upstream(_: Request, exc: UpstreamError) -> JSONResponse:
    return error_response(502, str(exc), "upstream_error")


_HANDLERS: dict[type[Exception], Callable[[Request, Any], Awaitable[JSONResponse]]] = {
    BadRequest: _bad,
    InvalidInput: _invalid,
    NotFound: _nf,
    Compacted: _compacted,
    AuthError: _auth,
    WriterFull: _full,
    UpstreamError: _upstream,
}


def install_error_handlers(app: FastAPI) -> None:
    for exc_class, handler in _HANDLERS.items():
        app.exception_handler(exc_class)(handler)
