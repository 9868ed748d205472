"""The gateway app's chat front (controlplane.api.front) against the same route served
through FastAPI's stack (``create_app(..., chat_front=False)``): the same requests, in the
same order, on two apps of the same config, answer alike (status, headers, body, errors
included), once the ids each answer makes are set aside. Real Postgres, a stub pool, no
Ray; the rate limits run on a fake clock."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from controlplane.admission import Admission
from controlplane.api import create_app
from controlplane.api.front import ChatFront
from controlplane.config import BanditConfig
from controlplane.gateway_core import GatewayCore
from controlplane.learner_loop import arm_records
from controlplane.tokens import FeedbackTokens
from feedback.repositories import arms as arms_repo
from tests.controlplane.gatekeeping import BODY, Clocks, config, stub_pool

CHAT = "/v1/chat/completions"
KEY, READER = "sk-front-chat-0123456789abcdef", "sk-front-read-0123456789abcdef"
# what differs from one answer to the next whichever way it is served
IDS = [
    (re.compile(r"v\d+\.[\w-]+\.[0-9a-f-]{36}\.\d+\.[\w-]+"), "<token>"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r"[0-9a-f]{32}"), "<hex>"),
    (re.compile(r'"created": ?\d+'), '"created": <time>'),
]


def _plain(text: str) -> str:
    for pattern, stand_in in IDS:
        text = pattern.sub(stand_in, text)
    return text


async def pool(arm: str, body: dict[str, Any]) -> dict[str, Any]:
    if (body.get("metadata") or {}).get("fail"):
        raise RuntimeError("upstream down")
    return await stub_pool(arm, body)


def front_config(**extra: Any) -> BanditConfig:
    keys = [
        {"name": "chatter", "key_env": "BANDITCTL_FRONT_CHAT", "scopes": ["chat"],
         "requests_per_minute": 4},
        {"name": "reader", "key_env": "BANDITCTL_FRONT_READ", "scopes": ["read"]},
    ]  # fmt: skip
    return config(api_keys=keys, **extra)


class Apps:
    """The same config served both ways, each app with its own core and admission, on one
    fake clock."""

    def __init__(self, engine: Any, cfg: BanditConfig, **client: Any) -> None:
        with engine.begin() as conn:
            arms_repo.upsert_arms(conn, arm_records(cfg))
        self.cores: list[GatewayCore] = []
        self.clients: list[TestClient] = []
        clocks = self.clocks = Clocks()
        for front in (True, False):
            core = GatewayCore(cfg, engine, pool, FeedbackTokens("unit-secret-0123456789", 60))
            admission = Admission(cfg, engine, clock=lambda: clocks.mono, now=lambda: clocks.wall)
            app = create_app(core, start_background=False, admission=admission, chat_front=front)
            self.cores.append(core)
            self.clients.append(TestClient(app, **client))

    def both(self, method: str, path: str, **kwargs: Any) -> list[Any]:
        return [c.request(method, path, **kwargs) for c in self.clients]

    def same(self, method: str, path: str = CHAT, **kwargs: Any) -> Any:
        """Both answers, compared; the front's returned."""
        front, fastapi = self.both(method, path, **kwargs)
        assert front.status_code == fastapi.status_code, (front.text, fastapi.text)
        assert _headers(front) == _headers(fastapi)
        assert _plain(front.text) == _plain(fastapi.text)
        return front


def _headers(resp: Any) -> list[tuple[str, str]]:
    return sorted((k, _plain(v)) for k, v in resp.headers.items())


@pytest.fixture
def apps(engine, monkeypatch) -> Iterator[Apps]:
    monkeypatch.setenv("BANDITCTL_FRONT_CHAT", KEY)
    monkeypatch.setenv("BANDITCTL_FRONT_READ", READER)
    served = Apps(engine, front_config())
    with ExitStack() as stack:
        for client in served.clients:
            stack.enter_context(client)
        yield served


AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {"content-type": "application/json"}


