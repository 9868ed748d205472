"""Dashboard JSON and the admin-only rollback on a real database (no Ray); ``/metrics``
has its own tests (``test_metrics.py``)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from controlplane.api import create_app
from controlplane.config import ApiKey
from controlplane.gateway_core import GatewayCore
from controlplane.learner_loop import LearnerLoop
from controlplane.tokens import FeedbackTokens
from feedback.repositories import reports, snapshots
from tests.controlplane.learning import learning_config, write_traffic

ADMIN, FEEDBACK = "admin-key-unit", "fb-key-unit"


async def _no_pool(_arm: str, _body: dict) -> dict:
    raise AssertionError("no completion in these tests")


@pytest.fixture
def client(engine, monkeypatch):
    monkeypatch.setenv("BANDITCTL_UNIT_ADMIN", ADMIN)
    monkeypatch.setenv("BANDITCTL_UNIT_FEEDBACK", FEEDBACK)
    keys = (
        ApiKey(name="admin", key_env="BANDITCTL_UNIT_ADMIN", scopes=("admin",)),
        ApiKey(name="fb", key_env="BANDITCTL_UNIT_FEEDBACK", scopes=("feedback",)),
    )
    cfg = learning_config().model_copy(update={"api_keys": keys})
    core = GatewayCore(cfg, engine, _no_pool, FeedbackTokens("unit-secret-0123456789", 60))
    return TestClient(create_app(core, start_background=False)), cfg


def _learned(engine, cfg) -> LearnerLoop:
    write_traffic(engine, cfg, 11)
    loop = LearnerLoop(engine, cfg, clock=lambda: datetime.now(UTC))
    loop.start()
    loop.run_until_idle()
    loop.stop()
    return loop


def test_dashboard_page_and_assets_are_served_without_a_cdn(client):
    http, _ = client
    page = http.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/dashboard/static/dashboard.js" in page.text and "https://" not in page.text
    js = http.get("/dashboard/static/dashboard.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert "https://" not in js.text
    missing = http.get("/dashboard/static/../api.py")
    assert missing.status_code == 404
    assert http.get("/dashboard/static/nope.js").json()["error"]["type"] == "not_found"


def test_empty_database_gives_empty_figures(client):
    http, _ = client
    o = http.get("/v1/dashboard/overview").json()
    assert o["requests"] == 0 and o["mean_reward"] is None and o["best_arm"] is None
    assert o["exploration"]["rate"] is None and o["learner_lag"]["events_behind"] == 0
    assert http.get("/v1/dashboard/learning").json()["buckets"] == []
    assert http.get("/v1/dashboard/feedback").json()["items"] == []
    assert http.get("/v1/dashboard/residency").json() == {"replicas": [], "totals": []}
    assert "banditctl_policy_version 0.0" in http.get("/metrics").text


def test_overview_matches_the_database(client, engine):
    http, cfg = client
    _learned(engine, cfg)
    o = http.get("/v1/dashboard/overview").json()
    with engine.connect() as conn:
        stats = reports.outcome_stats_by_arm(conn, cfg.objective)
        counts = reports.table_counts(conn)
    assert o["requests"] == counts["decisions"] == 240
    assert o["feedback"] == counts["feedback"]
    assert o["rewarded"] == sum(a["rewarded"] for a in stats) > 0
    best = max((a for a in stats if a["rewarded"] >= 10), key=lambda a: a["mean_reward"])
    assert o["best_arm"] == best["arm"]
    mean_cost = sum(a["total_cost_usd"] for a in stats) / sum(a["ok"] for a in stats)
    assert o["cost_saved_usd"] == pytest.approx(best["mean_cost_usd"] - mean_cost)
    assert 0.0 <= o["exploration"]["rate"] <= 1.0 and o["exploration"]["method"] == "greedy"
    curve = http.get("/v1/dashboard/learning", params={"buckets": 5}).json()["buckets"]
    assert 1 <= len(curve) <= 5 and sum(b["n"] for b in curve) == 240
    fb = http.get("/v1/dashboard/feedback", params={"limit": 7}).json()["items"]
    assert len(fb) == 7 and all(f["arm_id"] for f in fb)


def test_rollback_needs_the_admin_scope(client, engine):
    http, cfg = client
    loop = _learned(engine, cfg)
    before = loop.version
    assert before >= 3
    url = "/v1/policies/2/rollback"
    r = http.post(url)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert http.post(url, headers={"Authorization": "Bearer nope"}).status_code == 401
    r = http.post(url, headers={"Authorization": f"Bearer {FEEDBACK}"})
    assert r.status_code == 403 and "admin" in r.json()["error"]["message"]
    with engine.connect() as conn:
        assert snapshots.latest_version(conn) == before  # nothing published
    r = http.post("/v1/policies/999/rollback", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 404 and "error" in r.json()
    r = http.post(url, headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200
    assert r.json() == {"version": before + 1, "rolled_back_to": 2, "reason": "rollback"}
    current = http.get("/v1/policies/current").json()
    assert current["version"] == before + 1 and current["reason"] == "rollback"
