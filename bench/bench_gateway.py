"""Gateway benchmark: decision overhead, HTTP throughput against a bare pass-through,
feedback throughput, learner events/s and the time of a ``/metrics`` scrape with 1e3
and 1e6 decisions logged, side by side in one run.

    python bench/bench_gateway.py [--database-url URL] [--requests 2000] [--concurrency 32]
    python bench/bench_gateway.py --scrape-only      # decision overhead and scrapes, no Ray

Without a URL (and no DATABASE_URL) an embedded PostgreSQL starts in a temp dir.
Three Serve apps run in one local Ray over the same replay backend (no sleep): the
gateway, a pass-through to one pool, and a pass-through to the pool each request
names, sent in the arm mix the gateway chose in its latest run (the same pools and
spread of load, without a decision: the policy learns from outcomes as rounds go, and
each round prints the gateway's mix). One load generator (httpx, async) in this process drives them
in turn, in ``--rounds`` interleaved rounds, each round starting with the next app;
ratios are the rounds' medians, with the rounds' geometric mean and its 95% t-interval:
the throughput target counts as met only when that interval lies above it. The
pass-throughs call their pools over the transport the gateway uses
(``gateway.pool_transport``, gRPC by default): like for like;
``--passthrough-transport ray`` measures against pass-throughs on Serve's defaults.
The gateway replica tunes Python's garbage collector (``gateway.gc_threshold``,
``gc_freeze``); the pass-throughs keep Python's, as a bare Serve app has it, unless
``--passthrough-gc`` gives them the same settings.
``--cpu-by-process`` also prints the CPU each process spent per request during each
app's runs (psutil: this process, the Ray processes it started, and the PostgreSQL
backends of the bench's database), grouped by role: where the gateway's extra CPU goes
in the whole system, not only in its own replica; and their voluntary context switches
per request (a thread waiting on I/O, a lock or the GIL). The
scrapes go to a gateway app in process (FastAPI's TestClient) that asks an
in-process learner for its figures, as a deployed gateway asks the learner's handle.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import psutil
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scratch import scratch_database  # noqa: E402

from controlplane.api import create_app  # noqa: E402
from controlplane.cli.demo import demo_config  # noqa: E402
from controlplane.cli.launch import APP_NAME, deploy, init_ray, wait_ready  # noqa: E402
from controlplane.gateway_core import GatewayCore  # noqa: E402
from controlplane.learner_loop import LearnerLoop, arm_records  # noqa: E402
from controlplane.tokens import FeedbackTokens  # noqa: E402
from feedback.records import DecisionRecord, FeedbackInput, OutcomeRecord  # noqa: E402
from feedback.repositories import arms as arms_repo  # noqa: E402
from feedback.repositories import feedback, reports, request_log, reward_stream  # noqa: E402
from learners.replay.dataset import dataset_for  # noqa: E402

SECRET = "bench-secret-0123456789abcdef"


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs) * 1000.0, q))


def decision_overhead(cfg, url: str, n: int) -> tuple[float, float, float, float]:
    """featurize + select + enqueue, in-process, on prompts of the bundled scenario."""
    engine = create_engine(url)
    ds = dataset_for("synthetic", cfg.replay.synthetic_rows, 0)
    core = GatewayCore(cfg, engine, call_pool=None, tokens=FeedbackTokens(SECRET, 60))  # type: ignore[arg-type]
    core.writer.start()
    bodies = [{**ds.requests[i % len(ds)], "model": "auto"} for i in range(n)]
    for b in bodies[:200]:
        core.decide(b)  # warm up
    times, cpu = [], []
    for b in bodies:
        c0, t0 = time.thread_time(), time.perf_counter()
        core.decide(b)
        times.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    core.writer.close()
    engine.dispose()
    return pct(times, 50), pct(times, 99), pct(cpu, 50), pct(cpu, 99)


async def load(
    url: str, bodies: list[dict], concurrency: int, headers: dict[str, str] | None = None
) -> tuple[float, list[float], list[dict]]:
    lat: list[float] = []
    results: list[dict] = []
    queue = list(range(len(bodies)))
    async with httpx.AsyncClient(
        timeout=60, limits=httpx.Limits(max_connections=concurrency), headers=headers
    ) as client:

        async def worker() -> None:
            while queue:
                i = queue.pop()
                t0 = time.perf_counter()
                r = await client.post(url, json=bodies[i])
                lat.append(time.perf_counter() - t0)
                r.raise_for_status()
                results.append(r.json())

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - t0, lat, results


def arms_of(bodies: list[dict], answers: list[dict]) -> list[dict]:
    """The bodies, each naming the arm of one of the gateway's answers (answers come in
    the order they finished: the same mix, not the same body to arm)."""
    return [{**b, "model": a["model"]} for b, a in zip(bodies, answers, strict=True)]


def arm_mix(answers: list[dict]) -> str:
    """Each arm's share of the gateway's answers: 'coder 25%, small 75%'."""
    counts = Counter(a["model"] for a in answers)
    return ", ".join(f"{arm} {n / len(answers):.0%}" for arm, n in sorted(counts.items()))


def ratio_interval(ratios: list[float]) -> tuple[float, float, float]:
    """Geometric mean of per-round throughput ratios and its 95% t-interval (on log
    ratios: a ratio is a factor); one round gives no interval (nan, nan)."""
    logs = np.log(np.array(ratios))
    mean = float(np.exp(logs.mean()))
    if len(logs) < 2:
        return mean, float("nan"), float("nan")
    from scipy import stats

    half = float(stats.t.ppf(0.975, len(logs) - 1) * logs.std(ddof=1) / np.sqrt(len(logs)))
    return mean, float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half))


def wait_routed(url: str, body: dict, timeout_s: float = 60.0) -> None:
    """Wait until Serve's proxy routes ``url``: ``serve.run`` returns once the app's
    replicas run, and the proxy learns the app's route a moment later (until then a
    request answers 404)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = httpx.post(url, json=body, timeout=30).status_code
        if status != 404 or time.monotonic() > deadline:
            return
        time.sleep(0.2)


