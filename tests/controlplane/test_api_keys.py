"""API keys on chat: the chat scope, hashed keys, open mode, and no key text stored
(real Postgres, no Ray)."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import text

from controlplane.api.auth import ApiKeys
from controlplane.config import ApiKey, ConfigError
from feedback.models import metadata
from tests.controlplane.gatekeeping import config, gateway

CHAT, FEEDBACK = "sk-chat-0123456789abcdef", "sk-feedback-0123456789abcdef"
HASHED = "sk-hashed-0123456789abcdef"


@pytest.fixture
def keys_env(monkeypatch):
    monkeypatch.setenv("BANDITCTL_UNIT_CHAT", CHAT)
    monkeypatch.setenv("BANDITCTL_UNIT_FEEDBACK", FEEDBACK)
    return [
        {"name": "chatter", "key_env": "BANDITCTL_UNIT_CHAT", "scopes": ["chat", "feedback"]},
        {"name": "rater", "key_env": "BANDITCTL_UNIT_FEEDBACK", "scopes": ["feedback"]},
        {
            "name": "hashed",
            "key_sha256": hashlib.sha256(HASHED.encode()).hexdigest(),
            "scopes": ["chat"],
        },
    ]


def _bearer(key):
    return {"Authorization": f"Bearer {key}"}


def _error(resp, status, kind, code):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["type"], err["code"]) == (kind, code), err
    return err


def test_chat_needs_a_key_with_the_chat_scope(engine, keys_env):
    gw = gateway(engine, config(api_keys=keys_env))
    with gw.http as http:
        _error(gw.chat(), 401, "authentication_error", "invalid_api_key")
        _error(gw.chat("sk-not-a-key"), 401, "authentication_error", "invalid_api_key")
        err = _error(gw.chat(FEEDBACK), 403, "authentication_error", "insufficient_scope")
        assert "chat scope" in err["message"]
        explain = {"messages": [{"role": "user", "content": "hi"}]}
        for call in (
            lambda **kw: http.get("/v1/models", **kw),
            lambda **kw: http.post("/v1/route/explain", json=explain, **kw),
        ):
            _error(call(), 401, "authentication_error", "invalid_api_key")
            _error(
                call(headers=_bearer(FEEDBACK)), 403, "authentication_error", "insufficient_scope"
            )
            ok = call(headers=_bearer(CHAT))
            assert ok.status_code == 200, ok.text
        assert gw.decisions() == []  # nothing refused was logged

        resp = gw.chat(CHAT)
        assert resp.status_code == 200, resp.text
        assert resp.json()["model"] == "dear"
    [row] = gw.decisions()
    assert row["key_id"] == "chatter"
    assert str(row["request_id"]) == resp.json()["banditctl"]["request_id"]
    # the key itself is nowhere in the database: every row of every table, as text
    with engine.connect() as conn:
        for table in metadata.tables:
            dump = " ".join(r[0] for r in conn.execute(text(f"SELECT t::text FROM {table} t")))
            assert CHAT not in dump and FEEDBACK not in dump, table


def test_a_key_given_as_its_sha256_works(engine, keys_env):
    gw = gateway(engine, config(api_keys=keys_env))
    assert HASHED not in repr(gw.http.app.state.api_keys.__dict__)  # only digests are kept
    with gw.http:
        assert gw.chat(HASHED).status_code == 200
        _error(gw.chat(HASHED.upper()), 401, "authentication_error", "invalid_api_key")
    assert [r["key_id"] for r in gw.decisions()] == ["hashed"]


def test_feedback_only_key_still_posts_feedback(engine, keys_env):
    gw = gateway(engine, config(api_keys=keys_env))
    with gw.http as http:
        rid = gw.chat(CHAT).json()["id"]
        gw.decisions()
        fb = {"request_id": rid, "rating": "up"}
        r = http.post("/v1/feedback", json=fb, headers=_bearer(FEEDBACK))
        assert r.status_code == 200, r.text
        r = http.post("/v1/feedback", json=fb, headers=_bearer("sk-nope"))
        _error(r, 401, "authentication_error", "invalid_api_key")


def test_open_chat_serves_anyone_and_still_names_known_keys(engine, keys_env):
    gw = gateway(engine, config(api_keys=keys_env, auth={"open_chat": True}))
    with gw.http as http:
        assert gw.chat().status_code == 200
        assert gw.chat("sk-whatever-an-sdk-sends").status_code == 200
        assert gw.chat(FEEDBACK).status_code == 200
        assert gw.chat(CHAT).status_code == 200
        assert http.get("/v1/models").status_code == 200
    assert [r["key_id"] for r in gw.decisions()] == [None, None, "rater", "chatter"]


def test_key_config_is_checked():
    with pytest.raises(ValueError, match="exactly one of key_env, key_sha256"):
        ApiKey(name="k", scopes=("chat",))
    with pytest.raises(ValueError, match="exactly one of key_env, key_sha256"):
        ApiKey(name="k", key_env="E", key_sha256="ab" * 32)
    with pytest.raises(ValueError, match="key_sha256"):
        ApiKey(name="k", key_sha256="not-hex")
    with pytest.raises(ConfigError, match="API key names must be unique"):
        config(api_keys=[{"name": "a", "key_env": "A"}, {"name": "a", "key_env": "B"}])
    same = [
        ApiKey(name="a", key_env="A"),
        ApiKey(name="b", key_sha256=hashlib.sha256(b"k").hexdigest()),
    ]
    with pytest.raises(ValueError, match="same key as another"):
        ApiKeys(same, environ={"A": "k"})
    assert ApiKeys(same[:1], environ={}).lookup("k") is None  # an unset variable: no key
