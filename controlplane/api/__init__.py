"""The HTTP API, built around a :class:`GatewayCore` by :func:`create_app`.

One router per resource: chat completions and models (:mod:`.chat`), feedback
(:mod:`.feedback`), policies and rollback (:mod:`.policies`), route explain
(:mod:`.explain`), health and stats (:mod:`.stats`), the dashboard
(:mod:`.dashboard`); ``/metrics`` comes from :mod:`controlplane.metrics`.
Chat completions is served below FastAPI's stack by the app's outermost layer
(:mod:`.front`), with the route's own endpoint. Errors have one shape, and
:mod:`.errors` registers every handler. What the routes share lives on
``app.state`` and reaches them through the dependencies of :mod:`.deps` and
:mod:`.auth`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI

from controlplane.admission import Admission
from controlplane.api import candidates, chat, dashboard, explain, feedback, policies, stats
from controlplane.api.auth import ApiKeys
from controlplane.api.errors import install_error_handlers
from controlplane.api.flood import limit_anonymous
from controlplane.api.front import GatewayApp
from controlplane.dashboard_data import PolicyCache
from controlplane.gateway_core import GatewayCore
from controlplane.metrics import install_metrics

ROUTERS = (
    stats.router,
    chat.router,
    feedback.router,
    candidates.router,  # before policies: /v1/policies/candidates is not a version
    policies.router,
    explain.router,
    dashboard.router,
)


def create_app(
    core: GatewayCore,
    *,
    start_background: bool = True,
    learner_status: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    cache_status: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    proxy_request_id: Callable[[], str | None] | None = None,
    admission: Admission | None = None,
    instance_id: str | None = None,
    learner_metrics: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    chat_front: bool = True,
) -> FastAPI:
    """``start_background``: the lifespan starts the decision log writer and the
    policy refresher (a Gateway deployment starts its own). ``learner_status``:
    what ``/v1/stats`` reports for the learner; ``cache_status``: for the cache
    controller, when a planned cache policy runs (``/metrics`` reads its residency
    totals too). ``learner_metrics``: the learner's figures for ``/metrics``
    (``LearnerService.metrics``). ``proxy_request_id``: given when a
    fronting proxy (Ray Serve's) answers with its own ``x-request-id`` (the client's,
    when it sent one); the decision's id is always generated here. ``admission``: rate limits and budgets (by
    default built from the core's config, on the real clocks). ``instance_id``: what
    ``/healthz`` reports as ``instance`` (the launcher's readiness probe checks it).
    ``chat_front``: serve chat completions below FastAPI (:mod:`.front`); False serves
    it through FastAPI's stack, as every other route (the same endpoint either way)."""
    app = GatewayApp(title="banditctl gateway", lifespan=_lifespan)
    app.chat_front = chat_front
    # chat completions first: it applies the per-address limit itself (.chat.completions);
    # every route added after it gets it as a dependency: anonymous requests count against
    # their address first (.flood)
    app.include_router(chat.completions)
    app.router.dependencies.append(Depends(limit_anonymous))
    app.state.core = core
    app.state.start_background = start_background
    app.state.api_keys = ApiKeys(core.config.api_keys)
    app.state.admission = admission or Admission(core.config, core.engine)
    app.state.learner_status = learner_status
    app.state.cache_status = cache_status
    app.state.proxy_request_id = proxy_request_id
    app.state.instance_id = instance_id
    app.state.policy_cache = PolicyCache(core.config)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    install_metrics(app, core, learner_metrics=learner_metrics, cache_status=cache_status)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    core: GatewayCore = app.state.core
    task = None
    await app.state.admission.keep_fresh()  # seed the budgets' spend from Postgres
    if app.state.start_background:
        core.writer.start()
        task = asyncio.create_task(core.policy_refresher())
    yield
    if task is not None:
        task.cancel()
    await asyncio.to_thread(core.writer.close)