def process_role(proc: psutil.Process, database: str) -> str | None:
    """What a process is to the bench: a Serve replica (app:deployment, pools together),
    the proxy, Serve's controller, Ray's own, a PostgreSQL backend of ``database``, or
    this load generator; None for anything else."""
    if proc.pid == os.getpid():
        return "load generator (this process)"
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return None
    if cmd.startswith("postgres:"):
        return "PostgreSQL backends" if f" {database} " in cmd else None
    found = re.search(r"ray::ServeReplica:([\w-]+):([\w.-]+)", cmd)
    if found:
        app, deployment = found.groups()
        pool = deployment.startswith(("pool-", "named-pool-", "bare-pool"))
        return f"{app}: {'pools' if pool else deployment.split('.')[0]}"
    if "ProxyActor" in cmd:
        return "Serve proxy"
    if "ServeController" in cmd:
        return "Serve controller"
    return "Ray (raylet, GCS, other workers)"


def cpu_by_process(database: str) -> dict[int, tuple[str, float, int]]:
    """CPU seconds and voluntary context switches so far of this process, its descendants
    (the local Ray it started) and ``database``'s PostgreSQL backends, by pid: (role,
    seconds, switches). A voluntary switch is a thread going to sleep: waiting on I/O, a
    lock, or the GIL another thread holds."""
    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]
    procs += [p for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]
    out: dict[int, tuple[str, float, int]] = {}
    for proc in procs:
        role = process_role(proc, database)
        if role is None:
            continue
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        out[proc.pid] = (role, t.user + t.system, voluntary_switches(proc.pid))
    return out


