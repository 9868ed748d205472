"""Typed dependencies the routers share: the app's :class:`GatewayCore` and the JSON body.

:func:`controlplane.api.create_app` puts what the routes need on ``app.state``
(``core``, ``api_keys``, ``learner_status``, ``proxy_request_id``,
``policy_cache``); routes take it through these dependencies, which tests may
swap with ``app.dependency_overrides``. They are ``async`` so that FastAPI calls
them on the event loop, not in its thread pool.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Depends, Request

from controlplane.gateway_core import BadRequest, GatewayCore


async def get_core(request: Request) -> GatewayCore:
    core: GatewayCore = request.app.state.core
    return core


CoreDep = Annotated[GatewayCore, Depends(get_core)]


async def read_json(request: Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("body", "not valid JSON", 400) from None
