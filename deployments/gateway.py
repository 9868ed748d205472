"""Gateway: the ingress deployment (FastAPI), one :class:`GatewayCore` per replica."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

from ray import serve
from ray.exceptions import RayTaskError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from controlplane.api import create_app
from controlplane.config import BanditConfig
from controlplane.gateway_core import GatewayCore, PoolUnavailable
from controlplane.gc_tuning import tune_gc
from controlplane.settings import get_settings
from controlplane.tokens import FeedbackTokens
from controlplane.tracing import configure_tracing
from feedback.database import make_engine
from feedback.spool import Spool


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress()
class Gateway:
    async def __init__(  # type: ignore[misc]
        self,
        config: BanditConfig,
        database_url: str,
        secret: str,
        pools: dict[str, DeploymentHandle[Any]],
        learner: DeploymentHandle[Any],
        cache: DeploymentHandle[Any] | None = None,
        instance_id: str | None = None,
    ) -> None:
        # ``cache``: the cache controller (planned cache policies). Gateways read what is
        # resident from Postgres; they ask the controller only for /v1/stats.
        # ``instance_id``: reported by /healthz (the launcher's readiness probe checks it).
        self.config = config
        self.pools = pools
        self.learner = learner
        self.cache_controller = cache
        configure_tracing("banditctl-gateway")  # only where OTEL_* variables ask for it
        self.model_of = {a.name: a.model for a in config.arms}
        self.adapter_of = {a.name: a.adapter for a in config.arms}
        self._handles: dict[tuple[str, bool], DeploymentHandle[Any]] = {}
        self.instance_id = instance_id
        engine = make_engine(database_url, pool_size=4)
        tokens = FeedbackTokens.from_config(secret, config)  # with the rotated ones
        spool = None
        if config.gateway.spool:  # what this process accepts survives it on this node
            root = config.gateway.spool_dir or get_settings().data_dir / "spool"
            spool = Spool(root)
        self.core = GatewayCore(
            config, engine, self._call_pool, tokens, stream_pool=self._stream_pool, spool=spool
        )
        await asyncio.to_thread(self.core.refresh_policy, "start")
        self.core.writer.start()
        self._refresher = asyncio.get_running_loop().create_task(self.core.policy_refresher())
        # last: what the replica holds once started is frozen (controlplane.gc_tuning)
        tune_gc(config.gateway.gc_threshold, config.gateway.gc_freeze)

    def _handle(self, arm: str, stream: bool) -> DeploymentHandle[Any]:
        """The handle that calls ``arm``'s pool method (``generate`` or, ``stream``,
        ``generate_stream``): its adapter as the multiplexed model id, over the
        configured transport (``gateway.pool_transport``). Made once per arm and kept
        (each ``options()`` builds a new handle object; they share the pool's router)."""
        key = (arm, stream)
        handle = self._handles.get(key)
        if handle is None:
            options: dict[str, Any] = {
                "method_name": "generate_stream" if stream else "generate",
                "stream": stream,
                "_by_reference": self.config.gateway.pool_transport == "ray",
            }
            adapter = self.adapter_of[arm]
            if adapter:
                options["multiplexed_model_id"] = adapter
            handle = self.pools[self.model_of[arm]].options(**options)
            self._handles[key] = handle
        return handle

    async def _call_pool(self, arm: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self._handle(arm, False).remote(arm, body)
        await assigned(arm, response, self.config.gateway.pool_wait_s)
        try:
            result: dict[str, Any] = await response
        except RayTaskError as exc:
            raise _cause(exc) from None
        return result

    async def _stream_pool(self, arm: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The pool's ``generate_stream`` through a streaming handle, delta by delta;
        leaving early (the client went away) cancels it, which stops the generation."""
        chunks = cast(DeploymentResponseGenerator[Any], self._handle(arm, True).remote(arm, body))
        await assigned(arm, chunks, self.config.gateway.pool_wait_s)
        try:
            async for chunk in chunks:
                yield chunk.as_dict()
        except RayTaskError as exc:
            raise _cause(exc) from None
        finally:
            chunks.cancel()  # type: ignore[no-untyped-call]

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(
            self.core,
            start_background=False,
            learner_status=self._learner_status,
            cache_status=self._cache_status if self.cache_controller is not None else None,
            proxy_request_id=_serve_request_id,
            instance_id=self.instance_id,
            learner_metrics=self._learner_metrics,
        )

    async def _learner_status(self) -> dict[str, Any]:
        status: dict[str, Any] = await self.learner.status.remote()
        return status

    async def _learner_metrics(self) -> dict[str, Any]:
        metrics: dict[str, Any] = await self.learner.metrics.remote()
        return metrics

    async def _cache_status(self) -> dict[str, Any]:
        assert self.cache_controller is not None
        status: dict[str, Any] = await self.cache_controller.status.remote()
        return status

    def check_health(self) -> None:
        """Serve restarts the replica when its decision log writer died (it should not:
        the writer survives any error; this is the last line)."""
        if not self.core.writer.health.report()["alive"]:
            raise RuntimeError("the decision log writer thread is dead")

    def __del__(self) -> None:
        self.core.writer.close(timeout_s=10)


async def assigned(arm: str, response: Any, wait_s: float) -> None:
    """Wait until Serve's router has given the call a replica, at most ``wait_s``
    (``gateway.pool_wait_s``): with no replica running (one crashed and restarts) the
    router holds calls until a new one is up, which would hold this arm's requests, and
    every client waiting on them, for as long. Past the bound the call is cancelled and
    fails with :class:`PoolUnavailable`. The bound is a timer on this task
    (``asyncio.timeout``), not a task of its own per call as ``wait_for`` makes."""
    fetch = getattr(response, "_fetch_future_result_async", None)
    if fetch is None:  # another Serve: no bound, the call waits as it would
        return
    try:
        async with asyncio.timeout(wait_s):
            await fetch()
    except TimeoutError:
        with contextlib.suppress(Exception):
            response.cancel()
        raise PoolUnavailable(f"no replica of {arm}'s pool took the call in {wait_s:g} s") from None


def _cause(exc: RayTaskError) -> Exception:
    """The pool's own exception (an upstream's status, a refused field) out of Ray's
    wrapper, so the gateway answers with its status."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, Exception) else exc


def _serve_request_id() -> str | None:
    """The id Ray Serve's proxy gave this HTTP request (it returns it as x-request-id)."""
    from ray.serve.context import _get_serve_request_context

    return _get_serve_request_context().request_id or None