CASES: list[tuple[str, dict[str, Any], int]] = [
    ("an answer", {"json": BODY, "headers": AUTH}, 200),
    ("a stream", {"json": {**BODY, "stream": True}, "headers": AUTH}, 200),
    ("the client's id", {"json": BODY, "headers": {**AUTH, "x-request-id": "corr-1"}}, 200),
    ("a bad client id", {"json": BODY, "headers": {**AUTH, "x-request-id": "x" * 200}}, 400),
    ("no key", {"json": BODY}, 401),
    ("an unknown key", {"json": BODY, "headers": {"Authorization": "Bearer sk-nope"}}, 401),
    ("no chat scope", {"json": BODY, "headers": {"Authorization": f"Bearer {READER}"}}, 403),
    ("not JSON", {"content": b"{", "headers": {**AUTH, **JSON}}, 400),
    ("not UTF-8", {"content": b'{"a": "\xff"}', "headers": {**AUTH, **JSON}}, 400),
    (
        "NaN",
        {"content": b'{"model": "auto", "max_tokens": NaN}', "headers": {**AUTH, **JSON}},
        400,
    ),  # fmt: skip
    (
        "not JSON's type",
        {"content": b"{}", "headers": {**AUTH, "content-type": "text/plain"}},
        415,
    ),  # fmt: skip
    ("too large", {"content": b" " * (2 << 20), "headers": {**AUTH, **JSON}}, 413),
    ("no messages", {"json": {**BODY, "messages": []}, "headers": AUTH}, 400),
    ("a bad field", {"json": {**BODY, "max_tokens": 0}, "headers": AUTH}, 400),
    ("an unknown model", {"json": {**BODY, "model": "nope"}, "headers": AUTH}, 404),
    ("the upstream down", {"json": {**BODY, "metadata": {"fail": True}}, "headers": AUTH}, 502),
]


@pytest.mark.parametrize(("what", "request_kwargs", "status"), CASES, ids=[c[0] for c in CASES])
def test_the_front_answers_as_fastapi_does(apps, what, request_kwargs, status):
    resp = apps.same("POST", **request_kwargs)
    assert resp.status_code == status, (what, resp.text)
    if status >= 400:
        assert set(resp.json()["error"]) == {"message", "type", "param", "code"}


def test_rate_limits_refuse_the_same_request_both_ways(apps):
    statuses = [apps.same("POST", json=BODY, headers=AUTH).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 200, 429]
    apps.clocks.advance(15)  # one request per 15 s
    assert apps.same("POST", json=BODY, headers=AUTH).status_code == 200


def test_anonymous_traffic_counts_per_address_both_ways(engine):
    cfg = config(auth={"open_chat": True}, limits={"anonymous_requests_per_minute": 2})
    apps = Apps(engine, cfg)
    with apps.clients[0], apps.clients[1]:
        statuses = [apps.same("POST", json=BODY).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_an_internal_error_answers_500_and_reaches_the_server_both_ways(engine, monkeypatch):
    monkeypatch.setenv("BANDITCTL_FRONT_CHAT", KEY)
    monkeypatch.setenv("BANDITCTL_FRONT_READ", READER)

    def broken(_body: dict[str, Any]) -> tuple[str, ...]:
        raise LookupError("a bug")

    quiet = Apps(engine, front_config(), raise_server_exceptions=False)
    loud = Apps(engine, front_config())
    for core in quiet.cores + loud.cores:
        monkeypatch.setattr(core, "servable_arms", broken)
    resp = quiet.same("POST", json=BODY, headers=AUTH)
    assert resp.status_code == 500 and resp.json()["error"]["type"] == "internal_error"
    for client in loud.clients:  # re-raised after the answer, as FastAPI's stack does
        with pytest.raises(LookupError, match="a bug"):
            client.post(CHAT, json=BODY, headers=AUTH)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", CHAT, 405), ("POST", CHAT + "/", 307), ("GET", "/v1/models", 200),
     ("GET", "/v1/nope", 404), ("GET", "/openapi.json", 200)],
)  # fmt: skip
def test_other_requests_take_fastapis_stack(apps, method, path, status):
    resp = apps.same(method, path, headers=AUTH, follow_redirects=False)
    assert resp.status_code == status


