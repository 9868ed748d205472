"""The API's one error shape and every exception handler, registered in one place.

Errors are JSON ``{"error": {"message", "type", "param", "code"}}`` (OpenAI's shape)
with 4xx/5xx codes:

- ``BadRequest``: its status; ``invalid_request_error`` (``model_not_found`` when
  404); param: the field.
- ``InvalidInput``: 422 ``invalid_request_error``; param: the field.
- ``NotFound``: 404 ``not_found``; param: the resource.
- ``Compacted``: 409 ``policy_compacted`` (a version whose state retention
  deleted); param: ``version``.
- ``AuthError``: its status (401, 403) ``authentication_error``; code
  ``invalid_api_key`` (no key, an unknown one) or ``insufficient_scope``.
- ``LimitExceeded``: 429 ``rate_limit_exceeded`` or ``budget_exceeded``; code: the
  limit's or the budget's name; a ``Retry-After`` header (seconds).
- ``WriterFull``: 503 ``overloaded`` with ``Retry-After``; ``UpstreamError``: 502
  ``upstream_error``.
- The database away (a refused or lost connection, the pool exhausted): 503
  ``database_unavailable`` with ``Retry-After``; nothing was stored, the client may
  retry. A value the database refuses: 422. Anything else: 500 ``internal_error``,
  whose message says nothing of the cause (the log has it).

FastAPI's own answers (a path or query parameter that fails validation, an
unknown route or method) keep FastAPI's ``{"detail": ...}`` shape.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc

from controlplane.gateway_core import BadRequest, UpstreamError
from controlplane.limits import LimitExceeded
from feedback.errors import Compacted, InvalidInput, NotFound, WriterFull

log = logging.getLogger(__name__)

DATABASE_RETRY_AFTER_S = 5
WRITER_RETRY_AFTER_S = 1


class AuthError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def error_response(
    status: int,
    message: str,
    kind: str,
    param: str | None = None,
    *,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": code}},
        status_code=status,
        headers=headers,
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
    return error_response(exc.status, exc.message, "authentication_error", code=exc.code)


async def _limit(_: Request, exc: LimitExceeded) -> JSONResponse:
    log.info("429 %s: %s", exc.kind, exc.message)  # names the key's id, never the key
    headers = {"Retry-After": str(exc.retry_after)}
    return error_response(429, exc.message, exc.kind, code=exc.code, headers=headers)


async def _full(_: Request, exc: WriterFull) -> JSONResponse:
    headers = {"Retry-After": str(WRITER_RETRY_AFTER_S)}
    return error_response(503, str(exc), "overloaded", headers=headers)


def _database_unavailable() -> JSONResponse:
    return error_response(
        503,
        "the database is unavailable; nothing was stored, retry later",
        "database_unavailable",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
    )


async def _db_away(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: database unavailable: %s", request.method, request.url.path, exc)
    return _database_unavailable()


async def _db_error(request: Request, exc: sa_exc.DBAPIError) -> JSONResponse:
    if exc.connection_invalidated:
        return await _db_away(request, exc)
    if isinstance(exc, sa_exc.DataError):
        log.info("%s %s: value refused by the database: %s", request.method, request.url.path, exc)
        return error_response(422, "a value is out of range", "invalid_request_error")
    return await _internal(request, exc)


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal error", "internal_error")


async def _upstream(_: Request, exc: UpstreamError) -> JSONResponse:
    headers = None if exc.request_id is None else {"x-banditctl-request-id": str(exc.request_id)}
    return error_response(502, str(exc), "upstream_error", headers=headers)


_HANDLERS: dict[type[Exception], Callable[[Request, Any], Awaitable[JSONResponse]]] = {
    BadRequest: _bad,
    InvalidInput: _invalid,
    NotFound: _nf,
    Compacted: _compacted,
    AuthError: _auth,
    LimitExceeded: _limit,
    WriterFull: _full,
    UpstreamError: _upstream,
    sa_exc.OperationalError: _db_away,
    sa_exc.InterfaceError: _db_away,
    sa_exc.TimeoutError: _db_away,  # no pooled connection came free in time
    sa_exc.DBAPIError: _db_error,
    Exception: _internal,
}


def install_error_handlers(app: FastAPI) -> None:
    for exc_class, handler in _HANDLERS.items():
        app.exception_handler(exc_class)(handler)
