"""Bare pass-through Serve apps over the same model pools: the benchmark's baselines.

:func:`build_passthrough` forwards each chat body to one fixed arm's pool;
:func:`build_named_passthrough` to the pool of the arm the body names (the
client chose: a router without a policy, spreading load over the same pools the
gateway does). Each returns the generation, with no featurizing, no decision, no
logging and no feedback token: what the gateway costs is the difference.
"""

from typing import Any

from fastapi import FastAPI, Request
from ray import serve
from ray.serve.handle import DeploymentHandle

from controlplane.config import BanditConfig
from deployments.pool import ModelPool

app = FastAPI()
app_named = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class PassThrough:
    def __init__(self, pool: DeploymentHandle, arm: str) -> None:
        self.pool = pool
        self.arm = arm

    @app.post("/v1/chat/completions")
    async def chat(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        gen: dict[str, Any] = await self.pool.generate.remote(self.arm, body)
        return {"object": "chat.completion", "model": self.arm,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": gen["text"]}}]}  # fmt: skip


def build_passthrough(config: BanditConfig, arm: str, max_ongoing_requests: int) -> Any:
    model = next(a.model for a in config.arms if a.name == arm)
    options = ModelPool.options  # type: ignore[attr-defined]
    pool = options(name="bare-pool", max_ongoing_requests=max_ongoing_requests).bind(config, model)
    return PassThrough.options(max_ongoing_requests=max_ongoing_requests).bind(pool, arm)  # type: ignore[attr-defined]


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(app_named)
class NamedPassThrough:
    def __init__(self, pools: dict[str, DeploymentHandle], arm_models: dict[str, str]) -> None:
        self.pools = pools
        self.arm_models = arm_models

    @app_named.post("/v1/chat/completions")
    async def chat(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        arm = body["model"]
        gen: dict[str, Any] = await self.pools[self.arm_models[arm]].generate.remote(arm, body)
        return {"object": "chat.completion", "model": arm,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": gen["text"]}}]}  # fmt: skip


def build_named_passthrough(config: BanditConfig, max_ongoing_requests: int) -> Any:
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
        pools, arm_models
    )
