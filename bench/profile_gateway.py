"""What the gateway's request path costs in CPU, in process: the gateway app against a
pass-through app over the same pools, without Ray or HTTP.

    python bench/profile_gateway.py [--database-url URL] [--requests 300] [--rounds 12]
    py-spy record --gil -o gateway.svg -- python bench/profile_gateway.py --only gateway

Both apps run in this process and are called as ASGI apps (no sockets), 32 requests at a
time, on the bundled scenario's prompts: the gateway app (``create_app``) with an API
key, its rate limits, a budget and one fallback on, as ``bench_gateway.py --guarded``
runs it, with its decision log writer (and its spool, in a temp dir, where the config has
it on, as a deployed gateway has) and policy refresher running; and a FastAPI app that
reads the body and forwards it to the pool of the arm it names, as
``passthrough.NamedPassThrough`` does. Both call the same in-process pools
(``PoolCore`` on the replay backend, no sleep), so their difference is the gateway's
own work. Rounds alternate the two, each round starting with another app; each prints
the process CPU time per request (all threads, the writer's too: a gateway's block ends
once its log writer has written what the block gave it); the minimum over rounds is the
least disturbed by other jobs on a shared machine. ``--only gateway`` runs the gateway
alone, for a profiler.
``--fastapi-chat`` adds a third app in the rounds, ``gateway-fastapi``: the same gateway
(the same core) with its chat route served through FastAPI's stack
(``create_app(..., chat_front=False)``), to weigh the front against it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scratch import scratch_database  # noqa: E402

from controlplane.api import create_app  # noqa: E402
from controlplane.cli.demo import demo_config  # noqa: E402
from controlplane.config import BanditConfig  # noqa: E402
from controlplane.gateway_core import GatewayCore  # noqa: E402
from controlplane.learner_loop import arm_records  # noqa: E402
from controlplane.tokens import FeedbackTokens  # noqa: E402
from deployments.pool import PoolCore, make_backends  # noqa: E402
from feedback.database import make_engine  # noqa: E402
from feedback.repositories import arms as arms_repo  # noqa: E402
from feedback.spool import Spool  # noqa: E402
from learners.replay.dataset import dataset_for  # noqa: E402

PATH = "/v1/chat/completions"
KEY_ENV = "BANDITCTL_PROFILE_KEY"
Asgi = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def guarded_config() -> BanditConfig:
    """The demo's config as ``bench_gateway.py --guarded`` runs it."""
    cfg = demo_config()
    cfg = cfg.model_copy(update={"replay": cfg.replay.model_copy(update={"latency_scale": 0.0})})
    return cfg.model_validate({
        **cfg.model_dump(mode="json"),
        "api_keys": [{"name": "bench", "key_env": KEY_ENV, "scopes": ["chat", "feedback"],
                      "requests_per_minute": 10**7, "tokens_per_minute": 10**10}],
        "budgets": [{"key": "bench", "usd": 10**6, "period": "day"}],
        "auth": {**cfg.auth.model_dump(mode="json"), "open_chat": False},
        "gateway": {**cfg.gateway.model_dump(mode="json"), "fallbacks": 1},
    })  # fmt: skip


async def post(app: Asgi, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": PATH, "raw_path": PATH.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()), *headers],
    }  # fmt: skip
    sent = False
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays until the answer is sent
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    assert status == [200], status


async def block(
    app: Asgi,
    bodies: list[bytes],
    headers: list[tuple[bytes, bytes]],
    concurrency: int,
    drain: Callable[[], object] | None = None,
) -> float:
    """Process CPU seconds per request for ``bodies`` sent ``concurrency`` at a time;
    ``drain`` (the gateway's log writer's flush) runs before the clock stops, so that
    what the block's requests left to write counts in the block, not in the next one."""
    queue = list(range(len(bodies)))

    async def worker() -> None:
        while queue:
            await post(app, bodies[queue.pop()], headers)

    c0 = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if drain is not None:
        await asyncio.to_thread(drain)
    return (time.process_time() - c0) / len(bodies)


