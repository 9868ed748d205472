"""End to end on real Ray Serve and real Postgres, through real HTTP clients."""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest
from sqlalchemy import create_engine, text

from controlplane.tokens import FeedbackTokens
from tests.ray_fixtures import (
    ADMIN_KEY,
    BUDGET_TENANT,
    CHAT_KEY,
    FEEDBACK_KEY,
    READONLY_KEY,
    SECRET,
    wait_for,
)

pytestmark = pytest.mark.ray

CODE_PROMPT = [
    {
        "role": "user",
        "content": "Write a python function that sorts a list of ints and returns the sum.",
    }
]


@pytest.fixture(scope="module")
def client(deployed):
    return openai.OpenAI(base_url=deployed.api_url, api_key="unused", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def http(deployed):
    with httpx.Client(base_url=deployed.api_url, timeout=30) as c:
        yield c


def _chat(client, **kw):
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=CODE_PROMPT, **kw)
    return raw, raw.parse(), raw.http_response.json()["banditctl"]


_wait = wait_for


def _db_count(deployed, sql, **params) -> int:
    eng = create_engine(deployed.db_url)
    try:
        with eng.connect() as conn:
            return int(conn.execute(text(sql), params).scalar_one())
    finally:
        eng.dispose()


def test_openai_client_through_gateway_to_replay_backend(deployed, client):
    raw, completion, meta = _chat(client)
    arms = {a.name for a in deployed.config.arms}
    assert completion.model in arms and meta["arm"] == completion.model
    assert completion.choices[0].message.content.startswith(f"[{completion.model}]")
    assert completion.usage.total_tokens > 0
    assert raw.headers["x-banditctl-request-id"] == meta["request_id"]
    assert raw.headers["x-request-id"]  # Serve's correlation id, not the decision's
    health = httpx.get(f"{deployed.base_url}/healthz", timeout=30)
    assert health.status_code == 200, health.text
    loops = health.json()["loops"]
    assert {"decision_log_writer", "policy_refresher", "learner"} <= set(loops), loops
    assert all(r["healthy"] for r in loops.values()), loops
    assert raw.headers["x-banditctl-arm"] == meta["arm"]
    assert int(raw.headers["x-banditctl-policy-version"]) == meta["policy_version"] >= 1
    assert 0 < meta["propensity"] <= 1
    # the decision and the outcome land in Postgres through the batched writer
    rid = meta["request_id"]
    _wait(
        lambda: _db_count(deployed, "SELECT count(*) FROM outcomes WHERE request_id = :r", r=rid),
        what="outcome",
    )
    assert (
        _db_count(
            deployed,
            "SELECT count(*) FROM decisions WHERE request_id = :r AND arm_id = :a",
            r=rid,
            a=meta["arm"],
        )
        == 1
    )

    models = {m.id for m in client.models.list()}
    assert {"auto"} | arms <= models


def test_streaming_returns_the_same_answer_as_sse(client):
    stream = client.chat.completions.create(
        model="auto", messages=CODE_PROMPT, stream=True, extra_body={"metadata": {"replay_row": 3}}
    )
    parts = [c.choices[0].delta.content or "" for c in stream if c.choices]
    text_streamed = "".join(parts)
    full = client.chat.completions.create(
        model=text_streamed.split("]")[0].lstrip("["), messages=CODE_PROMPT,
        extra_body={"metadata": {"replay_row": 3}},
    )  # fmt: skip
    assert text_streamed and text_streamed == full.choices[0].message.content


def test_named_arm_route_is_served_by_that_arm(deployed, client):
    arm = deployed.config.arms[0].name
    for _ in range(3):
        r = client.chat.completions.create(model=arm, messages=CODE_PROMPT)
        assert r.model == arm