def voluntary_switches(pid: int) -> int:
    """Voluntary context switches so far of every thread of ``pid`` (psutil's count is
    the main thread's alone); a thread that ended is no longer counted."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def cpu_spent(
    before: dict[int, tuple[str, float, int]], after: dict[int, tuple[str, float, int]]
) -> tuple[Counter, Counter]:
    """CPU seconds and voluntary switches by role between two readings."""
    spent: Counter = Counter()
    switches: Counter = Counter()
    for pid, (role, seconds, n) in after.items():
        _, seconds0, n0 = before.get(pid, (role, 0.0, 0))
        spent[role] += seconds - seconds0
        switches[role] += n - n0
    return spent, switches


def print_by_process(title: str, per_app: dict[str, Counter], rounds: int, scale: float) -> None:
    labels = list(per_app)
    roles = sorted(set().union(*per_app.values()))
    print(f"{title} (mean of {rounds} rounds):")
    print("  " + f"{'':<34}" + "".join(f"{label:>20}" for label in labels))
    for role in roles:
        row = "".join(f"{per_app[label][role] / rounds * scale:20.3f}" for label in labels)
        print(f"  {role:<34}{row}")
    totals = "".join(f"{sum(per_app[label].values()) / rounds * scale:20.3f}" for label in labels)
    print(f"  {'all of them':<34}{totals}")


def learner_events_per_s(cfg, url: str, n: int) -> float:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE feedback, outcomes, decisions, policy_snapshots"))
        arms_repo.upsert_arms(conn, arm_records(cfg))
    rng = np.random.default_rng(0)
    arms = [a.name for a in cfg.arms]
    t0 = datetime.now(UTC) - timedelta(hours=1)
    ds, os_, fbs = [], [], []
    for i in range(n):
        rid = uuid.uuid4()
        ds.append(DecisionRecord(rid, t0 + timedelta(microseconds=i), "auto", arms[i % len(arms)],
                                 rng.normal(size=cfg.featurizer.dim).astype(np.float32), 0.5, 1, "linucb"))  # fmt: skip
        os_.append(OutcomeRecord(rid, t0, "ok", 300.0, energy_j=5.0, cost_usd=0.001))
        fbs.append(FeedbackInput(rid, float(rng.random())))
    with engine.begin() as conn:
        request_log.write_decisions(conn, ds)
        request_log.write_outcomes(conn, os_)
        for i in range(0, n, 5000):
            feedback.record_feedback_many(conn, fbs[i : i + 5000])
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))
    loop = LearnerLoop(engine, cfg)
    loop.start()
    start = time.perf_counter()
    done = loop.run_until_idle()
    loop.stop()
    seconds = time.perf_counter() - start
    engine.dispose()
    assert done == n, (done, n)
    return n / seconds


def load_decisions(cfg, engine, start: int, stop: int, batch: int = 50_000) -> None:
    """Decisions ``start..stop`` with their outcomes, an hour old and credited, written
    with COPY through ``request_log`` (as the gateway's writer does), in batches."""
    rng = np.random.default_rng(start)
    arms = [a.name for a in cfg.arms]
    t0 = datetime.now(UTC) - timedelta(hours=2)
    ctx = rng.normal(size=(256, cfg.featurizer.dim)).astype(np.float32)
    for lo in range(start, stop, batch):
        ds, os_ = [], []
        for i in range(lo, min(stop, lo + batch)):
            rid = uuid.UUID(int=i + 1)
            at = t0 + timedelta(microseconds=i)
            ds.append(DecisionRecord(rid, at, "auto", arms[i % len(arms)], ctx[i % 256], 0.5, 1, "linucb"))  # fmt: skip
            os_.append(OutcomeRecord(rid, at, "ok", 300.0, energy_j=5.0, cost_usd=0.001))
        with engine.begin() as conn:
            request_log.write_decisions(conn, ds)
            request_log.write_outcomes(conn, os_)
    with engine.begin() as conn:  # credited, as a learner that keeps up leaves them
        conn.execute(text(
            "UPDATE decisions SET credit_seq = nextval('reward_credit_seq'), credit_kind = 'prior', "
            "credit_quality = 0.5 WHERE credit_seq IS NULL"
        ))  # fmt: skip
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE decisions"))
        conn.execute(text("VACUUM ANALYZE outcomes"))


def old_scrape_queries(cfg, engine) -> float:
    """Seconds the aggregates the scrape used to run take (for comparison)."""
    t0 = time.perf_counter()
    with engine.connect() as conn:
        reports.decision_counts(conn)
        reports.reward_sums_by_arm(conn)
        reports.feedback_counts(conn)
        reports.learner_progress(conn)
        reward_stream.learner_lag(conn, cfg.objective, datetime.now(UTC))
        reports.residency_totals_since(conn)
    return time.perf_counter() - t0


def scrape_times(
    cfg, url: str, sizes: list[int], scrapes: int
) -> list[tuple[int, float, float, float, float]]:
    """Per size: (decisions, scrape p50 ms, p90 ms, min ms, process CPU p50 ms, the old
    queries' ms). The CPU time is this process's (client, app and its threads), which
    a loaded machine's scheduling does not inflate as it does the wall time."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE feedback, outcomes, decisions, policy_snapshots"))
        arms_repo.upsert_arms(conn, arm_records(cfg))
    learner = LearnerLoop(engine, cfg)
    learner.start()  # publishes version 1; its figures are asked in process

    async def learner_metrics() -> dict:
        return learner.metrics()

    core = GatewayCore(cfg, engine, call_pool=None, tokens=FeedbackTokens(SECRET, 60))  # type: ignore[arg-type]
    client = TestClient(create_app(core, start_background=False, learner_metrics=learner_metrics))
    out, loaded = [], 0
    for size in sizes:
        t0 = time.perf_counter()
        load_decisions(cfg, engine, loaded, size)
        loaded = size
        print(
            f"  loaded {size:,} decisions and outcomes in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        for _ in range(5):
            assert client.get("/metrics").status_code == 200  # warm up
        times, cpu = [], []
        for _ in range(scrapes):
            c0, t0 = time.process_time(), time.perf_counter()
            r = client.get("/metrics")
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            assert r.status_code == 200 and b"banditctl_learner_up 1.0" in r.content
        old = min(old_scrape_queries(cfg, engine) for _ in range(3))
        out.append(
            (size, pct(times, 50), pct(times, 90), min(times) * 1000.0, pct(cpu, 50), old * 1000.0)
        )
    learner.stop(snapshot=False)
    core.writer.close()
    engine.dispose()
    return out


def print_scrapes(rows: list[tuple[int, float, float, float, float, float]]) -> float:
    for size, p50, p90, fastest, cpu, old in rows:
        print(
            f"/metrics scrape with {size:>9,} decisions: wall p50 {p50:6.2f} ms  p90 {p90:6.2f} ms"
            f"  min {fastest:6.2f} ms; CPU p50 {cpu:5.2f} ms   (the aggregates it used to run:"
            f" {old:8.1f} ms)"
        )
    first, last = rows[0], rows[-1]
    ratio = last[1] / first[1]
    print(
        f"scrape time ratio {last[0]:,} / {first[0]:,} decisions: wall p50 {ratio:.2f}, "
        f"min {last[3] / first[3]:.2f}, CPU p50 {last[4] / first[4]:.2f}"
    )
    return ratio


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds of the three HTTP runs; ratios are their medians")  # fmt: skip
    ap.add_argument("--decisions", type=int, default=5000)
    ap.add_argument("--events", type=int, default=30000)
    ap.add_argument("--scrape-sizes", default="1000,1000000",
                    help="decisions in the database for each scrape measurement")  # fmt: skip
    ap.add_argument("--scrapes", type=int, default=50, help="scrapes timed per size")
    ap.add_argument("--guarded", action="store_true",
                    help="the gateway with an API key, its rate limits, a budget and one "
                         "fallback on (limits set high enough never to refuse)")  # fmt: skip
    ap.add_argument("--port", type=int, default=None,
                    help="the Serve HTTP proxy's port (default: the config's, 8000)")  # fmt: skip
    ap.add_argument("--cpu-by-process", action="store_true",
                    help="the CPU each process spent per request during each app's runs")  # fmt: skip
    ap.add_argument("--one-pool", action="store_true",
                    help="every arm on one model's pool: each app runs one pool replica, so the "
                         "ratio against the one-pool pass-through is the gateway's own cost")  # fmt: skip
    ap.add_argument("--pool-transport", choices=("grpc", "ray"), default=None,
                    help="how the gateway calls its pools (gateway.pool_transport; default: the "
                         "config's, grpc)")  # fmt: skip
    ap.add_argument("--passthrough-transport", choices=("grpc", "ray"), default=None,
                    help="how the pass-throughs call theirs (default: as the gateway does; 'ray' "
                         "is a pass-through on Serve's defaults)")  # fmt: skip
    ap.add_argument("--passthrough-gc", action="store_true",
                    help="the pass-throughs' garbage collector tuned as the gateway replica's is "
                         "(gateway.gc_threshold, gc_freeze); default: Python's, as a bare Serve "
                         "app has it")  # fmt: skip
    ap.add_argument("--scrape-only", action="store_true",
                    help="decision overhead and scrapes only (no Ray)")  # fmt: skip
    args = ap.parse_args()
    sizes = [int(float(x)) for x in args.scrape_sizes.split(",")]
    logging.basicConfig(level=logging.WARNING)

    with scratch_database(args.database_url, "banditctl_benchgw") as (url, where):
        print(f"server: {where}")
        cfg = demo_config()
        cfg = cfg.model_copy(update={
            "replay": cfg.replay.model_copy(update={"latency_scale": 0.0}),
            "gateway": cfg.gateway.model_copy(update={"max_ongoing_requests": args.concurrency * 2}),
            "pools": cfg.pools.model_copy(update={"max_ongoing_requests": args.concurrency * 2}),
        })  # fmt: skip
        if args.port is not None:
            cfg = cfg.model_copy(update={"http_port": args.port})
        headers = None
        if args.guarded:  # every request checked against a key, its limits and a budget
            os.environ["BANDITCTL_BENCH_KEY"] = "bench-key-" + uuid.uuid4().hex
            headers = {"authorization": f"Bearer {os.environ['BANDITCTL_BENCH_KEY']}"}
            cfg = cfg.model_validate({
                **cfg.model_dump(mode="json"),
                "api_keys": [{"name": "bench", "key_env": "BANDITCTL_BENCH_KEY",
                              "scopes": ["chat", "feedback"], "requests_per_minute": 10**7,
                              "tokens_per_minute": 10**10}],
                "budgets": [{"key": "bench", "usd": 10**6, "period": "day"}],
                "auth": {**cfg.auth.model_dump(mode="json"), "open_chat": False},
                "gateway": {**cfg.gateway.model_dump(mode="json"), "fallbacks": 1},
            })  # fmt: skip
            print("gateway: API key, rate limits, budget and 1 fallback on")
        if args.pool_transport is not None:
            cfg = cfg.model_copy(update={
                "gateway": cfg.gateway.model_copy(update={"pool_transport": args.pool_transport})
            })  # fmt: skip
        transport = args.passthrough_transport or cfg.gateway.pool_transport
        print(
            f"pool calls: gateway over {cfg.gateway.pool_transport}, pass-throughs over {transport}"
        )
        if args.one_pool:  # each arm still replays its own answers (backends are per arm)
            data = cfg.model_dump(mode="json")
            data["arms"] = [{**a, "model": "shared"} for a in data["arms"]]
            cfg = cfg.model_validate(data)
            print("arms: every arm on one pool (model 'shared')")
        with create_engine(url).begin() as conn:
            arms_repo.upsert_arms(conn, arm_records(cfg))

        p50, p99, c50, c99 = decision_overhead(cfg, url, args.decisions)
        print(
            "decision overhead (featurize+select+enqueue, in-process, log writer running): "
            f"wall p50 {p50:.3f} ms  p99 {p99:.3f} ms; thread CPU p50 {c50:.3f} ms  p99 {c99:.3f} ms"
        )
        if args.scrape_only:
            ratio = print_scrapes(scrape_times(cfg, url, sizes, args.scrapes))
            print(f"targets: scrape ratio within 2x: {'met' if ratio <= 2 else 'NOT met'}")
            return 0

        init_ray(None)
        from passthrough import build_named_passthrough, build_passthrough
        from ray import serve

        base = deploy(cfg, url, SECRET)
        wait_ready(base, 300)
        moc = args.concurrency * 2
        gc = (cfg.gateway.gc_threshold, cfg.gateway.gc_freeze) if args.passthrough_gc else None
        print(
            "garbage collector: gateway threshold "
            f"{cfg.gateway.gc_threshold}, freeze {cfg.gateway.gc_freeze}; pass-throughs "
            + ("the same" if gc else "Python's")
        )
        bare = build_passthrough(cfg, "large", moc, transport, gc)
        serve.run(bare, name="bare", route_prefix="/bare")
        serve.run(
            build_named_passthrough(cfg, moc, transport, gc), name="named", route_prefix="/named"
        )
        ds = dataset_for("synthetic", cfg.replay.synthetic_rows, 0)
        bodies = [
            {"model": "auto", "messages": ds.requests[i % len(ds)]["messages"]}
            for i in range(args.requests)
        ]
        gw = base + "/v1/chat/completions"
        wait_routed(base + "/bare/v1/chat/completions", bodies[0])
        wait_routed(base + "/named/v1/chat/completions", {**bodies[0], "model": cfg.arms[0].name})
        asyncio.run(load(base + "/bare/v1/chat/completions", bodies[:100], 8))
        # a first pass through the gateway warms it and gives the arm of each request:
        # the named pass-through then sends each body to the pool the gateway chose, until
        # the gateway's first timed run gives a newer mix
        _, _, first = asyncio.run(load(gw, bodies, args.concurrency, headers))
        payloads = {
            "bare pass-through": bodies,
            "named pass-through": arms_of(bodies, first),
            "banditctl gateway": bodies,
        }
        print(f"gateway's arm mix in its first pass: {arm_mix(first)}")
        asyncio.run(
            load(base + "/named/v1/chat/completions", payloads["named pass-through"][:100], 8)
        )
        runs = [
            ("bare pass-through", "/bare/v1/chat/completions", None),
            ("named pass-through", "/named/v1/chat/completions", None),
            ("banditctl gateway", "/v1/chat/completions", headers),
        ]
        per_round: list[dict[str, tuple[float, float, float]]] = []
        results: list[dict] = []
        database = url.rsplit("/", 1)[-1].split("?")[0]
        cpu: dict[str, Counter] = {label: Counter() for label, _, _ in runs}
        switches: dict[str, Counter] = {label: Counter() for label, _, _ in runs}
        for rnd in range(args.rounds):  # interleaved: a load that drifts hits all three alike
            row = {}
            # each round starts with the next app: what a run leaves behind (the learner
            # crediting the gateway's decisions at their deadline) falls on each in turn
            for label, path, hdrs in runs[rnd % len(runs) :] + runs[: rnd % len(runs)]:
                payload = payloads[label]
                before = cpu_by_process(database) if args.cpu_by_process else {}
                secs, lat, res = asyncio.run(load(base + path, payload, args.concurrency, hdrs))
                if args.cpu_by_process:
                    spent, waits = cpu_spent(before, cpu_by_process(database))
                    cpu[label].update({role: s / len(payload) for role, s in spent.items()})
                    switches[label].update({role: n / len(payload) for role, n in waits.items()})
                row[label] = (len(payload) / secs, pct(lat, 50), pct(lat, 99))
                if "gateway" in label:
                    results = res
                    # the policy learns as the rounds go (outcomes, no feedback here), so its
                    # arm mix drifts: the named pass-through replays this run's, in order,
                    # next, so that both keep spreading the same load over the same pools
                    payloads["named pass-through"] = arms_of(bodies, res)
            per_round.append(row)
            print(
                f"round {rnd + 1}: "
                + "; ".join(f"{k} {row[k][0]:.1f} req/s (p50 {row[k][1]:.1f} ms, p99 {row[k][2]:.1f} ms)" for k, _, _ in runs)
                + f"; gateway's arm mix {arm_mix(results)}"
            )  # fmt: skip
        gw_label = "banditctl gateway"
        ratios_bare = [r[gw_label][0] / r["bare pass-through"][0] for r in per_round]
        ratios_named = [r[gw_label][0] / r["named pass-through"][0] for r in per_round]
        for label, _, _ in runs:
            med = float(np.median([r[label][0] for r in per_round]))
            print(
                f"HTTP via Serve proxy, {args.concurrency} concurrent, {label:<19}: median {med:8.1f} req/s over {args.rounds} rounds"
            )
        ratio = float(np.median(ratios_named))
        if args.cpu_by_process:
            print_by_process("CPU per request by process during each app's runs (ms)", cpu,
                             args.rounds, 1e3)  # fmt: skip
            print_by_process("voluntary context switches per request by process", switches,
                             args.rounds, 1.0)  # fmt: skip
        print(
            "gateway / pass-through throughput ratio, median of rounds: "
            f"{float(np.median(ratios_bare)):.2f} against one pool "
            f"({', '.join(f'{x:.2f}' for x in ratios_bare)}); "
            f"{ratio:.2f} against the same pools and arm mix "
            f"({', '.join(f'{x:.2f}' for x in ratios_named)})"
        )
        intervals = {
            "one pool": ratio_interval(ratios_bare),
            "the same pools": ratio_interval(ratios_named),
        }
        for name, (g, lo, hi) in intervals.items():
            print(f"  against {name}: geometric mean of rounds {g:.2f}, 95% interval "
                  f"[{lo:.2f}, {hi:.2f}] over {args.rounds} rounds")  # fmt: skip
        named_lo = intervals["the same pools"][1]
        verdict = (
            "met (the interval lies above 0.9)" if named_lo >= 0.9
            else "median meets it, not shown to hold (the interval reaches below 0.9)"
            if ratio >= 0.9 else "NOT met"
        )  # fmt: skip
        metas = [r["banditctl"] for r in results]
        fb_bodies = [
            {"request_id": m["request_id"], "quality": 0.5, "feedback_token": m["feedback_token"]}
            for m in metas
        ]
        secs, lat, _ = asyncio.run(load(base + "/v1/feedback", fb_bodies, args.concurrency))
        print(
            f"feedback via HTTP, {args.concurrency} concurrent: {len(fb_bodies) / secs:8.1f} req/s  p50 {pct(lat, 50):.1f} ms  p99 {pct(lat, 99):.1f} ms"
        )
        serve.delete("bare")
        serve.delete("named")
        serve.delete(APP_NAME)

        eps = learner_events_per_s(cfg, url, args.events)
        print(
            f"learner: {eps:,.0f} events/s read from Postgres and applied ({args.events:,} events, snapshots included)"
        )
        scrape_ratio = print_scrapes(scrape_times(cfg, url, sizes, args.scrapes))
        print(
            f"targets: decision p99 < 2 ms: {'met' if p99 < 2 else 'NOT met'}; "
            f"throughput ratio (same pools) >= 0.9: {verdict}; "
            f"learner >= 10,000 events/s: {'met' if eps >= 10_000 else 'NOT met'}; "
            f"scrape ratio within 2x: {'met' if scrape_ratio <= 2 else 'NOT met'}"
        )
        serve.shutdown()
        import ray

        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
