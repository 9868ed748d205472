"""One feedback row per answer for a token, whatever its ``source``; per (answer, source)
for a feedback key (real Postgres, HTTP through the app)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import text

from tests.controlplane.gatekeeping import config, gateway

KEY = "sk-rater-0123456789abcdef"


def _feedback_rows(engine):
    with engine.connect() as conn:
        return [
            tuple(r) for r in conn.execute(text("SELECT source, quality FROM feedback ORDER BY id"))
        ]


def test_a_token_stores_one_row_whatever_the_source(engine):
    gw = gateway(engine, config(auth={"open_chat": True}))
    with gw.http as http:
        meta = gw.chat().json()["banditctl"]
        base = {"request_id": meta["request_id"], "feedback_token": meta["feedback_token"]}
        answers = [
            http.post("/v1/feedback", json={**base, "quality": q, "source": s})
            for q, s in ((0.9, "user"), (0.1, "judge"), (0.2, "other"), (0.3, "user"))
        ]
        batch = http.post(
            "/v1/feedback/batch", json={"items": [{**base, "quality": 0.0, "source": "batch"}]}
        )
    assert [a.status_code for a in answers] == [200] * 4
    assert [a.json()["duplicate"] for a in answers] == [False, True, True, True]
    assert batch.status_code == 200 and batch.json()["results"][0]["duplicate"] is True
    assert _feedback_rows(engine) == [("user", 0.9)]


def test_concurrent_posts_of_one_token_store_one_row(engine):
    gw = gateway(engine, config(auth={"open_chat": True}))
    with gw.http as http:
        meta = gw.chat().json()["banditctl"]
        base = {"request_id": meta["request_id"], "feedback_token": meta["feedback_token"]}

        def post(i):
            return http.post("/v1/feedback", json={**base, "quality": 0.5, "source": f"s{i}"})

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, range(16)))
    assert all(a.status_code == 200 for a in answers)
    assert sum(not a.json()["duplicate"] for a in answers) == 1
    assert len(_feedback_rows(engine)) == 1


def test_a_feedback_key_keeps_one_row_per_source(engine, monkeypatch):
    monkeypatch.setenv("BANDITCTL_UNIT_RATER", KEY)
    keys = [{"name": "rater", "key_env": "BANDITCTL_UNIT_RATER", "scopes": ["feedback"]}]
    gw = gateway(engine, config(auth={"open_chat": True}, api_keys=keys))
    with gw.http as http:
        rid = gw.chat().json()["banditctl"]["request_id"]
        assert gw.core.writer.flush()
        auth = {"Authorization": f"Bearer {KEY}"}
        answers = [
            http.post(
                "/v1/feedback", json={"request_id": rid, "quality": q, "source": s}, headers=auth
            )
            for q, s in ((0.9, "user"), (0.1, "judge"), (0.3, "user"))
        ]
    assert [a.json()["duplicate"] for a in answers] == [False, False, True]
    assert _feedback_rows(engine) == [("user", 0.9), ("judge", 0.1)]