def test_the_schema_lists_the_chat_route(apps):
    schema = apps.same("GET", "/openapi.json").json()
    assert "post" in schema["paths"][CHAT]


class Counting:
    """An ASGI layer that counts the requests it passes on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.paths: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.app(scope, receive, send)


def test_only_chat_skips_the_stack(apps):
    client = apps.clients[0]
    assert client.get("/healthz").status_code == 200  # builds the stack
    front = client.app.middleware_stack  # type: ignore[attr-defined]
    assert isinstance(front, ChatFront)
    front.app = counting = Counting(front.app)
    assert client.post(CHAT, json=BODY, headers=AUTH).status_code == 200
    assert client.post(CHAT, json={**BODY, "stream": True}, headers=AUTH).status_code == 200
    assert counting.paths == []
    client.get("/v1/models", headers=AUTH)
    client.get(CHAT, headers=AUTH)
    assert counting.paths == ["/v1/models", CHAT]


def test_a_middleware_added_to_the_app_sees_chat(engine, monkeypatch):
    monkeypatch.setenv("BANDITCTL_FRONT_CHAT", KEY)
    monkeypatch.setenv("BANDITCTL_FRONT_READ", READER)
    apps = Apps(engine, front_config())
    app = apps.clients[0].app
    seen: list[Counting] = []

    def counting(inner: ASGIApp) -> Counting:
        seen.append(Counting(inner))
        return seen[-1]

    app.add_middleware(counting)  # type: ignore[attr-defined]
    with apps.clients[0] as client:
        assert client.post(CHAT, json=BODY, headers=AUTH).status_code == 200
    assert not isinstance(app.middleware_stack, ChatFront)  # type: ignore[attr-defined]
    assert seen[0].paths == [CHAT]


async def _post(app: ASGIApp, path: str, **scope: Any) -> int:
    """One chat request straight through ``app``'s ASGI call (``scope``: keys to add)."""
    body = b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}]}'
    full = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
        "headers": [(b"content-type", b"application/json"),
                    (b"authorization", f"Bearer {KEY}".encode())],
        **scope,
    }  # fmt: skip
    sent = False
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(full, receive, send)
    return statuses[0]


def test_what_fastapi_instruments_or_mounts_takes_the_stack(apps):
    client = apps.clients[0]
    assert client.get("/healthz").status_code == 200  # builds the stack
    front = client.app.middleware_stack  # type: ignore[attr-defined]
    front.app = counting = Counting(front.app)
    app = client.app

    async def calls() -> list[int]:
        return [
            await _post(app, CHAT),  # the front's
            # FastAPI's instrumentation marks the requests it traces (fastapi.telemetry)
            await _post(app, CHAT, **{"fastapi.telemetry": object()}),
            await _post(app, "/gw" + CHAT, root_path="/gw"),  # mounted under a prefix
            await _post(app, CHAT, **{"starlette.max_body_size": 1 << 20}),  # a body limit
        ]

    assert asyncio.run(calls()) == [200, 200, 200, 200]
    assert counting.paths == [CHAT, "/gw" + CHAT, CHAT]


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_works_out_its_servable_arms_once(apps, monkeypatch, stream):
    """Admission and the decision take the same servable arms, asked for once a
    request: the decision picks among what admission saw."""
    for core in apps.cores:
        asked: list[tuple[str, ...]] = []
        servable = core.servable_arms

        def counted(body: dict[str, Any], seen=asked, real=servable) -> tuple[str, ...]:
            seen.append(real(body))
            return seen[-1]

        monkeypatch.setattr(core, "servable_arms", counted)
        client = apps.clients[apps.cores.index(core)]
        resp = client.post(CHAT, json={**BODY, "stream": stream}, headers=AUTH)
        assert resp.status_code == 200
        assert len(asked) == 1
        assert resp.headers["x-banditctl-arm"] in asked[0]
