"""A full decision log buffer refuses requests with 503 and ``Retry-After``, never an
answered request without its outcome; a request whose client goes away mid-call still
logs an outcome (real Postgres, the app served on loopback)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from controlplane.api import create_app
from controlplane.gateway_core import GatewayCore
from controlplane.learner_loop import arm_records
from controlplane.tokens import FeedbackTokens
from feedback.repositories import arms as arms_repo
from tests.controlplane.gatekeeping import config, stub_pool
from tests.reliability.served import served

pytestmark = pytest.mark.reliability

BODY = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
TOKENS = FeedbackTokens("overload-secret-0123456789", 60)


def _rows(engine):
    with engine.connect() as conn:
        d = conn.execute(text("SELECT count(*) FROM decisions")).scalar_one()
        lone = conn.execute(
            text(
                "SELECT count(*) FROM decisions d LEFT JOIN outcomes o USING (request_id) "
                "WHERE o.request_id IS NULL"
            )
        ).scalar_one()
    return d, lone


def test_a_full_buffer_answers_503_with_retry_after_and_loses_no_outcome(engine):
    cfg = config(auth={"open_chat": True}, gateway={"log_buffer": 100})
    with engine.begin() as conn:
        arms_repo.upsert_arms(conn, arm_records(cfg))
    core = GatewayCore(cfg, engine, stub_pool, TOKENS, listen=False)
    # the writer is not started: nothing drains the buffer until the flush below
    with served(create_app(core, start_background=False)) as http:
        answers = [http.post("/v1/chat/completions", json=BODY) for _ in range(60)]
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == 50 and statuses.count(503) == 10, statuses
    for a in answers[50:]:
        assert a.headers["retry-after"] == "1" and a.json()["error"]["type"] == "overloaded"
    assert core.writer.flush(timeout_s=30)
    assert _rows(engine) == (50, 0)  # every answered request, each with its outcome


def test_a_cancelled_request_leaves_a_decision_with_an_outcome(engine):
    """Ray Serve cancels a request whose client went away: its decision still gets an
    outcome (an error), so the learner credits it rather than waiting for it forever."""
    cfg = config(auth={"open_chat": True})
    with engine.begin() as conn:
        arms_repo.upsert_arms(conn, arm_records(cfg))

    async def run() -> None:
        started = asyncio.Event()

        async def slow_pool(arm, body):
            started.set()
            await asyncio.sleep(30)
            return await stub_pool(arm, body)

        core = GatewayCore(cfg, engine, slow_pool, TOKENS, listen=False)
        task = asyncio.create_task(core.complete(dict(BODY)))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert core.writer.flush(timeout_s=30)

    asyncio.run(run())
    assert _rows(engine) == (1, 0)
    with engine.connect() as conn:
        assert tuple(conn.execute(text("SELECT status, error FROM outcomes")).one()) == (
            "error",
            "cancelled: the client went away",
        )


@pytest.mark.parametrize("durable", [False, True])
def test_durable_log_answers_only_once_the_rows_are_written(engine, durable):
    """``gateway.durable_log``: the answer leaves only when its decision and outcome rows
    are in Postgres (a gateway killed after answering loses nothing). The writer's own
    interval is an hour here: without the option the rows are still buffered."""
    cfg = config(auth={"open_chat": True}, gateway={"log_flush_s": 3600, "durable_log": durable})
    with engine.begin() as conn:
        arms_repo.upsert_arms(conn, arm_records(cfg))
        conn.execute(text("TRUNCATE outcomes, decisions CASCADE"))
    core = GatewayCore(cfg, engine, stub_pool, TOKENS, listen=False)
    with served(create_app(core)) as http:
        answers = [http.post("/v1/chat/completions", json=BODY) for _ in range(3)]
        assert [a.status_code for a in answers] == [200] * 3
        rows = _rows(engine)
    assert rows == ((3, 0) if durable else (0, 0))
