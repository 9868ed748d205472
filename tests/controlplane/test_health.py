"""``/healthz`` reports every background loop and answers 503 when one is dead or stuck;
``/v1/stats`` shows no database error text (real Postgres, real HTTP through the app)."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from controlplane.api import create_app
from controlplane.gateway_core import GatewayCore
from controlplane.learner_loop import arm_records
from controlplane.tokens import FeedbackTokens
from feedback.repositories import arms as arms_repo
from tests.controlplane.gatekeeping import config, stub_pool

SECRET = "unit-secret-0123456789"


def _app(engine, **kwargs):
    cfg = config()
    with engine.begin() as conn:
        arms_repo.upsert_arms(conn, arm_records(cfg))
    core = GatewayCore(cfg, engine, stub_pool, FeedbackTokens(SECRET, 60))
    return core, create_app(core, **kwargs)


def _wait_listening(http, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = http.get("/healthz").json()
        if body["loops"].get("policy_listener", {}).get("state") == "listening":
            return body
        time.sleep(0.05)
    raise AssertionError(body)


def test_healthz_reports_every_loop_and_turns_503_when_one_is_stuck_or_dead(engine):
    clock = {"t": 0.0}

    async def learner_status():
        return {"health": {"healthy": True, "problem": None, "alive": True, "state": "learning"}}

    core, app = _app(engine, learner_status=learner_status)
    with TestClient(app) as http:
        body = _wait_listening(http)
        assert body["ok"] is True
        assert set(body["loops"]) == {
            "decision_log_writer", "policy_refresher", "policy_listener", "learner",
        }  # fmt: skip
        for report in body["loops"].values():
            assert report["healthy"], report

        # the writer makes no progress for longer than it may: stuck
        core.writer.health._clock = lambda: clock["t"]
        core.writer.health.beat()
        clock["t"] = core.config.gateway.loop_stale_s + 1
        resp = http.get("/healthz")
        assert resp.status_code == 503
        writer = resp.json()["loops"]["decision_log_writer"]
        assert not writer["healthy"] and writer["problem"].startswith("stuck")
        core.writer.health.beat()
        assert http.get("/healthz").status_code == 200

        # a dead thread
        core.writer.health.alive = lambda: False
        resp = http.get("/healthz")
        assert resp.status_code == 503
        assert resp.json()["loops"]["decision_log_writer"]["problem"] == "dead"


def test_healthz_is_503_when_the_learner_is_unhealthy_or_unreachable(engine):
    answers = iter(
        [
            {"health": {"healthy": False, "problem": "stuck: no good turn for 90s", "alive": True}},
            RuntimeError("replica gone"),
        ]
    )

    async def learner_status():
        a = next(answers)
        if isinstance(a, Exception):
            raise a
        return a

    _core, app = _app(engine, start_background=False, learner_status=learner_status)
    with TestClient(app) as http:
        resp = http.get("/healthz")
        assert resp.status_code == 503
        assert resp.json()["loops"]["learner"]["problem"].startswith("stuck")
        resp = http.get("/healthz")
        assert resp.status_code == 503
        assert resp.json()["loops"]["learner"]["problem"] == "unreachable: RuntimeError"


def test_stats_does_not_show_database_error_text():
    # a database that refuses connections: nothing listens on port 1
    dead = create_engine(
        "postgresql+psycopg://nobody:hunter2@127.0.0.1:1/secretdb",
        connect_args={"connect_timeout": 2},
    )
    cfg = config()
    core = GatewayCore(cfg, dead, stub_pool, FeedbackTokens(SECRET, 60), listen=False)
    app = create_app(core, start_background=False)
    with TestClient(app) as http:
        resp = http.get("/v1/stats")
    assert resp.status_code == 200, resp.text
    assert resp.json()["tables"] == {"error": "OperationalError: database error"}
    for secret in ("hunter2", "secretdb", "nobody", "127.0.0.1", "Connection refused"):
        assert secret not in resp.text


def test_stats_count_task_names_that_share_a_slot_without_naming_them():
    dead = create_engine("postgresql+psycopg://nobody:x@127.0.0.1:1/none")
    cfg = config(featurizer={"dim": 24, "task_slots": 2, "tasks": ["alpha", "beta"]})
    core = GatewayCore(cfg, dead, stub_pool, FeedbackTokens(SECRET, 60), listen=False)
    for task in ("alpha", "secret-task-1", "secret-task-2", "secret-task-1"):
        core.featurizer.featurize({"messages": [{"role": "user", "content": "hi"}], "task": task})
    app = create_app(core, start_background=False)
    with TestClient(app) as http:
        resp = http.get("/v1/stats")
    assert resp.status_code == 200, resp.text
    got = resp.json()["featurizer"]
    # both slots hold a listed task: each other name shares one, on each of its requests
    assert got["task_slots"] == 2 and got["hashed_names"] == 2
    assert got["shared_requests"] == 3 and got["shared_names"] >= 3
    assert "secret-task" not in resp.text