def passthrough_app(call: Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]) -> FastAPI:
    app = FastAPI()

    @app.post(PATH)
    async def chat(request: Request) -> dict[str, Any]:
        body = await request.json()
        arm = body["model"]
        gen = await call(arm, body)
        return {"object": "chat.completion", "model": arm,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": gen["text"]}}]}  # fmt: skip

    return app


def run(url: str, args: argparse.Namespace) -> None:
    os.environ[KEY_ENV] = "profile-key-" + uuid.uuid4().hex
    cfg = guarded_config()
    engine = make_engine(url, pool_size=4)
    with engine.begin() as conn:
        arms_repo.upsert_arms(conn, arm_records(cfg))
    pools = {m: PoolCore(cfg, m, make_backends(cfg, m)) for m in {a.model for a in cfg.arms}}
    model_of = {a.name: a.model for a in cfg.arms}

    async def call_pool(arm: str, body: dict[str, Any]) -> dict[str, Any]:
        return await pools[model_of[arm]].generate(arm, body)

    spool_dir = tempfile.TemporaryDirectory(prefix="banditctl-profgw-spool-")
    spool = Spool(spool_dir.name) if cfg.gateway.spool else None  # as the deployment has it
    core = GatewayCore(
        cfg, engine, call_pool, FeedbackTokens("profile-secret-0123456789", 60), spool=spool
    )
    apps: dict[str, Asgi] = {
        "pass-through": passthrough_app(call_pool),
        "gateway": create_app(core, start_background=False),
    }
    if args.fastapi_chat or args.only == "gateway-fastapi":
        apps["gateway-fastapi"] = create_app(core, start_background=False, chat_front=False)
    ds = dataset_for("synthetic", cfg.replay.synthetic_rows, 0)
    arms = [a.name for a in cfg.arms]
    prompts = [ds.requests[i % len(ds)]["messages"] for i in range(args.requests)]
    bodies = {
        "gateway": [json.dumps({"model": "auto", "messages": m}).encode() for m in prompts],
        "pass-through": [
            json.dumps({"model": arms[i % len(arms)], "messages": m}).encode()
            for i, m in enumerate(prompts)
        ],
    }
    bodies["gateway-fastapi"] = bodies["gateway"]
    headers = {"gateway": [(b"authorization", f"Bearer {os.environ[KEY_ENV]}".encode())],
               "pass-through": []}  # fmt: skip
    headers["gateway-fastapi"] = headers["gateway"]
    names = [args.only] if args.only else ["pass-through", "gateway"]
    if args.fastapi_chat:
        names.append("gateway-fastapi")

    async def rounds() -> dict[str, list[float]]:
        core.writer.start()
        refresher = asyncio.create_task(core.policy_refresher())
        for name in names:
            if name != "pass-through":
                await apps[name].state.admission.keep_fresh()
        drain = {name: None if name == "pass-through" else core.writer.flush for name in names}
        for name in names:  # warm up
            await block(
                apps[name], bodies[name][:100], headers[name], args.concurrency, drain[name]
            )
        cpu: dict[str, list[float]] = {name: [] for name in names}
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:  # each order
                cpu[name].append(
                    await block(
                        apps[name], bodies[name], headers[name], args.concurrency, drain[name]
                    )
                )
            print(f"round {r + 1}: " + "; ".join(f"{n} {cpu[n][-1] * 1e3:.3f} ms" for n in names))
        refresher.cancel()
        return cpu

    cpu = asyncio.run(rounds())
    core.writer.close()
    engine.dispose()
    spool_dir.cleanup()
    for name in names:
        print(
            f"{name:<12}: CPU per request min {min(cpu[name]) * 1e3:.3f} ms, "
            f"median {statistics.median(cpu[name]) * 1e3:.3f} ms over {args.rounds} rounds"
        )
    for name in ("gateway", "gateway-fastapi"):
        if name in cpu and "pass-through" in cpu:
            gw, pt = cpu[name], cpu["pass-through"]
            print(
                f"{name} - pass-through: min {(min(gw) - min(pt)) * 1e3:.3f} ms, "
                f"median {(statistics.median(gw) - statistics.median(pt)) * 1e3:.3f} ms "
                "per request"
            )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    ap.add_argument("--requests", type=int, default=300, help="requests per app per round")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--only", choices=("gateway", "pass-through", "gateway-fastapi"), default=None)
    ap.add_argument("--fastapi-chat", action="store_true",
                    help="also run the gateway with its chat route through FastAPI")  # fmt: skip
    args = ap.parse_args()
    with scratch_database(args.database_url, "banditctl_profgw") as (url, where):
        print(f"server: {where}")
        run(url, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
