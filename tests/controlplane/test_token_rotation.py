"""Feedback tokens across a rotation of their secret: tokens carry the key id that signed
them; a previous secret verifies its tokens until its ``expires_at`` (403 expired after),
a key id no longer configured is unknown (401); new tokens are always signed with the
current secret. Forged, wrong-request, replayed and expired tokens too (real Postgres,
HTTP through the app, a fake clock)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from controlplane.api import create_app
from controlplane.config import ConfigError, parse_config
from controlplane.gateway_core import GatewayCore
from controlplane.learner_loop import arm_records
from controlplane.tokens import FeedbackTokens, PreviousSecret, TokenError
from feedback.repositories import arms as arms_repo
from tests.controlplane.gatekeeping import BODY, config, stub_pool

OLD, NEW = "november-secret-0123456789", "december-secret-0123456789"
TTL_S = 7 * 86400.0
GRACE_S = 86400.0  # shorter than the tokens' life: a token outlives its key
START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC).timestamp()


@dataclass
class Clock:
    now: float = START

    def __call__(self) -> float:
        return self.now


def _auth(key_id: str, previous: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"open_chat": True, "feedback_tokens": {"key_id": key_id, "previous": previous or []}}


def _gateway(engine, secret: str, auth: dict[str, Any], clock: Clock, environ=None) -> TestClient:
    cfg = config(auth=auth, gateway={"feedback_token_ttl_s": TTL_S})
    with engine.begin() as conn:
        arms_repo.upsert_arms(conn, arm_records(cfg))
    tokens = FeedbackTokens.from_config(secret, cfg, environ=environ or {}, clock=clock)
    core = GatewayCore(cfg, engine, stub_pool, tokens, listen=False)
    return TestClient(create_app(core, start_background=False))


def _answer(http: TestClient) -> dict[str, str]:
    resp = http.post("/v1/chat/completions", json=BODY)
    assert resp.status_code == 200, resp.text
    meta = resp.json()["banditctl"]
    assert resp.headers["x-banditctl-feedback-token"] == meta["feedback_token"]
    return {"request_id": meta["request_id"], "feedback_token": meta["feedback_token"]}


def _rate(http: TestClient, answer: dict[str, str], **changes: str) -> Any:
    return http.post("/v1/feedback", json={**answer, **changes, "quality": 0.8})


def _key_id(token: str) -> str:
    version, key_id, *_ = token.split(".")
    assert version == "v2"
    return key_id


def _feedback_rows(engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM feedback")).scalar_one())


def _sign(secret: str, message: str) -> str:
    mac = hmac.new(secret.encode(), message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def _rotated(grace_s: float = GRACE_S) -> dict[str, Any]:
    expires = datetime.fromtimestamp(START + grace_s, UTC).isoformat()
    previous = [
        {"key_id": "2026-11", "secret_env": "FEEDBACK_SECRET_2026_11", "expires_at": expires}
    ]
    return _auth("2026-12", previous)


ENV = {"FEEDBACK_SECRET_2026_11": OLD}


def test_forged_wrong_request_replayed_and_expired_tokens(engine):
    clock = Clock()
    http = _gateway(engine, NEW, _auth("2026-12"), clock)
    answer, other = _answer(http), _answer(http)
    token = answer["feedback_token"]
    assert _key_id(token) == "2026-12"
    head, sig = token.rsplit(".", 1)
    forged = {
        "another signature": f"{head}.{'A' * len(sig)}",
        "signed with another secret": f"{head}.{_sign('not-our-secret-0123456789', head)}",
        "a later expiry": ".".join([*head.split(".")[:3], str(int(START + 10 * TTL_S)), sig]),
        "an unknown key id": token.replace("v2.2026-12.", "v2.2026-10.", 1),
        "no key id": "v1." + ".".join(token.split(".")[2:]),
    }
    for what, bad in forged.items():
        resp = _rate(http, answer, feedback_token=bad)
        assert resp.status_code == 401, (what, resp.text)
    wrong = _rate(http, answer, request_id=other["request_id"])  # a token for another answer
    assert wrong.status_code == 401 and "another request" in wrong.json()["error"]["message"]
    assert _feedback_rows(engine) == 0

    first, replay = _rate(http, answer), _rate(http, answer)
    assert first.status_code == replay.status_code == 200
    assert (first.json()["duplicate"], replay.json()["duplicate"]) == (False, True)
    assert _feedback_rows(engine) == 1  # stored once

    clock.now = START + TTL_S + 1
    expired = _rate(http, other)
    assert expired.status_code == 403, expired.text
    assert "expired" in expired.json()["error"]["message"]
    assert _feedback_rows(engine) == 1


def test_a_rotated_secret_verifies_its_tokens_until_its_grace_period_ends(engine):
    clock = Clock()
    before = _gateway(engine, OLD, _auth("2026-11"), clock)
    old_answers = [_answer(before) for _ in range(3)]
    assert {_key_id(a["feedback_token"]) for a in old_answers} == {"2026-11"}

    after = _gateway(engine, NEW, _rotated(), clock, environ=ENV)
    new_answer = _answer(after)
    assert _key_id(new_answer["feedback_token"]) == "2026-12"  # new tokens: the current secret
    # a gateway not yet rotated does not know the new key
    assert _rate(before, new_answer).status_code == 401

    clock.now = START + GRACE_S - 1  # within the grace period
    within = _rate(after, old_answers[0])
    assert within.status_code == 200 and within.json()["duplicate"] is False
    replay = _rate(after, old_answers[0])
    assert replay.status_code == 200 and replay.json()["duplicate"] is True
    # an old token cannot be bent to the new key id or to another answer
    moved = old_answers[1]["feedback_token"].replace("v2.2026-11.", "v2.2026-12.", 1)
    assert _rate(after, old_answers[1], feedback_token=moved).status_code == 401
    assert _rate(after, old_answers[1], request_id=new_answer["request_id"]).status_code == 401

    clock.now = START + GRACE_S  # the grace period is over; the token itself is not expired
    late = _rate(after, old_answers[1])
    assert late.status_code == 403, late.text
    assert "retired" in late.json()["error"]["message"]
    assert _rate(after, new_answer).status_code == 200  # the current key's tokens still work

    # once the previous secret leaves the config, its tokens are unknown
    dropped = _gateway(engine, NEW, _auth("2026-12"), clock)
    assert _rate(dropped, old_answers[2]).status_code == 401
    assert _feedback_rows(engine) == 2


def test_a_previous_secret_whose_variable_is_unset_verifies_nothing(engine, caplog):
    clock = Clock()
    old_answer = _answer(_gateway(engine, OLD, _auth("2026-11"), clock))
    after = _gateway(engine, NEW, _rotated(), clock, environ={})
    assert "FEEDBACK_SECRET_2026_11 is not set" in caplog.text
    resp = _rate(after, old_answer)
    assert resp.status_code == 401 and "unknown key" in resp.json()["error"]["message"]


def test_tokens_from_before_key_ids_count_as_key_default():
    rid = uuid.uuid4()
    exp = int(START + TTL_S)
    legacy = f"v1.{rid}.{exp}.{_sign(OLD, f'v1.{rid}.{exp}')}"
    FeedbackTokens(OLD, TTL_S).verify(legacy, rid, now=START)  # before any rotation
    rotated = FeedbackTokens(
        NEW, TTL_S, key_id="2026-12", previous=[PreviousSecret("default", OLD, START + GRACE_S)]
    )
    rotated.verify(legacy, rid, now=START + GRACE_S - 1)
    with pytest.raises(TokenError) as err:
        rotated.verify(legacy, rid, now=START + GRACE_S)
    assert err.value.expired
    with pytest.raises(TokenError, match="unknown key"):
        FeedbackTokens(NEW, TTL_S, key_id="2026-12").verify(legacy, rid, now=START)


def test_rotation_config_is_checked():
    ok = parse_config(
        {
            "arms": [{"name": "a", "model": "a"}],
            "auth": {
                "feedback_tokens": {
                    "key_id": "k2",
                    "previous": [
                        {"key_id": "k1", "secret_env": "S1", "expires_at": "2026-12-08 00:00"}
                    ],
                }
            },
        }
    )
    (previous,) = ok.auth.feedback_tokens.previous
    assert previous.expires_at == datetime(2026, 12, 8, tzinfo=UTC)  # no offset: UTC
    for bad, message in (
        ({"key_id": "k.2"}, "key_id"),  # a dot would split the token
        ({"key_id": "k1", "previous": [{"key_id": "k1", "secret_env": "S", "expires_at": "2026-12-08T00:00:00Z"}]}, "distinct"),
        ({"previous": [{"key_id": "k1", "secret_env": "S"}]}, "expires_at"),
    ):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            parse_config({"arms": [{"name": "a", "model": "a"}], "auth": {"feedback_tokens": bad}})
    with pytest.raises(ValueError, match="at least 16"):
        FeedbackTokens(NEW, TTL_S, previous=[PreviousSecret("k1", "short", START)])
