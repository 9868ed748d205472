"""Request ids are the server's: a client's ``x-request-id`` is kept only to correlate,
so requests that reuse one keep their own decisions, and feedback reaches a decision only
by its own id and token (real Postgres, HTTP through the app)."""

from __future__ import annotations

import uuid

from sqlalchemy import text

from tests.controlplane.gatekeeping import config, gateway


def test_two_requests_with_one_client_id_keep_two_decisions(engine):
    gw = gateway(engine, config(auth={"open_chat": True}))
    shared = "client-id-42"
    with gw.http:
        answers = [
            gw.http.post(
                "/v1/chat/completions",
                json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
                headers={"x-request-id": shared},
            )
            for _ in range(2)
        ]
        plain = gw.chat()
    for resp in answers:
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-request-id"] == shared  # echoed for correlation
    ids = [r.json()["banditctl"]["request_id"] for r in answers]
    assert ids[0] != ids[1] and shared not in ids
    for resp, rid in zip(answers, ids, strict=True):
        assert resp.headers["x-banditctl-request-id"] == rid
        uuid.UUID(rid)  # generated here
    assert plain.headers["x-request-id"] == plain.json()["banditctl"]["request_id"]
    rows = {str(r["request_id"]): r for r in gw.decisions()}
    assert set(ids) <= set(rows) and len(rows) == 3
    assert [rows[i]["client_request_id"] for i in ids] == [shared, shared]
    assert rows[plain.json()["banditctl"]["request_id"]]["client_request_id"] is None


def test_a_client_cannot_pick_the_id_of_a_later_request(engine):
    """Sending a UUID as x-request-id does not make it the decision's id, so feedback
    posted on that UUID ahead of time reaches nothing."""
    gw = gateway(engine, config(auth={"open_chat": True}))
    picked = str(uuid.uuid4())
    with gw.http as http:
        resp = http.post(
            "/v1/chat/completions",
            json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-request-id": picked},
        )
        assert resp.status_code == 200, resp.text
        rid = resp.json()["banditctl"]["request_id"]
        assert rid != picked
        token = resp.json()["banditctl"]["feedback_token"]
        # the answer's token is for its own id only
        early = http.post(
            "/v1/feedback", json={"request_id": picked, "quality": 1.0, "feedback_token": token}
        )
        assert early.status_code == 401, early.text
        ok = http.post(
            "/v1/feedback", json={"request_id": rid, "quality": 1.0, "feedback_token": token}
        )
        assert ok.status_code == 200, ok.text
    assert gw.core.writer.flush()
    with engine.connect() as conn:
        assert (
            conn.execute(
                text("SELECT count(*) FROM decisions WHERE request_id = :r"), {"r": picked}
            ).scalar()
            == 0
        )
        assert [str(r[0]) for r in conn.execute(text("SELECT request_id FROM feedback"))] == [rid]
