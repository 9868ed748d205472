"""``/metrics`` from memory, on a real database (no Ray): what each figure says, that it
agrees with the database, and that a scrape runs no query whose cost grows with the log."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import event

from controlplane.metrics import CachedFetch
from feedback.repositories import reports
from tests.controlplane.metrics_stack import Stack, chat, learned_stack, samples


@pytest.fixture
def stack(engine):
    return learned_stack(engine)


def test_metrics_expose_the_loop_from_memory(stack, engine):
    http, core, loop = stack.http, stack.core, stack.loop
    served = [chat(http).json()["banditctl"] for _ in range(12)]
    served += [chat(http, model="small").json()["banditctl"] for _ in range(3)]
    assert chat(http, fail=True).status_code == 502
    for m in served[:4]:
        r = http.post("/v1/feedback", json={"request_id": m["request_id"], "quality": 1,
                                            "feedback_token": m["feedback_token"]})  # fmt: skip
        assert r.status_code == 200
    http.post("/v1/feedback", json={"request_id": served[0]["request_id"], "quality": 1,
                                    "feedback_token": served[0]["feedback_token"]})  # fmt: skip
    assert http.post("/v1/feedback", json={"quality": 1}).status_code == 422
    assert core.writer.flush()

    text = http.get("/metrics").text
    got = samples(text)

    def v(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    # this replica's decisions, by arm and route; latency, decision overhead, TTFT
    by_pair: dict[tuple[str, str], int] = {}
    for m in served:
        by_pair[(m["arm"], m["route"])] = by_pair.get((m["arm"], m["route"]), 0) + 1
    for (arm, route), n in by_pair.items():  # the failed request adds one somewhere
        assert v("banditctl_decisions_total", arm=arm, route=route) - n in (0, 1)
    decided = sum(val for (name, _), val in got.items() if name == "banditctl_decisions_total")
    assert decided == 16  # the failed request was decided too
    assert v("banditctl_decision_overhead_seconds_count") == 16
    ok = sum(val for (n, lab), val in got.items()
             if n == "banditctl_request_duration_seconds_count" and ("status", "ok") in lab)  # fmt: skip
    errors = sum(val for (n, lab), val in got.items()
                 if n == "banditctl_request_duration_seconds_count" and ("status", "error") in lab)  # fmt: skip
    assert (ok, errors) == (15, 1)
    ttft = sum(
        val for (n, _), val in got.items() if n == "banditctl_time_to_first_token_seconds_count"
    )
    assert ttft == 15
    assert v("banditctl_gateway_requests_total") == 16 and v("banditctl_gateway_errors_total") == 1
    for name in ("fallbacks", "rate_limited", "budget_refusals"):
        assert v(f"banditctl_{name}_total") == 0

    # feedback stored by this replica, duplicates and refusals
    assert v("banditctl_feedback_received_total", source="user") == 4
    assert v("banditctl_feedback_duplicates_total") == 1
    assert v("banditctl_feedback_rejected_total", status="422") == 1

    # the decision log writer
    assert v("banditctl_decision_log_buffered") == 0
    assert v("banditctl_decision_log_rows_written_total", table="decisions") == 16
    assert v("banditctl_decision_log_rows_written_total", table="outcomes") == 16
    for name in ("retries", "rejected", "invalid"):
        assert v(f"banditctl_decision_log_{name}_total") == 0

    # the latest snapshot (one row by key) and the learner's own memory
    assert v("banditctl_policy_version") == loop.version
    assert v("banditctl_learner_events_applied_total") == loop.events_applied > 100
    assert v("banditctl_learner_up") == 1 and v("banditctl_learner_lag_events") == 0
    assert v("banditctl_learner_lag_seconds") == 0
    assert v("banditctl_gateway_policy_version") == 0  # never refreshed here
    with engine.connect() as conn:
        db = reports.reward_sums_by_arm(conn)
        stats = {a["arm"]: a for a in reports.arm_stats(conn, stack.cfg.objective)}
    assert sum(r["n"] for r in db) == loop.events_applied
    for r in db:  # what the learner counted is what the database says it credited
        assert v("banditctl_reward_events_total", arm=r["arm"], kind=r["kind"]) == r["n"]
        for c in ("quality", "energy_j", "latency_ms", "cost_usd"):
            assert v("banditctl_reward_component_total", arm=r["arm"], kind=r["kind"],
                     component=c) == pytest.approx(float(r[c]), rel=1e-9)  # fmt: skip
    for arm, a in stats.items():
        reward = sum(val for (n, lab), val in got.items()
                     if n == "banditctl_reward_total" and ("arm", arm) in lab)  # fmt: skip
        assert reward == pytest.approx(a["mean_reward"] * a["rewarded"], rel=1e-6)

    # the cache controller's totals
    assert v("banditctl_cache_controller_up") == 1
    assert v("banditctl_adapter_page_ins_total", replica="pool-a#0") == 3
    assert v("banditctl_adapter_residency_hits_total", replica="pool-a#0") == 7
    assert v("banditctl_adapter_residency_misses_total", replica="pool-a#0") == 2


def test_a_scrape_reads_one_row_by_key_whatever_the_log(stack, engine):
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args):
        statements.append(" ".join(statement.split()))

    event.listen(engine, "before_cursor_execute", record)
    try:
        assert stack.http.get("/metrics").status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", record)
    queries = [s for s in statements if not s.upper().startswith(("BEGIN", "ROLLBACK", "COMMIT"))]
    assert queries == [
        "SELECT version, watermark, events_applied, created_at FROM policy_snapshots "
        "ORDER BY version DESC LIMIT 1"
    ]


def test_a_learner_that_does_not_answer_leaves_the_rest(engine):
    calls = []

    async def slow() -> dict:
        calls.append(1)
        await asyncio.sleep(5)
        return {}

    async def broken() -> dict:
        raise ConnectionError("cache controller gone")

    s = Stack(engine, slow, broken)
    t0 = time.perf_counter()
    text = s.http.get("/metrics").text
    assert time.perf_counter() - t0 < 3  # the learner's 0.5 s, not its 5 s
    got = samples(text)
    assert got[("banditctl_learner_up", ())] == 0
    assert got[("banditctl_cache_controller_up", ())] == 0
    assert ("banditctl_policy_version", ()) in got  # the database still answers
    assert not any(n.startswith("banditctl_reward") for n, _ in got)
    assert not any(n.startswith("banditctl_adapter") for n, _ in got)
    s.http.get("/metrics")  # within a second: the failure is remembered, not asked again
    assert len(calls) == 1


def test_cached_fetch_asks_once_per_ttl():
    now = [0.0]
    calls = []

    async def fetch() -> dict:
        calls.append(now[0])
        return {"n": len(calls)}

    cached = CachedFetch(fetch, ttl_s=1.0, clock=lambda: now[0])

    async def run() -> list:
        out = [await cached.get()]
        now[0] = 0.5
        out.append(await cached.get())
        now[0] = 1.2
        out.append(await cached.get())
        return out

    assert asyncio.run(run()) == [{"n": 1}, {"n": 1}, {"n": 2}]
    assert calls == [0.0, 1.2]