def test_feedback_changes_the_next_policy_version(deployed, client, http):
    before = http.get("/policies/current").json()
    metas = [_chat(client)[2] for _ in range(12)]
    for m in metas:
        r = http.post("/feedback", json={"request_id": m["request_id"], "quality": 1.0,
                                         "feedback_token": m["feedback_token"]})  # fmt: skip
        assert r.status_code == 200 and r.json()["duplicate"] is False
    after = _wait(
        lambda: (
            (p := http.get("/policies/current").json())["events_applied"]
            >= before["events_applied"] + 12
            and p
        ),
        what="a policy that learned the feedback",
    )
    assert after["version"] > before["version"]
    pulls = sum(a["pulls"] for a in after["arms"].values()) - sum(
        a["pulls"] for a in before["arms"].values()
    )
    assert pulls >= 12
    # gateways pick the new version up within the refresh bound
    _wait(lambda: http.get(f"{deployed.base_url}/healthz").json()["policy_version"] >= after["version"],
          timeout=10, what="gateway refresh")  # fmt: skip
    old = http.get(f"/policies/{before['version']}").json()
    assert old["version"] == before["version"]


def test_repeat_feedback_is_a_duplicate_counted_once(deployed, client, http):
    meta = _chat(client)[2]
    body = {
        "request_id": meta["request_id"],
        "rating": "up",
        "feedback_token": meta["feedback_token"],
    }
    assert http.post("/feedback", json=body).json()["duplicate"] is False
    again = http.post("/feedback", json=body)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert (
        _db_count(
            deployed, "SELECT count(*) FROM feedback WHERE request_id = :r", r=meta["request_id"]
        )
        == 1
    )


def test_feedback_in_three_lines_with_the_openai_sdk(client, http):
    # as in the README: the completion's own id and the token the SDK keeps in model_extra
    completion = client.chat.completions.create(model="auto", messages=CODE_PROMPT)
    token = completion.model_extra["banditctl"]["feedback_token"]
    r = http.post(
        "/feedback",
        json={"request_id": completion.id, "rating": "up", "feedback_token": token},
    )
    assert r.status_code == 200, r.text
    assert r.json()["request_id"] == completion.model_extra["banditctl"]["request_id"]


def test_feedback_bad_inputs(deployed, client, http):
    meta = _chat(client)[2]
    rid, token = meta["request_id"], meta["feedback_token"]
    _wait(
        lambda: _db_count(deployed, "SELECT count(*) FROM decisions WHERE request_id = :r", r=rid),
        what="decision",
    )
    key = {"Authorization": f"Bearer {FEEDBACK_KEY}"}

    r = http.post("/feedback", json={"request_id": str(uuid.uuid4()), "quality": 0.5}, headers=key)
    assert r.status_code == 404
    r = http.post(
        "/feedback", json={"request_id": rid, "quality": 0.5, "feedback_token": token + "x"}
    )
    assert r.status_code == 401
    r = http.post("/feedback", json={"request_id": rid, "quality": 0.5})
    assert r.status_code == 401
    expired = FeedbackTokens(SECRET, ttl_s=-10).issue(uuid.UUID(rid))
    r = http.post("/feedback", json={"request_id": rid, "quality": 0.5, "feedback_token": expired})
    assert r.status_code == 403
    other = _chat(client)[2]
    r = http.post(
        "/feedback",
        json={"request_id": rid, "quality": 0.5, "feedback_token": other["feedback_token"]},
    )
    assert r.status_code == 401
    r = http.post("/feedback", json={"request_id": rid, "quality": 0.5},
                  headers={"Authorization": "Bearer wrong"})  # fmt: skip
    assert r.status_code == 401
    r = http.post("/feedback", json={"request_id": rid, "quality": 0.5},
                  headers={"Authorization": f"Bearer {READONLY_KEY}"})  # fmt: skip
    assert r.status_code == 403
    r = http.post("/feedback", json={"request_id": rid, "quality": 1.5, "feedback_token": token})
    assert r.status_code == 422 and r.json()["error"]["param"] == "quality"
    r = http.post("/feedback", json={"request_id": rid, "rating": 9, "feedback_token": token})
    assert r.status_code == 422 and r.json()["error"]["param"] == "rating"
    r = http.post("/feedback", json={"request_id": "not-a-uuid", "quality": 0.5}, headers=key)
    assert r.status_code == 422 and r.json()["error"]["param"] == "request_id"
    assert _db_count(deployed, "SELECT count(*) FROM feedback WHERE request_id = :r", r=rid) == 0

    ok = http.post("/feedback", json={"request_id": rid, "rating": 4, "source": "stars"},
                   headers={"Authorization": f"Bearer {ADMIN_KEY}"})  # fmt: skip
    assert ok.status_code == 200
    assert (
        _db_count(
            deployed,
            "SELECT count(*) FROM feedback WHERE request_id = :r AND quality = 0.75",
            r=rid,
        )
        == 1
    )


