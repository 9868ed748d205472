"""Hostile input against the gateway app served on loopback, through a real HTTP client:
NaN and Infinity, huge numbers, 10 MB bodies, deep nesting, invalid UTF-8, unpaired
surrogates and NUL, wrong content types, SQL-injection strings, malformed ids and tokens,
negative or huge ``max_tokens``. Target: no 5xx; every refusal names its field; nothing
is written for a refused request."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from controlplane.api import create_app
from controlplane.gateway_core import GatewayCore
from controlplane.learner_loop import arm_records
from controlplane.tokens import FeedbackTokens
from feedback.repositories import arms as arms_repo
from tests.controlplane.gatekeeping import config, stub_pool
from tests.reliability.served import served

pytestmark = pytest.mark.reliability

FEEDBACK_KEY = "sk-fuzz-feedback-0123456789"
MSG = [{"role": "user", "content": "hello"}]
SQLI = "'; DROP TABLE decisions; --"
MB = 1024 * 1024


def _raw(body: str) -> dict[str, Any]:
    return {"content": body.encode("utf-8", "surrogatepass"), "headers": JSON}


JSON = {"content-type": "application/json"}


def _chat(**fields: Any) -> dict[str, Any]:
    return {"json": {"model": "auto", "messages": MSG, **fields}}


CHAT_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    # (what, request kwargs, the field the refusal must name)
    (
        "NaN",
        _raw(
            '{"model": "auto", "messages": [{"role": "user", "content": "x"}], "max_tokens": NaN}'
        ),
        "max_tokens",
    ),
    (
        "Infinity",
        _raw(
            '{"model": "auto", "messages": [{"role": "user", "content": "x"}], "temperature": Infinity}'
        ),
        "temperature",
    ),
    (
        "-Infinity",
        _raw(
            '{"model": "auto", "messages": [{"role": "user", "content": "x"}], "top_p": -Infinity}'
        ),
        "top_p",
    ),
    (
        "1e400",
        _raw(
            '{"model": "auto", "messages": [{"role": "user", "content": "x"}], "temperature": 1e400}'
        ),
        "temperature",
    ),
    (
        "5000 digits",
        _raw(
            '{"model": "auto", "messages": [{"role": "user", "content": "x"}], "max_tokens": '
            + "9" * 5000
            + "}"
        ),
        "max_tokens",
    ),
    ("10 MB prompt", _chat(messages=[{"role": "user", "content": "a" * (10 * MB)}]), "body"),
    ("deep nesting", _raw("[" * 100_000 + "]" * 100_000), "body"),
    (
        "nested metadata",
        _raw(
            '{"model": "auto", "messages": [{"role": "user", "content": "x"}], "metadata": {"a": '
            + "[" * 60
            + "]" * 60
            + "}}"
        ),
        None,
    ),
    (
        "invalid UTF-8",
        {
            "content": b'{"model": "auto", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
            "headers": JSON,
        },
        "body",
    ),
    ("not JSON", {"content": b"{model: auto", "headers": JSON}, "body"),
    ("empty body", {"content": b"", "headers": JSON}, "body"),
    ("null", _raw("null"), "body"),
    ("a list", _raw("[]"), "body"),
    ("a string", _raw('"hi"'), "body"),
    (
        "text/plain",
        {
            "content": json.dumps(_chat()["json"]).encode(),
            "headers": {"content-type": "text/plain"},
        },
        "content-type",
    ),
    ("form", {"data": {"model": "auto"}}, "content-type"),
    ("multipart", {"files": {"f": ("a.json", b"{}")}}, "content-type"),
    (
        "surrogate tenant",
        _raw(
            '{"model": "auto", "messages": [{"role": "user", "content": "x"}], "metadata": {"tenant": "t\\ud800"}}'
        ),
        "metadata.tenant",
    ),
    (
        "surrogate task",
        _raw(
            '{"model": "auto", "messages": [{"role": "user", "content": "x"}], "task": "\\udfff"}'
        ),
        "task",
    ),
    (
        "surrogate content",
        _raw('{"model": "auto", "messages": [{"role": "user", "content": "\\ud83d"}]}'),
        "messages[0].content",
    ),
    (
        "surrogate key",
        _raw(
            '{"model": "auto", "messages": [{"role": "user", "content": "x"}], "metadata": {"\\ud800": "v"}}'
        ),
        None,
    ),
    ("NUL tenant", _chat(metadata={"tenant": "a\x00b"}), "metadata.tenant"),
    ("NUL task", _chat(task="code\x00"), "task"),
    ("bell in tenant", _chat(metadata={"tenant": "a\x07"}), "metadata.tenant"),
    ("long tenant", _chat(metadata={"tenant": "t" * 10_000}), "metadata.tenant"),
    ("numeric tenant", _chat(metadata={"tenant": 7}), "metadata.tenant"),
    ("many metadata keys", _chat(metadata={f"k{i}": "v" for i in range(100)}), "metadata"),
    ("long metadata value", _chat(metadata={"note": "v" * 5000}), "metadata.note"),
    ("object metadata value", _chat(metadata={"note": {"a": 1}}), "metadata.note"),
    ("10,000 messages", _chat(messages=[{"role": "user", "content": "x"}] * 10_000), "messages"),
    ("no messages", _chat(messages=[]), "messages"),
    ("message not an object", _chat(messages=["hi"]), "messages[0]"),
    ("role missing", _chat(messages=[{"content": "x"}]), "messages[0].role"),
    ("content a number", _chat(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
    ("max_tokens -1", _chat(max_tokens=-1), "max_tokens"),
    ("max_tokens 0", _chat(max_tokens=0), "max_tokens"),
    ("max_tokens 10^12", _chat(max_tokens=10**12), "max_tokens"),
    ("max_tokens true", _chat(max_tokens=True), "max_tokens"),
    ("max_tokens a string", _chat(max_tokens="100"), "max_tokens"),
    ("max_tokens 1.5", _chat(max_tokens=1.5), "max_tokens"),
    ("stream a string", _chat(stream="yes"), "stream"),
    ("SQL in model", _chat(model=SQLI), "model"),
    ("unknown model", _chat(model="gpt-17"), "model"),
    ("model a list", _chat(model=["auto"]), "model"),
    ("x-request-id too long", {**_chat(), "headers": {"x-request-id": "r" * 1000}}, "x-request-id"),
    (
        "x-request-id non-ASCII",
        {**_chat(), "headers": {"x-request-id": "é".encode("latin-1")}},
        "x-request-id",
    ),
]

ACCEPTED_CHATS = [
    ("SQL in tenant and task", _chat(metadata={"tenant": SQLI}, task=SQLI)),
    ("odd Unicode tenant", _chat(metadata={"tenant": "équipe-\u0662\u0663 😀"})),
    ("max_tokens at the limit", _chat(max_tokens=1_000_000)),
    ("a client's request id", {**_chat(), "headers": {"x-request-id": SQLI}}),
]


@pytest.fixture
def gateway(engine, monkeypatch):
    monkeypatch.setenv("BANDITCTL_FUZZ_FEEDBACK", FEEDBACK_KEY)
    cfg = config(
        auth={"open_chat": True},
        api_keys=[{"name": "rater", "key_env": "BANDITCTL_FUZZ_FEEDBACK", "scopes": ["feedback"]}],
    )
    with engine.begin() as conn:
        arms_repo.upsert_arms(conn, arm_records(cfg))
    core = GatewayCore(
        cfg, engine, stub_pool, FeedbackTokens("fuzz-secret-0123456789", 60), listen=False
    )
    with served(create_app(core)) as http:
        yield http, core


def _named(resp, field: str | None) -> None:
    """A 4xx names its field: our error's ``param`` or FastAPI's ``loc``."""
    body = resp.json()
    if "error" in body:
        param = body["error"]["param"]
        assert param, body
        if field is not None:
            assert param == field, body
    else:
        assert body["detail"][0]["loc"], body


def _counts(engine) -> tuple[int, int, int]:
    with engine.connect() as conn:
        return tuple(
            int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one())
            for t in ("decisions", "outcomes", "feedback")
        )


def test_hostile_chat_bodies_answer_4xx_naming_the_field_and_write_nothing(gateway, engine):
    http, core = gateway
    for what, kwargs, field in CHAT_CASES:
        for path in ("/v1/chat/completions", "/v1/route/explain"):
            if field == "x-request-id" and path == "/v1/route/explain":
                continue  # explain decides nothing: no id to correlate
            resp = http.post(path, **kwargs)
            assert 400 <= resp.status_code < 500, (what, path, resp.status_code, resp.text[:300])
            _named(resp, field)
    assert core.writer.flush()
    assert _counts(engine) == (0, 0, 0)  # nothing refused was logged
    assert core.writer.stats.invalid == 0

    ok = 0
    for what, kwargs in ACCEPTED_CHATS:
        resp = http.post("/v1/chat/completions", **kwargs)
        assert resp.status_code == 200, (what, resp.text[:300])
        ok += 1
    assert core.writer.flush()
    assert _counts(engine)[:2] == (ok, ok)  # every answered request logged, none dropped
    assert core.writer.stats.invalid == 0 and core.writer.health.report()["healthy"]
    with engine.connect() as conn:
        tenants = {r[0] for r in conn.execute(text("SELECT tenant FROM decisions"))}
    assert SQLI in tenants and "équipe-\u0662\u0663 😀" in tenants


def _served_request(http) -> dict[str, Any]:
    resp = http.post("/v1/chat/completions", json={"model": "auto", "messages": MSG})
    assert resp.status_code == 200, resp.text
    return resp.json()["banditctl"]


def test_hostile_feedback_answers_4xx_naming_the_field_and_stores_nothing(gateway, engine):
    http, core = gateway
    meta = _served_request(http)
    rid, token = meta["request_id"], meta["feedback_token"]
    good = {"request_id": rid, "feedback_token": token, "quality": 0.5}
    _, kid, _, exp, _ = token.split(".")  # v2.<key id>.<request id>.<expiry>.<signature>
    cases: list[tuple[str, dict[str, Any], str | None]] = [
        (
            "quality NaN",
            _raw(f'{{"request_id": "{rid}", "feedback_token": "{token}", "quality": NaN}}'),
            "quality",
        ),
        (
            "quality 1e400",
            _raw(f'{{"request_id": "{rid}", "feedback_token": "{token}", "quality": 1e400}}'),
            "quality",
        ),
        ("quality a string", {"json": {**good, "quality": "0.5"}}, "quality"),
        ("quality true", {"json": {**good, "quality": True}}, "quality"),
        ("quality 2", {"json": {**good, "quality": 2}}, "quality"),
        ("rating fullwidth 5", {"json": {**good, "quality": None, "rating": "\uff15"}}, "rating"),
        (
            "rating arabic-indic 3",
            {"json": {**good, "quality": None, "rating": "\u0663"}},
            "rating",
        ),
        ("rating 1.5", {"json": {**good, "quality": None, "rating": 1.5}}, "rating"),
        ("10 MB comment", {"json": {**good, "comment": "c" * (10 * MB)}}, "body"),
        ("long comment", {"json": {**good, "comment": "c" * 5000}}, "comment"),
        ("comment a list", {"json": {**good, "comment": ["c"]}}, "comment"),
        ("NUL comment", {"json": {**good, "comment": "a\x00"}}, "comment"),
        (
            "surrogate comment",
            _raw(
                f'{{"request_id": "{rid}", "feedback_token": "{token}", "quality": 1, "comment": "\\udc00"}}'
            ),
            "comment",
        ),
        ("escape in comment", {"json": {**good, "comment": "a\x1b[31m"}}, "comment"),
        (
            "surrogate source",
            _raw(
                f'{{"request_id": "{rid}", "feedback_token": "{token}", "quality": 1, "source": "\\ud800"}}'
            ),
            "source",
        ),
        ("NUL source", {"json": {**good, "source": "u\x00"}}, "source"),
        ("long source", {"json": {**good, "source": "s" * 65}}, "source"),
        ("SQL request id", {"json": {**good, "request_id": SQLI}}, "request_id"),
        ("numeric request id", {"json": {**good, "request_id": 12}}, "request_id"),
        ("empty request id", {"json": {**good, "request_id": ""}}, "request_id"),
        ("chatcmpl- garbage", {"json": {**good, "request_id": "chatcmpl-zz"}}, "request_id"),
        (
            "surrogate request id",
            _raw(f'{{"request_id": "\\ud800", "feedback_token": "{token}", "quality": 1}}'),
            "request_id",
        ),
        ("a list body", {"json": [good]}, "body"),
        (
            "text/plain",
            {"content": json.dumps(good).encode(), "headers": {"content-type": "text/plain"}},
            "content-type",
        ),
        ("deep nesting", _raw('{"request_id": ' + "[" * 50_000 + "]" * 50_000 + "}"), "body"),
    ]
    token_cases = [
        ("forged token", f"v2.{kid}.{rid}.{exp}.AAAA"),
        ("forged v1 token", f"v1.{rid}.{exp}.AAAA"),
        ("unknown key id", f"v2.k9.{rid}.{exp}.AAAA"),
        ("dotted key id", f"v2.{kid}.x.{rid}.{exp}.AAAA"),
        ("another request's token", core.tokens.issue(uuid.uuid4())),
        ("superscript expiry", f"v2.{kid}.{rid}.\u00b2\u00b3.sig"),
        ("arabic-indic expiry", f"v2.{kid}.{rid}.\u0661\u0662.sig"),
        ("non-ASCII signature", f"v2.{kid}.{rid}.{exp}.sïg"),
        ("surrogate token", "v1.\ud800.1.x"),
        ("10k token", "v1." + "a" * 10_000),
        ("empty parts", "v1..."),
        ("huge expiry", f"v2.{kid}.{rid}.{'9' * 5000}.sig"),
    ]
    for what, tok in token_cases:
        body = json.dumps({**good, "feedback_token": tok}, ensure_ascii=True)
        cases.append((what, _raw(body.replace("\\\\ud800", "\\ud800")), None))
    for what, kwargs, field in cases:
        for path, wrap in (("/v1/feedback", None), ("/v1/feedback/batch", "items")):
            if wrap and "json" in kwargs:
                kwargs = {"json": {"items": [kwargs["json"]]}}
                field = (
                    None
                    if field is None or field in ("body", "content-type")
                    else f"items[0].{field}"
                )
            elif wrap:
                continue
            resp = http.post(path, **kwargs)
            assert 400 <= resp.status_code < 500, (what, path, resp.status_code, resp.text[:300])
            if resp.status_code not in (401, 403):
                _named(resp, field)
    # a token in the header, malformed
    resp = http.post(
        "/v1/feedback",
        json={"request_id": rid, "quality": 1},
        headers={"x-feedback-token": "v1.\u00e9".encode("latin-1")},
    )
    assert resp.status_code == 401, resp.text
    assert _counts(engine)[2] == 0  # no refused feedback was stored

    resp = http.post("/v1/feedback", json=good)
    assert resp.status_code == 200 and resp.json()["duplicate"] is False


def test_malformed_paths_and_queries_answer_4xx(gateway):
    http, _core = gateway
    for path in (
        "/v1/policies/2147483648",
        "/v1/policies/99999999999999999999999",
        "/v1/policies/-1",
        "/v1/policies/\u0661\u0662",
        "/v1/policies/1e3",
        "/v1/policies/%00",
        "/v1/policies/2147483648/rollback",
        "/v1/dashboard/overview?window_s=NaN",
        "/v1/dashboard/overview?window_s=inf",
        "/v1/dashboard/overview?window_s=\u0661\u0662",
        "/v1/dashboard/feedback?limit=-1",
        "/v1/dashboard/feedback?limit=100000000000000000000000000",
        "/v1/dashboard/routing?limit=%F0%9F%98%80",
        "/dashboard/static/..%2F..%2Fsettings.py",
        "/v1/nothing-here",
    ):
        method = "POST" if path.endswith("rollback") else "GET"
        resp = http.request(method, path)
        assert 400 <= resp.status_code < 500, (path, resp.status_code, resp.text[:300])
    assert http.get("/v1/policies/2147483647").status_code == 404  # the largest version: unknown
