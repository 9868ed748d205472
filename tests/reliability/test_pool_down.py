"""A pool with no replica to take a call (one crashed and restarts) fails its calls after
``gateway.pool_wait_s`` (:class:`PoolUnavailable`, raised by the Serve gateway) and its
arms are left out of decisions for ``gateway.pool_down_s``; the other arms keep
serving (real Postgres; the Serve side is in ``test_serve_faults.py``)."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import text

from controlplane.gateway_core import GatewayCore, PoolUnavailable, UpstreamError
from controlplane.learner_loop import arm_records
from controlplane.tokens import FeedbackTokens
from feedback.repositories import arms as arms_repo
from tests.controlplane.gatekeeping import BODY, config, stub_pool

pytestmark = pytest.mark.reliability

TOKENS = FeedbackTokens("pool-down-secret-0123456789", 60)


def test_an_unavailable_pool_is_left_out_until_its_time_is_up(engine, monkeypatch):
    # the fixed learner always picks "dear"; its pool takes no call
    cfg = config(gateway={"pool_down_s": 30.0})
    with engine.begin() as conn:
        arms_repo.upsert_arms(conn, arm_records(cfg))
    calls: list[str] = []

    async def pool(arm, body):
        calls.append(arm)
        if arm == "dear":
            raise PoolUnavailable("no replica of dear's pool took the call in 3 s")
        return await stub_pool(arm, body)

    clock = {"now": 1000.0}
    monkeypatch.setattr(time, "monotonic", lambda: clock["now"])
    core = GatewayCore(cfg, engine, pool, TOKENS, listen=False)

    async def run() -> list[str]:
        arms = []
        with pytest.raises(UpstreamError):  # no fallback configured: this request fails
            await core.complete(dict(BODY))
        for _ in range(3):  # the next ones go to the arm that is up
            arms.append((await core.complete(dict(BODY)))["model"])
        clock["now"] += 31.0  # time is up: "dear" is tried again
        with pytest.raises(UpstreamError):
            await core.complete(dict(BODY))
        return arms

    assert asyncio.run(run()) == ["cheap"] * 3
    assert calls == ["dear", "cheap", "cheap", "cheap", "dear"]
    assert core.writer.flush(timeout_s=30)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT d.arm_id, o.status FROM decisions d JOIN outcomes o USING (request_id) "
                "ORDER BY d.created_at"
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        ("dear", "error"),
        ("cheap", "ok"),
        ("cheap", "ok"),
        ("cheap", "ok"),
        ("dear", "error"),
    ]


def test_with_a_fallback_the_request_is_served_by_another_arm(engine):
    cfg = config(gateway={"fallbacks": 1})
    with engine.begin() as conn:
        arms_repo.upsert_arms(conn, arm_records(cfg))

    async def pool(arm, body):
        if arm == "dear":
            raise PoolUnavailable("no replica of dear's pool took the call in 3 s")
        return await stub_pool(arm, body)

    core = GatewayCore(cfg, engine, pool, TOKENS, listen=False)
    answer = asyncio.run(core.complete(dict(BODY)))
    assert answer["model"] == "cheap" and answer["banditctl"]["failed_arms"] == ["dear"]