def test_feedback_batch(client, http):
    metas = [_chat(client)[2] for _ in range(3)]
    items = [
        {"request_id": m["request_id"], "quality": 0.2, "feedback_token": m["feedback_token"]}
        for m in metas
    ]
    r = http.post("/feedback/batch", json={"items": items + items[:1]})
    assert r.status_code == 200
    assert [x["duplicate"] for x in r.json()["results"]] == [False, False, False, True]
    bad = http.post("/feedback/batch", json={"items": [{**items[0], "quality": -1}]})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "items[0].quality"


def test_chat_bad_inputs(http):
    r = http.post("/chat/completions", json={"model": "no-such-model", "messages": CODE_PROMPT})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    r = http.post("/chat/completions", json={"model": "auto", "messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"  # as OpenAI's
    r = http.post(
        "/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400


def test_a_keys_rate_limit_and_a_tenants_budget_through_serve(deployed, http):
    body = {"model": "auto", "messages": CODE_PROMPT}
    key = {"Authorization": f"Bearer {CHAT_KEY}"}
    served = [http.post("/chat/completions", json=body, headers=key) for _ in range(2)]
    assert [r.status_code for r in served] == [200, 200]
    r = http.post("/chat/completions", json=body, headers=key)
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_exceeded"
    assert r.json()["error"]["code"] == "requests_per_minute"
    assert 1 <= int(r.headers["retry-after"]) <= 30
    ids = [s.json()["banditctl"]["request_id"] for s in served]
    _wait(
        lambda: _db_count(deployed, "SELECT count(*) FROM decisions WHERE key_id = 'chat'") == 2,
        what="the key's two decisions",
    )
    assert _db_count(deployed, "SELECT count(*) FROM decisions WHERE key_id = 'chat' "
                     "AND request_id::text = ANY(:ids)", ids=ids) == 2  # fmt: skip

    # the first answer spends the budget, unless the learner already expects every arm to
    # cost more than it (once other tests have taught it): then the first is refused
    tenant = {**body, "metadata": {"tenant": BUDGET_TENANT}}
    statuses = []
    while not statuses or statuses[-1] == 200 and len(statuses) < 3:
        r = http.post("/chat/completions", json=tenant)
        statuses.append(r.status_code)
    assert statuses in ([429], [200, 429]), statuses
    assert r.json()["error"]["type"] == "budget_exceeded"
    assert r.json()["error"]["code"] == f"tenant:{BUDGET_TENANT}/day"
    assert 1 <= int(r.headers["retry-after"]) <= 24 * 3600
    [budget] = http.get("/stats").json()["budgets"]
    assert (budget["spent_usd"] > budget["usd"]) == (statuses[0] == 200)


def test_explain_scores_every_arm_without_serving(deployed, http):
    n_before = http.get("/stats").json()["gateway"]["requests"]
    r = http.post("/route/explain", json={"model": "auto", "messages": CODE_PROMPT})
    assert r.status_code == 200
    body = r.json()
    assert {a["arm"] for a in body["arms"]} == {a.name for a in deployed.config.arms}
    assert abs(sum(a["propensity"] for a in body["arms"]) - 1) < 1e-9
    assert body["chosen"] in {a["arm"] for a in body["arms"]}
    assert http.get("/stats").json()["gateway"]["requests"] == n_before


def _metric(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return float("nan")


def test_metrics_come_from_memory_and_policies_by_notify(deployed, client, http):
    metrics_url = f"{deployed.base_url}/metrics"
    metas = [_chat(client)[2] for _ in range(6)]
    for m in metas:
        http.post("/feedback", json={"request_id": m["request_id"], "quality": 0.9,
                                     "feedback_token": m["feedback_token"]}).raise_for_status()  # fmt: skip
    # the learner's credits reach /metrics through its handle; gateways hear of new
    # versions by NOTIFY (their 0.2 s poll is only the fallback)
    text = _wait(
        lambda: (
            (t := http.get(metrics_url).text)
            and _metric(t, "banditctl_learner_up") == 1
            and _metric(t, "banditctl_gateway_policy_updates_total", trigger="notify") >= 1
            and _metric(t, "banditctl_learner_feedback_wait_seconds_count") >= len(metas)
            and t
        ),
        timeout=60,
        what="learner figures (the ratings' waits among them) and a policy picked up by NOTIFY",
    )
    waited = _metric(text, "banditctl_learner_feedback_wait_seconds_count")
    assert _metric(text, "banditctl_learner_feedback_wait_seconds_bucket", le="+Inf") == waited
    assert _metric(text, "banditctl_learner_feedback_wait_seconds_sum") > 0
    assert _metric(text, "banditctl_gateway_policy_listener_connected") == 1
    assert _metric(text, "banditctl_policy_version") >= 1
    assert "banditctl_reward_events_total{" in text and "banditctl_reward_total{" in text
    assert _metric(text, "banditctl_decision_overhead_seconds_count") >= 6
    assert "banditctl_request_duration_seconds_bucket{" in text


def test_the_gateway_replica_tunes_its_garbage_collector(deployed, http):
    """The replica's collector as ``gateway.gc_threshold`` and ``gc_freeze`` set it (this
    test process keeps Python's: the figures are the replica's)."""
    import gc

    state = http.get(f"{deployed.base_url}/v1/stats").json()["process"]["gc"]
    assert state["threshold"][0] == deployed.config.gateway.gc_threshold != gc.get_threshold()[0]
    assert state["threshold"][1:] == list(gc.get_threshold()[1:])  # the older ones: Python's
    assert state["frozen"] > 10_000  # Ray, Serve and the app, frozen once started
    assert len(state["collections"]) == 3


def test_learner_replica_killed_midstream_resumes_exactly_once(deployed, client, http):
    import ray

    def traffic(n: int) -> list[str]:
        ids = []
        for _ in range(n):
            m = _chat(client)[2]
            http.post("/feedback", json={"request_id": m["request_id"], "quality": 0.6,
                                         "feedback_token": m["feedback_token"]}).raise_for_status()  # fmt: skip
            ids.append(m["request_id"])
        return ids

    ids = traffic(15)
    replicas = [
        a for a in ray.util.list_named_actors(all_namespaces=True) if "LearnerService" in a["name"]
    ]
    assert len(replicas) == 1
    ray.kill(
        ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True
    )
    ids += traffic(15)  # served while the learner is down: nothing waits on it

    sql_new = "SELECT count(*) FROM decisions WHERE credit_seq IS NOT NULL AND request_id = ANY(CAST(:ids AS uuid[]))"

    def settled():
        snap = http.get("/policies/current").json()
        credited = _db_count(
            deployed, "SELECT count(*) FROM decisions WHERE credit_seq IS NOT NULL"
        )
        distinct = _db_count(
            deployed,
            "SELECT count(DISTINCT credit_seq) FROM decisions WHERE credit_seq IS NOT NULL",
        )
        new = _db_count(deployed, sql_new, ids=ids)
        return new == len(ids) and snap["events_applied"] == credited == distinct

    _wait(settled, timeout=120, what="the restarted learner to apply every event once")
    health = http.get(f"{deployed.base_url}/healthz")
    assert health.status_code == 200, health.text  # the new learner replica reports healthy
    assert health.json()["loops"]["learner"]["state"] == "learning"


def test_pool_streams_chunks_through_a_serve_handle(deployed):
    from ray import serve

    from controlplane.cli.launch import APP_NAME
    from deployments.pool import pool_name

    arm = deployed.config.arms[0]
    handle = serve.get_deployment_handle(pool_name(arm.model), app_name=APP_NAME)
    body = {"messages": CODE_PROMPT}
    chunks = list(handle.options(stream=True).generate_stream.remote(arm.name, body))
    *texts, last = chunks
    assert len(texts) >= 2 and all(c.text and c.usage is None for c in texts)
    assert last.usage is not None and last.usage.completion_tokens > 0
    whole = handle.generate.remote(arm.name, body).result(timeout_s=30)
    assert "".join(c.text for c in texts) == whole["text"]
