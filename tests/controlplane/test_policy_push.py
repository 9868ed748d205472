"""Policy push on a real database (no Ray): a snapshot's NOTIFY wakes the gateway's
refresher long before its poll would, the listener comes back after an outage, and a
gateway whose listener cannot connect still picks new policies up by polling."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine, text

from controlplane.gateway_core import GatewayCore
from controlplane.learner_loop import LearnerLoop
from controlplane.tokens import FeedbackTokens
from feedback.repositories import snapshots
from tests.controlplane.learning import learning_config

UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"


async def _no_pool(_arm: str, _body: dict) -> dict:
    raise AssertionError("no completion here")


def gateway(engine, refresh_s: float, **kw) -> GatewayCore:
    cfg = learning_config()
    cfg = cfg.model_copy(
        update={"gateway": cfg.gateway.model_copy(update={"policy_refresh_s": refresh_s})}
    )
    return GatewayCore(cfg, engine, _no_pool, FeedbackTokens("unit-secret-0123456789", 60), **kw)


async def until(pred: Callable[[], bool], timeout: float, step: float = 0.001) -> float:
    """Seconds until ``pred()`` holds (checked every ``step``); fails after ``timeout``."""
    t0 = time.perf_counter()
    while not pred():
        if time.perf_counter() - t0 > timeout:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(step)
    return time.perf_counter() - t0


async def with_refresher(core: GatewayCore, body: Callable[[], Awaitable[None]]) -> None:
    task = asyncio.create_task(core.policy_refresher())
    try:
        await body()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def publish(loop: LearnerLoop) -> tuple[int, float]:
    """A new snapshot; returns its version and the time its transaction committed."""
    version = await asyncio.to_thread(loop.snapshot)
    return version, time.perf_counter()


async def pickup(core: GatewayCore, version: int, committed: float, timeout: float) -> float:
    await until(lambda: core.policy.version >= version, timeout)
    return time.perf_counter() - committed


def test_notify_brings_a_new_policy_within_milliseconds(engine):
    core = gateway(engine, refresh_s=60.0)  # the poll would take a minute
    loop = LearnerLoop(engine, core.config)
    delays: list[float] = []

    async def body() -> None:
        await until(lambda: core.listener is not None and core.listener.connected, 10)
        await asyncio.to_thread(loop.start)  # publishes version 1
        await until(lambda: core.policy.version == 1, 5)
        for _ in range(10):
            version, committed = await publish(loop)
            delays.append(await pickup(core, version, committed, timeout=5))
            await asyncio.sleep(0.02)

    try:
        asyncio.run(with_refresher(core, body))
    finally:
        loop.stop(snapshot=False)
    ms = sorted(d * 1000 for d in delays)
    print(
        f"\nNOTIFY pickup after commit over {len(ms)} snapshots: min {ms[0]:.1f} ms, "
        f"median {statistics.median(ms):.1f} ms, max {ms[-1]:.1f} ms (poll every 60 s)"
    )
    assert ms[-1] < 1000  # 100 ms on a quiet machine; generous for a loaded one
    updates = core.instruments.policy_updates
    assert updates.labels("notify")._value.get() == 11
    assert updates.labels("poll")._value.get() == 0


def test_a_rollback_is_pushed_too(engine):
    core = gateway(engine, refresh_s=60.0)
    loop = LearnerLoop(engine, core.config)

    async def body() -> None:
        await until(lambda: core.listener is not None and core.listener.connected, 10)
        await asyncio.to_thread(loop.start)
        await asyncio.to_thread(loop.snapshot)

        def roll_back() -> int:
            with engine.begin() as conn:
                return snapshots.publish_rollback(conn, 1)

        version = await asyncio.to_thread(roll_back)
        committed = time.perf_counter()
        assert version == 3
        await pickup(core, version, committed, timeout=5)

    try:
        asyncio.run(with_refresher(core, body))
    finally:
        loop.stop(snapshot=False)


def test_the_listener_reconnects_after_its_connection_dies(engine):
    core = gateway(engine, refresh_s=60.0)
    loop = LearnerLoop(engine, core.config)

    async def body() -> None:
        await until(lambda: core.listener is not None and core.listener.connected, 10)
        listener = core.listener
        assert listener is not None
        pid = listener.backend_pid
        with engine.connect() as conn:  # the server ends the listening session
            assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
        await until(lambda: listener.reconnects == 1 and listener.connected, 10)
        assert listener.backend_pid != pid
        await asyncio.to_thread(loop.start)
        version, committed = await publish(loop)
        await pickup(core, version, committed, timeout=5)

    try:
        asyncio.run(with_refresher(core, body))
    finally:
        loop.stop(snapshot=False)
    assert core.instruments.policy_updates.labels("notify")._value.get() >= 1


def test_without_a_listener_the_gateway_still_polls(engine):
    core = gateway(engine, refresh_s=0.2, listen_url=UNREACHABLE)
    loop = LearnerLoop(engine, core.config)

    async def body() -> None:
        await until(lambda: core.listener is not None and core.listener.last_error, 10)
        assert not core.listener.connected
        await asyncio.to_thread(loop.start)
        for _ in range(2):
            version, committed = await publish(loop)
            delay = await pickup(core, version, committed, timeout=5)
            assert delay < 3  # one poll interval, with room for a loaded machine

    try:
        asyncio.run(with_refresher(core, body))
    finally:
        loop.stop(snapshot=False)
    updates = core.instruments.policy_updates
    assert updates.labels("poll")._value.get() >= 2
    assert updates.labels("notify")._value.get() == 0


def test_while_listening_the_version_is_polled_seldom_and_fast_again_once_not(engine, monkeypatch):
    """A connected listener brings every version, so a poll reads the version only every
    ``policy_poll_listening_s``; once the listening session dies the refresher is woken
    and polls every ``policy_refresh_s`` until the listener is back."""
    core = gateway(engine, refresh_s=0.05)
    assert core.config.gateway.policy_poll_listening_s == 30.0
    reads: list[str] = []
    real = core.refresh_policy

    def counted(trigger: str = "poll") -> bool:
        reads.append(trigger)
        return real(trigger)

    monkeypatch.setattr(core, "refresh_policy", counted)

    async def body() -> None:
        await until(lambda: core.listener is not None and core.listener.connected, 10)
        listener = core.listener
        assert listener is not None
        listener.max_backoff_s = 1.0
        await asyncio.sleep(1.0)  # 20 polls at 0.05 s
        listening = list(reads)
        assert listening.count("poll") <= 1, listening  # the first one only
        with monkeypatch.context() as m:  # the server goes away for the listener only
            m.setattr(listener, "engine", create_engine(UNREACHABLE))
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": listener.backend_pid})
            await until(lambda: reads.count("poll") >= listening.count("poll") + 5, 10)
        assert not listener.connected

    asyncio.run(with_refresher(core, body))


@pytest.mark.parametrize("how", ["loop", "pool"])
def test_the_refresher_stops_quietly_once_the_loops_thread_pool_is_shut_down(engine, caplog, how):
    """While a replica or an app stops, the event loop's thread pool refuses new work;
    the refresher then ends without logging a failure (it logged "policy refresh failed:
    cannot schedule new futures after shutdown" with a traceback at every app deletion)."""
    core = gateway(engine, refresh_s=0.01, listen=False)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if how == "loop":  # the loop's own refusal
            await loop.shutdown_default_executor()
        else:  # the pool's ("cannot schedule new futures after shutdown")
            pool = ThreadPoolExecutor(1)
            loop.set_default_executor(pool)
            pool.shutdown()
        await asyncio.wait_for(core.policy_refresher(), timeout=5)

    with caplog.at_level("ERROR", logger="controlplane.gateway_core"):
        asyncio.run(main())
    assert "policy refresh failed" not in caplog.text
    assert core.refresher_health.errors == 0
