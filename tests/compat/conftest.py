"""The compatibility suite's gateway: the real FastAPI app around a GatewayCore and real
pools (:class:`deployments.pool.PoolCore`: openai backends on the fake upstream, a replay
backend), served by uvicorn on a loopback port, without Ray; and the fake upstream."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import uvicorn
from sqlalchemy import Engine, create_engine, text

from controlplane.api import create_app
from controlplane.config import BanditConfig, parse_config
from controlplane.gateway_core import GatewayCore
from controlplane.learner_loop import arm_records
from controlplane.tokens import FeedbackTokens
from deployments.backends import BuildContext, build_backends
from deployments.pool import PoolCore
from feedback.repositories import arms as arms_repo
from tests.compat.fake_upstream import FakeUpstream

PRICE_IN, PRICE_OUT, JOULES = 1.0, 2.0, 0.5  # the upstream arms' price table


def compat_config(upstream_url: str, **extra: Any) -> BanditConfig:
    upstream = {"backend": "openai", "base_url": upstream_url, "max_retries": 1,
                "timeout_s": 5.0, "usd_per_1k_prompt_tokens": PRICE_IN,
                "usd_per_1k_completion_tokens": PRICE_OUT, "joules_per_token": JOULES}  # fmt: skip
    data: dict[str, Any] = {
        "arms": [
            {"name": "up-a", "model": "model-a", **upstream},
            {"name": "up-b", "model": "model-b", **upstream},
            {
                "name": "up-slow",
                "model": "model-slow",
                **upstream,
                "timeout_s": 0.5,
                "max_retries": 0,
            },  # fmt: skip
            {"name": "small", "model": "small", "backend": "replay"},
        ],
        "routes": {"upstreams": ["up-a", "up-b"]},
        "learner": {"kind": "random"},
        "featurizer": {"dim": 32},
        "replay": {"synthetic_rows": 40, "latency_scale": 0.0},
        "auth": {"open_chat": True},
        "gateway": {"log_flush_s": 0.05},
    }
    data.update(extra)
    return parse_config(data, "<compat>")


class LocalPools:
    """The gateway's two pool calls on in-process :class:`PoolCore` s (what
    ``deployments.gateway.Gateway`` does through Serve handles)."""

    def __init__(self, config: BanditConfig, data_dir: Path) -> None:
        self.model_of = {a.name: a.model for a in config.arms}
        backends = build_backends(config.arms, BuildContext(config, 4, data_dir))
        self.pools = {
            model: PoolCore(
                config, model, {n: b for n, b in backends.items() if self.model_of[n] == model}
            )  # fmt: skip
            for model in set(self.model_of.values())
        }

    async def call(self, arm: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.pools[self.model_of[arm]].generate(arm, body)

    async def stream(self, arm: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        async with aclosing(self.pools[self.model_of[arm]].generate_stream(arm, body)) as chunks:
            async for chunk in chunks:
                yield chunk.as_dict()


@dataclass
class Gateway:
    base_url: str
    core: GatewayCore
    engine: Engine
    upstream: FakeUpstream

    @property
    def api_url(self) -> str:
        return self.base_url + "/v1"

    def client(self, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.api_url, api_key="unused", max_retries=0, timeout=30, **kw)  # fmt: skip

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        """Rows of ``sql`` once the gateway's log has been written."""
        assert self.core.writer.flush(timeout_s=10)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(text(sql), params)]

    def outcome(self, request_id: str) -> dict[str, Any]:
        [row] = self.rows(
            "SELECT o.*, d.arm_id FROM outcomes o JOIN decisions d USING (request_id) "
            "WHERE request_id = :r",
            r=request_id,
        )
        return row

    def count(self, table: str) -> int:
        return int(self.rows(f"SELECT count(*) AS n FROM {table}")[0]["n"])


def serve_app(app: Any) -> tuple[str, uvicorn.Server, threading.Thread]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.02)
    return f"http://127.0.0.1:{port}", server, thread


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@contextmanager
def running_gateway(
    cfg: BanditConfig, db_url: str, data_dir: Path, upstream: FakeUpstream
) -> Iterator[Gateway]:
    """The gateway app for ``cfg`` on a loopback port, its log in ``db_url``."""
    engine = create_engine(db_url, pool_size=4)
    with engine.begin() as conn:
        arms_repo.upsert_arms(conn, arm_records(cfg))
    pools = LocalPools(cfg, data_dir)
    core = GatewayCore(
        cfg, engine, pools.call, FeedbackTokens("compat-secret-0123456789", 60),
        stream_pool=pools.stream, listen=False,
    )  # fmt: skip
    base, server, thread = serve_app(create_app(core))
    try:
        yield Gateway(base, core, engine, upstream)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        engine.dispose()


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream, db_url: str, tmp_path_factory: Any) -> Iterator[Gateway]:
    cfg = compat_config(upstream.base_url)
    with running_gateway(cfg, db_url, tmp_path_factory.mktemp("data"), upstream) as gw:
        yield gw


@pytest.fixture
def fake(gateway: Gateway) -> Iterator[FakeUpstream]:
    """The upstream, reset before and after each test."""
    gateway.upstream.reset()
    yield gateway.upstream
    gateway.upstream.reset()
