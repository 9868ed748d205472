"""What an anonymous caller can read: the dashboard's data (recent feedback, comments,
request ids) and the budgets need the read scope unless the config opens the dashboard;
``/metrics``, ``/v1/policies`` and ``/v1/stats`` hold no comment, request id, tenant or
key (real Postgres, HTTP through the app)."""

from __future__ import annotations

import pytest

from controlplane.cli.demo import demo_config
from tests.controlplane.gatekeeping import config, gateway

READER, CHATTER, ADMIN = (
    "sk-read-0123456789abcdef",
    "sk-chat-0123456789abcdef",
    "sk-adm-0123456789abcdef",
)
COMMENT = "my private comment about my medical question"
TENANT = "tenant-private-7"
DATA = ("overview", "routing", "learning", "feedback", "residency")


@pytest.fixture
def keys(monkeypatch):
    monkeypatch.setenv("BANDITCTL_T_READ", READER)
    monkeypatch.setenv("BANDITCTL_T_CHAT", CHATTER)
    monkeypatch.setenv("BANDITCTL_T_ADMIN", ADMIN)
    return [
        {"name": "reader", "key_env": "BANDITCTL_T_READ", "scopes": ["read"]},
        {"name": "chatter", "key_env": "BANDITCTL_T_CHAT", "scopes": ["chat"]},
        {"name": "ops", "key_env": "BANDITCTL_T_ADMIN", "scopes": ["admin"]},
    ]


def _bearer(key):
    return {"Authorization": f"Bearer {key}"}


def _served_with_feedback(gw):
    resp = gw.chat(CHATTER, metadata={"tenant": TENANT})
    assert resp.status_code == 200, resp.text
    meta = resp.json()["banditctl"]
    fb = gw.http.post(
        "/v1/feedback",
        json={"request_id": meta["request_id"], "feedback_token": meta["feedback_token"],
              "quality": 0.2, "comment": COMMENT},
    )  # fmt: skip
    assert fb.status_code == 200, fb.text
    assert gw.core.writer.flush()
    return meta["request_id"]


def test_dashboard_data_needs_the_read_scope(engine, keys):
    gw = gateway(engine, config(api_keys=keys, budgets=[{"tenant": TENANT, "usd": 5.0}]))
    with gw.http as http:
        rid = _served_with_feedback(gw)
        for name in DATA:
            path = f"/v1/dashboard/{name}"
            anon = http.get(path)
            assert anon.status_code == 401, (path, anon.text)
            assert rid not in anon.text and COMMENT not in anon.text
            assert http.get(path, headers=_bearer(CHATTER)).status_code == 403
            assert http.get(path, headers=_bearer("sk-unknown")).status_code == 401
            for key in (READER, ADMIN):
                assert http.get(path, headers=_bearer(key)).status_code == 200, path
        feedback = http.get("/v1/dashboard/feedback", headers=_bearer(READER)).text
        assert COMMENT in feedback and rid in feedback

        stats = http.get("/v1/stats")
        assert stats.status_code == 200 and stats.json()["budgets"] is None
        read = http.get("/v1/stats", headers=_bearer(READER)).json()["budgets"]
        assert [b["tenant"] for b in read] == [TENANT]

        # what stays open reveals no comment, request id, tenant or key
        for path in ("/metrics", "/v1/stats", "/v1/policies", "/v1/policies/current", "/healthz"):
            resp = http.get(path)
            assert resp.status_code in (200, 404), (path, resp.text)
            for secret in (COMMENT, rid, TENANT, READER, CHATTER, ADMIN):
                assert secret not in resp.text, (path, secret)
        explain = http.post(
            "/v1/route/explain", json={"messages": [{"role": "user", "content": "x"}]}
        )
        assert explain.status_code == 401  # chat is not open here


def test_an_open_dashboard_needs_no_key(engine):
    gw = gateway(engine, config(auth={"open_chat": True, "open_dashboard": True}))
    with gw.http as http:
        for name in DATA:
            assert http.get(f"/v1/dashboard/{name}").status_code == 200
        assert http.get("/v1/stats").json()["budgets"] == []


def test_the_demo_opens_chat_and_the_dashboard():
    auth = demo_config().auth
    assert auth.open_chat and auth.open_dashboard


def test_made_up_feedback_sources_do_not_grow_metrics_without_bound(engine):
    gw = gateway(engine, config(auth={"open_chat": True}))
    with gw.http as http:
        for i in range(60):
            meta = gw.chat().json()["banditctl"]
            http.post(
                "/v1/feedback",
                json={"request_id": meta["request_id"], "feedback_token": meta["feedback_token"],
                      "quality": 1.0, "source": f"src-{i}"},
            )  # fmt: skip
        text = http.get("/metrics").text
    series = [
        line for line in text.splitlines() if line.startswith("banditctl_feedback_received_total{")
    ]
    assert len(series) <= 33, len(series)
    assert 'source="other"' in text
