"""A bare pass-through Serve app over the same model pool: the benchmark's baseline.

It forwards each chat body to one fixed arm's pool and returns the
generation, with no featurizing, no decision, no logging and no feedback
token: what the gateway costs is the difference.
"""

from typing import Any

from fastapi import FastAPI, Request
from ray import serve
from ray.serve.handle import DeploymentHandle

from controlplane.config import BanditConfig
from deployments.pool import ModelPool

app = FastAPI()


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
