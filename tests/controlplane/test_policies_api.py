"""``/v1/policies`` after retention compacted old versions (no Ray): every version is
still listed by time with its event counts, and a rollback to a compacted one is a 409."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi.testclient import TestClient

from controlplane.api import create_app
from controlplane.config import ApiKey
from controlplane.gateway_core import GatewayCore
from controlplane.learner_loop import LearnerLoop
from controlplane.tokens import FeedbackTokens
from feedback.repositories import snapshots
from tests.controlplane.learning import learning_config, write_traffic

ADMIN = "admin-key-policies"


async def _no_pool(_arm: str, _body: dict) -> dict:
    raise AssertionError("no completion in these tests")


def test_compacted_versions_are_listed_and_refuse_a_rollback(engine, monkeypatch):
    monkeypatch.setenv("BANDITCTL_POLICIES_ADMIN", ADMIN)
    keys = (ApiKey(name="admin", key_env="BANDITCTL_POLICIES_ADMIN", scopes=("admin",)),)
    cfg = learning_config().model_copy(update={"api_keys": keys})
    write_traffic(engine, cfg, 21)
    loop = LearnerLoop(engine, cfg, clock=lambda: datetime.now(UTC))
    loop.start()
    loop.run_until_idle()
    loop.stop()
    assert loop.version >= 4
    with engine.begin() as conn:  # decisions were made with version 1 only
        plan = snapshots.prune_snapshots(conn, now=datetime.now(UTC), keep_served_s=0, keep_last=2)
    assert plan.compact == tuple(range(1, loop.version - 1))

    core = GatewayCore(cfg, engine, _no_pool, FeedbackTokens("unit-secret-0123456789", 60))
    http = TestClient(create_app(core, start_background=False))
    listed = http.get("/v1/policies").json()["versions"]
    assert [v["version"] for v in listed] == list(range(loop.version, 0, -1))
    assert [v["compacted"] for v in listed] == [False, False] + [True] * (loop.version - 2)
    assert all(v["events_applied"] >= 0 and v["created_at"] for v in listed)
    one = http.get("/v1/policies/2").json()  # its summary is still there
    assert one["compacted"] is True and one["arms"]

    admin = {"Authorization": f"Bearer {ADMIN}"}
    r = http.post("/v1/policies/2/rollback", headers=admin)
    assert r.status_code == 409
    err = r.json()["error"]
    assert err["type"] == "policy_compacted" and err["param"] == "version"
    assert "version 2 was compacted" in err["message"]
    with engine.connect() as conn:
        assert snapshots.latest_version(conn) == loop.version  # nothing published
    kept = loop.version - 1
    r = http.post(f"/v1/policies/{kept}/rollback", headers=admin)
    assert r.status_code == 200 and r.json()["rolled_back_to"] == kept
