"""Feedback while the database is away: 503 with ``Retry-After`` (nothing stored, the
client retries), never 500; every feedback answered 200 is stored (real Postgres whose
connections are killed, a real HTTP client on loopback)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine, text

from controlplane.api import create_app
from controlplane.gateway_core import GatewayCore
from controlplane.learner_loop import arm_records
from controlplane.tokens import FeedbackTokens
from feedback.repositories import arms as arms_repo
from tests.controlplane.gatekeeping import config, stub_pool
from tests.reliability.faults import kill, tagged_engine
from tests.reliability.served import served

pytestmark = pytest.mark.reliability

TOKENS = FeedbackTokens("outage-secret-0123456789", 600)


def test_feedback_with_the_database_away_answers_503_with_retry_after():
    dead = create_engine(
        "postgresql+psycopg://app:s3cret@127.0.0.1:1/gone", connect_args={"connect_timeout": 2}
    )
    core = GatewayCore(config(auth={"open_chat": True}), dead, stub_pool, TOKENS, listen=False)
    import uuid

    rid = uuid.uuid4()
    item = {"request_id": str(rid), "quality": 1.0, "feedback_token": TOKENS.issue(rid)}
    with served(create_app(core, start_background=False)) as http:
        answers = [
            http.post("/v1/feedback", json=item),
            http.post("/v1/feedback/batch", json={"items": [item]}),
            http.get("/v1/policies/current"),
            http.get("/v1/policies"),
        ]
        chat = http.post(
            "/v1/chat/completions",
            json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
        )
    for resp in answers:
        assert resp.status_code == 503, resp.text
        assert resp.headers["retry-after"] == "5"
        assert resp.json()["error"]["type"] == "database_unavailable"
        assert "s3cret" not in resp.text and "127.0.0.1" not in resp.text
    assert chat.status_code == 200  # chat never waits on the database: its log is buffered


def test_feedback_under_load_while_connections_are_killed_is_200_or_503(engine, db_url):
    eng, app = tagged_engine(db_url, pool_size=4)
    cfg = config(auth={"open_chat": True})
    with engine.begin() as conn:
        arms_repo.upsert_arms(conn, arm_records(cfg))
    core = GatewayCore(cfg, eng, stub_pool, TOKENS, listen=False)
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    with served(create_app(core)) as http:
        metas = [
            http.post("/v1/chat/completions", json=body).json()["banditctl"] for _ in range(80)
        ]
        assert core.writer.flush()
        stop = threading.Event()
        killed = []

        def killer():
            while not stop.is_set():
                killed.append(kill(engine, app))
                time.sleep(0.03)

        def post(meta):
            return http.post(
                "/v1/feedback",
                json={
                    "request_id": meta["request_id"],
                    "feedback_token": meta["feedback_token"],
                    "quality": 0.5,
                },
            )

        t = threading.Thread(target=killer)
        t.start()
        try:
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(post, metas))
        finally:
            stop.set()
            t.join()
        # the refused ones, retried once the database is back: all land
        retried = [post(m) for m, a in zip(metas, answers, strict=True) if a.status_code == 503]
    assert sum(killed) > 0
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 503}, statuses
    for a in answers:
        if a.status_code == 503:
            assert a.headers["retry-after"] and a.json()["error"]["type"] == "database_unavailable"
    assert all(r.status_code == 200 for r in retried)
    with engine.connect() as conn:
        stored = {str(r[0]) for r in conn.execute(text("SELECT request_id FROM feedback"))}
    assert stored == {m["request_id"] for m in metas}  # every 200 stored, once
    eng.dispose()
