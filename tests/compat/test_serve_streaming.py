"""The same request path on Ray Serve: the gateway consumes the pool's stream through a
Serve streaming handle, a client that leaves stops the upstream's generation, and a
failing arm's request falls back to another arm across Ray."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import create_engine, text

from tests.compat.conftest import compat_config
from tests.compat.fake_upstream import FakeUpstream
from tests.ray_fixtures import SECRET, wait_for

pytestmark = pytest.mark.ray

ASK = [{"role": "user", "content": "tell me about the rivers of europe please"}]
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def served(ray_session: int, pg_server: Any, upstream: FakeUpstream) -> Iterator[dict[str, str]]:
    from ray import serve

    from controlplane.cli.launch import APP_NAME, deploy, wait_ready
    from feedback import migrate

    url = pg_server.create_database("banditctl_compat")
    migrate.upgrade(url)
    cfg = compat_config(
        upstream.base_url, http_port=ray_session, gateway={"fallbacks": 1, "log_flush_s": 0.05}
    )
    instance = uuid.uuid4().hex
    base = deploy(cfg, url, SECRET, instance_id=instance)
    wait_ready(base, timeout_s=180, instance_id=instance)
    yield {"base": base, "db": url}
    serve.delete(APP_NAME)


@pytest.fixture
def fake(upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    upstream.reset()
    yield upstream
    upstream.reset()


def _outcome(db: str, request_id: str) -> dict[str, Any]:
    engine = create_engine(db)
    try:

        def row() -> dict[str, Any] | None:
            with engine.connect() as conn:
                r = conn.execute(
                    text("SELECT * FROM outcomes WHERE request_id = :r"), {"r": request_id}
                ).first()
                return None if r is None else dict(r._mapping)

        found: dict[str, Any] = wait_for(row, timeout=20, what="the outcome row")
        return found
    finally:
        engine.dispose()


def test_chunks_stream_through_serve_as_the_upstream_sends_them(served, fake):
    fake.delay_s = 0.2
    client = openai.OpenAI(base_url=served["base"] + "/v1", api_key="x", max_retries=0)
    start = time.perf_counter()
    arrivals, chunks = [], []
    for chunk in client.chat.completions.create(
        model="up-a", messages=ASK, stream=True, stream_options={"include_usage": True}
    ):
        chunks.append(chunk)
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter() - start)
    words = len(arrivals)
    assert words >= 8 and arrivals[0] < arrivals[-1] - 0.2 * (words - 3)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == words
    row = _outcome(served["db"], chunks[0].model_extra["banditctl"]["request_id"])
    assert row["status"] == "ok" and 150 <= row["ttft_ms"] < row["latency_ms"] - 200 * (words - 3)

    fake.delay_s = 0.0  # tool calls and n choices cross Ray too, streamed and whole
    streamed = list(client.chat.completions.create(model="up-b", messages=ASK, tools=[TOOL],
                                                   stream=True))  # fmt: skip
    args = "".join(d.function.arguments or "" for c in streamed if c.choices
                   for d in c.choices[0].delta.tool_calls or ())  # fmt: skip
    assert json.loads(args) == {"query": ASK[0]["content"]}
    assert [c.choices[0].finish_reason for c in streamed if c.choices][-1] == "tool_calls"
    two = client.chat.completions.create(model="up-b", messages=ASK, n=2, stop=["europe"])
    assert [c.message.content for c in two.choices] == ["model-b heard: tell me about the rivers of "] * 2  # fmt: skip

    fake.reject = {"message": "no tools for you", "param": "tools"}  # out of Ray's wrapper
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="up-b", messages=ASK, tools=[TOOL])
    assert refused.value.body["param"] == "tools"


def test_a_client_that_leaves_stops_the_upstream_through_serve(served, fake):
    fake.delay_s = 0.1
    body = {"model": "up-a", "stream": True,
            "messages": [{"role": "user", "content": " ".join(["word"] * 300)}]}  # fmt: skip
    url = served["base"] + "/v1/chat/completions"
    with httpx.Client(timeout=30) as http, http.stream("POST", url, json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        first = json.loads(next(line for line in lines if line.startswith("data:"))[5:])
        for _ in range(8):
            next(lines)
    wait_for(lambda: fake.closed_early == 1, timeout=15, what="the upstream to see the close")
    assert fake.completed == 0
    row = _outcome(served["db"], first["banditctl"]["request_id"])
    assert row["status"] == "ok" and row["error"].startswith("client disconnected")
    assert 0 < row["completion_tokens"] < 300


def test_a_failing_arm_falls_back_to_another_through_serve(served, fake):
    client = openai.OpenAI(base_url=served["base"] + "/v1", api_key="x", max_retries=0)
    fake.fail_times = 2  # the first arm's try and its one retry (max_retries: 1)
    r = client.chat.completions.create(model="upstreams", messages=ASK)
    meta = r.model_extra["banditctl"]
    assert meta["attempt"] == 2 and r.model not in meta["failed_arms"]
    assert {r.model, *meta["failed_arms"]} == {"up-a", "up-b"}
    assert r.choices[0].message.content == f"model-{r.model[-1]} heard: {ASK[0]['content']}"
    assert len(fake.requests) == 3

    fake.fail_times = 2
    chunks = list(client.chat.completions.create(model="upstreams", messages=ASK, stream=True))
    meta = chunks[0].model_extra["banditctl"]
    assert meta["attempt"] == 2 and meta["fallback_of"] != meta["request_id"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).endswith(
        ASK[0]["content"]
    )
    failed = _outcome(served["db"], meta["fallback_of"])
    assert failed["status"] == "error"
