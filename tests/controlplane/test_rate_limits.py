"""Per-key rate limits through the HTTP API on a fake clock (real Postgres, no Ray)."""

from __future__ import annotations

import math

import pytest

from controlplane.limits import TokenBucket, estimate_prompt_tokens
from tests.controlplane.gatekeeping import PROMPT_TOKENS, TOKENS, config, gateway

KEY = "sk-limited-0123456789abcdef"


def _keyed(monkeypatch, **limits):
    monkeypatch.setenv("BANDITCTL_UNIT_LIMITED", KEY)
    return [{"name": "evals", "key_env": "BANDITCTL_UNIT_LIMITED", "scopes": ["chat"], **limits}]


def _refused(resp, code):
    assert resp.status_code == 429, resp.text
    err = resp.json()["error"]
    assert (err["type"], err["code"], err["param"]) == ("rate_limit_exceeded", code, None)
    assert code in err["message"] and "evals" in err["message"]
    return int(resp.headers["retry-after"])


def test_the_request_over_the_limit_is_refused_and_not_logged(engine, monkeypatch):
    gw = gateway(engine, config(api_keys=_keyed(monkeypatch, requests_per_minute=3)))
    with gw.http:
        for _ in range(3):
            assert gw.chat(KEY).status_code == 200
        gw.clocks.advance(5)
        assert _refused(gw.chat(KEY), "requests_per_minute") == 15  # one request per 20 s
        assert len(gw.decisions()) == 3
        gw.clocks.advance(14)
        assert _refused(gw.chat(KEY), "requests_per_minute") == 1
        gw.clocks.advance(1)
        assert gw.chat(KEY).status_code == 200
        assert gw.chat(KEY).status_code == 429
    rows = gw.decisions()
    assert len(rows) == 4 and {r["key_id"] for r in rows} == {"evals"}


def test_the_token_limit_counts_the_real_usage(engine, monkeypatch):
    # room for two requests' real usage; each is admitted on its (smaller) prompt estimate
    tpm = 2 * TOKENS + PROMPT_TOKENS - 1
    gw = gateway(engine, config(api_keys=_keyed(monkeypatch, tokens_per_minute=tpm)))
    with gw.http:
        assert gw.chat(KEY).status_code == 200
        assert gw.chat(KEY).status_code == 200
        # left: PROMPT_TOKENS - 1, one short of the next estimate, refilled at tpm / 60 per s
        wait = _refused(gw.chat(KEY), "tokens_per_minute")
        assert wait == math.ceil(1 / (tpm / 60))
        gw.clocks.advance(wait)
        assert gw.chat(KEY).status_code == 200
    assert len(gw.decisions()) == 3


def test_keys_are_limited_apart_and_unlimited_keys_are_not(engine, monkeypatch):
    monkeypatch.setenv("BANDITCTL_UNIT_FREE", "sk-free-0123456789abcdef")
    keys = [
        *_keyed(monkeypatch, requests_per_minute=1),
        {"name": "free", "key_env": "BANDITCTL_UNIT_FREE", "scopes": ["chat"]},
    ]
    gw = gateway(engine, config(api_keys=keys))
    with gw.http:
        assert gw.chat(KEY).status_code == 200
        assert gw.chat(KEY).status_code == 429
        for _ in range(5):
            assert gw.chat("sk-free-0123456789abcdef").status_code == 200


def test_token_bucket():
    b = TokenBucket(60.0, 1.0, now=0.0)
    assert b.wait_s(60, 0.0) == 0.0
    b.take(70, 0.0)  # a request's real usage may overdraw the bucket
    assert b.available(0.0) == -10.0
    assert b.wait_s(5, 0.0) == pytest.approx(15.0)
    assert b.wait_s(500, 0.0) == pytest.approx(70.0)  # more than it holds: wait for a full one
    b.take(-100, 1.0)  # giving back never overfills
    assert b.available(1.0) == 60.0


def test_prompt_estimate():
    body = {"messages": [{"role": "user", "content": "x" * 400}]}
    assert estimate_prompt_tokens(body) == 104
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 400}]}]}
    assert estimate_prompt_tokens(parts) == 104
    assert estimate_prompt_tokens({"messages": []}) == 1
