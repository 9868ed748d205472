"""Bare pass-through Serve apps over the same model pools: the benchmark's baselines.

:func:`build_passthrough` forwards each chat body to one fixed arm's pool;
:func:`build_named_passthrough` to the pool of the arm the body names (the
client chose: a router without a policy, spreading load over the same pools the
gateway does). Each returns the generation, with no featurizing, no decision, no
logging and no feedback token: what the gateway costs is the difference. Both call
their pools over ``transport``, as ``gateway.pool_transport`` names it ("grpc": Serve's
replica-to-replica gRPC channel; "ray": Serve's default actor calls), through one
handle made at the first call and kept, as the gateway keeps its own. ``gc``: a
``(threshold, freeze)`` for :func:`controlplane.gc_tuning.tune_gc` once the replica has
started, as a gateway replica applies ``gateway.gc_threshold`` and ``gc_freeze``; ``None``
(the default) leaves Python's collector as a bare Serve app has it.
"""

from typing import Any

from fastapi import FastAPI, Request
from ray import serve
from ray.serve.handle import DeploymentHandle

from controlplane.config import BanditConfig
from controlplane.gc_tuning import tune_gc
from deployments.pool import ModelPool

app = FastAPI()
app_named = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class PassThrough:
    def __init__(
        self, pool: DeploymentHandle, arm: str, transport: str, gc: tuple[int | None, bool] | None
    ) -> None:
        self.pool = pool
        self.arm = arm
        self.by_reference = transport == "ray"
        self.call: DeploymentHandle | None = None
        if gc is not None:
            tune_gc(*gc)

    @app.post("/v1/chat/completions")
    async def chat(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        if self.call is None:
            self.call = self.pool.options(method_name="generate", _by_reference=self.by_reference)
        gen: dict[str, Any] = await self.call.remote(self.arm, body)
        return {"object": "chat.completion", "model": self.arm,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": gen["text"]}}]}  # fmt: skip


def build_passthrough(
    config: BanditConfig,
    arm: str,
    max_ongoing_requests: int,
    transport: str = "grpc",
    gc: tuple[int | None, bool] | None = None,
) -> Any:
    model = next(a.model for a in config.arms if a.name == arm)
    options = ModelPool.options  # type: ignore[attr-defined]
    pool = options(name="bare-pool", max_ongoing_requests=max_ongoing_requests).bind(config, model)
    return PassThrough.options(max_ongoing_requests=max_ongoing_requests).bind(  # type: ignore[attr-defined]
        pool, arm, transport, gc
    )


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(app_named)
class NamedPassThrough:
    def __init__(
        self,
        pools: dict[str, DeploymentHandle],
        arm_models: dict[str, str],
        transport: str,
        gc: tuple[int | None, bool] | None,
    ) -> None:
        self.pools = pools
        self.arm_models = arm_models
        self.by_reference = transport == "ray"
        self.calls: dict[str, DeploymentHandle] = {}
        if gc is not None:
            tune_gc(*gc)

    @app_named.post("/v1/chat/completions")
    async def chat(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        arm = body["model"]
        model = self.arm_models[arm]
        call = self.calls.get(model)
        if call is None:
            pool = self.pools[model]
            call = pool.options(method_name="generate", _by_reference=self.by_reference)
            self.calls[model] = call
        gen: dict[str, Any] = await call.remote(arm, body)
        return {"object": "chat.completion", "model": arm,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": gen["text"]}}]}  # fmt: skip


def build_named_passthrough(
    config: BanditConfig,
    max_ongoing_requests: int,
    transport: str = "grpc",
    gc: tuple[int | None, bool] | None = None,
) -> Any:
    """One pool per model, as the gateway's app has, behind a pass-through by name."""
    options = ModelPool.options  # type: ignore[attr-defined]
    pools = {
        model: options(name=f"named-pool-{model}", max_ongoing_requests=max_ongoing_requests).bind(
            config, model
        )
        for model in sorted({a.model for a in config.arms})
    }
    arm_models = {a.name: a.model for a in config.arms}
    return NamedPassThrough.options(max_ongoing_requests=max_ongoing_requests).bind(  # type: ignore[attr-defined]
        pools, arm_models, transport, gc
    )
