"""Typed dependencies the routers share: the app's :class:`GatewayCore` and the JSON body.

:func:`controlplane.api.create_app` puts what the routes need on ``app.state``
(``core``, ``api_keys``, ``learner_status``, ``proxy_request_id``,
``policy_cache``); routes take it through these dependencies, which tests may
swap with ``app.dependency_overrides``. They are ``async`` so that FastAPI calls
them on the event loop, not in its thread pool. Chat completions, the route every
request takes, reads the same things from ``app.state`` itself (:mod:`.chat`):
FastAPI's solving of a dependency costs more than what these do.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from controlplane.api.validation import read_body
from controlplane.gateway_core import GatewayCore


async def get_core(request: Request) -> GatewayCore:
    core: GatewayCore = request.app.state.core
    return core


CoreDep = Annotated[GatewayCore, Depends(get_core)]


async def read_json(request: Request) -> Any:
    """The JSON body, under the config's ``limits`` (:func:`.validation.read_body`)."""
    core: GatewayCore = request.app.state.core
    return await read_body(request, core.config.limits)
