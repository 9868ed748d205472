"""The single-database, single-learner ceiling, and what grows with the log.

    python bench/bench_scaling.py [--database-url URL] [--json out.json]
        [--requests 60000] [--events 30000] [--log-sizes 100000,1000000]

Each part runs in a scratch database of its own on the server named (an embedded
one without a URL), dropped after; the data are seeded. Parts (``--parts``):

- ``writes``: decisions and outcomes through the gateway's writer
  (``feedback.writer.DecisionLogWriter``: COPY batches of 5,000, one transaction
  each), requests/s from the first record handed over to the last one written;
  feedback one by one (one INSERT and commit each, as ``POST /v1/feedback`` does)
  and in batches of 1,000 (``record_feedback_many``).
- ``learner``: the learner loop (``controlplane.learner_loop.LearnerLoop``) on
  ``--events`` rated events waiting in Postgres, with the production snapshot rule
  (``learner_service`` defaults): events/s, versions written and their state size;
  beside it, the claim alone (``claim_reward_events``, batches of 5,000), for
  each of ``--loop-shapes`` (arms x context dim).
- ``grid``: LinUCB in process, one thread, for arms x dim in ``--arms`` x ``--dims``:
  events/s of batched updates (the loop's path), single decisions/s, and the size and
  serialization time of the state a snapshot stores.
- ``growth``: the log at ``--log-sizes`` rows (the same traffic rate, kept for
  longer: the newest row is always now, one row every ``--spacing-s``), credited
  and vacuumed: bytes per request, a batch of 20,000 writes, a claim of 5,000 fresh
  events, and the dashboard's and the budgets' queries; then
  ``feedback.repositories.log_retention`` prunes everything older than
  ``--keep-days`` (archived to gzip'd CSV), and the same figures again.

The machine's load average is printed with each part: on a shared machine, compare
figures of one run only.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one thread, as the learner's loop runs

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from sqlalchemy import Engine, create_engine, event, text  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scratch import scratch_database  # noqa: E402

from controlplane.config import BanditConfig, parse_config  # noqa: E402
from controlplane.learner_loop import LearnerLoop, arm_records  # noqa: E402
from feedback import log_pruner  # noqa: E402
from feedback.objective import Objective  # noqa: E402
from feedback.records import DecisionRecord, FeedbackInput, OutcomeRecord  # noqa: E402
from feedback.repositories import arms as arms_repo  # noqa: E402
from feedback.repositories import (  # noqa: E402
    feedback,
    reports,
    request_log,
    reward_stream,
    snapshots,
    spend,
)
from feedback.repositories._sql import copy_into  # noqa: E402
from feedback.writer import DecisionLogWriter  # noqa: E402
from learners import RewardEvent, make_learner  # noqa: E402

W = {"quality": 1.0, "cost_usd": -30.0}


def load() -> float:
    return os.getloadavg()[0]


def config(n_arms: int, dim: int) -> BanditConfig:
    return parse_config(
        {
            "arms": [
                {"name": f"m{i}", "model": f"m{i}", "backend": "replay"} for i in range(n_arms)
            ],
            "learner": {"kind": "linucb", "alpha": 0.3},
            "featurizer": {"dim": dim},
            "objective": {"weights": W, "feedback_window_s": 30.0},
        },
        "<bench>",
    )


def records(
    n: int, dim: int, arms: list[str], at: Callable[[int], datetime], rng: np.random.Generator
) -> tuple[list[DecisionRecord], list[OutcomeRecord]]:
    ctx = rng.normal(size=(min(n, 4096), dim)).astype(np.float32)
    pick = rng.integers(len(arms), size=n)
    ds, os_ = [], []
    for i in range(n):
        rid, t = uuid.uuid4(), at(i)
        ds.append(DecisionRecord(rid, t, "auto", arms[pick[i]], ctx[i % len(ctx)], 0.5, 1, "linucb"))  # fmt: skip
        os_.append(OutcomeRecord(rid, t, "ok", 300.0 + i % 7, energy_j=5.0, cost_usd=0.001))
    return ds, os_


def analyze(engine: Engine, vacuum: bool = False) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for t in ("decisions", "outcomes", "feedback"):
            conn.execute(text(f"{'VACUUM ' if vacuum else ''}ANALYZE {t}"))


def blocks_of(engine: Engine, fn: Callable[[Any], object]) -> int:
    """Pages (buffer cache or disk) the statements of ``fn(conn)`` touch, from each one's
    ``EXPLAIN (ANALYZE, BUFFERS)``: a measure of their work that the machine's load does
    not change. The statements run and are rolled back; ``fn``'s own result is lost."""
    total = 0

    def explain(_c: Any, _cur: Any, statement: str, params: Any, *_a: Any) -> Any:
        return "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, params

    def count(_c: Any, cursor: Any, *_a: Any) -> None:
        nonlocal total
        top = cursor.fetchone()[0][0]["Plan"]
        total += int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"])

    with engine.connect() as conn:
        event.listen(conn, "before_cursor_execute", explain, retval=True)
        event.listen(conn, "after_cursor_execute", count)
        with contextlib.suppress(Exception):  # fn reads a plan where it expects rows
            fn(conn)
        conn.rollback()
    return total


def median_ms(fn: Callable[[], object], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


# -- (a) writes -----------------------------------------------------------------


def bench_writes(url: str, n: int, single: int, dim: int, seed: int) -> dict[str, Any]:
    engine = create_engine(url)
    arms = [f"m{i}" for i in range(8)]
    with engine.begin() as conn:
        arms_repo.upsert_arms(conn, arms_repo_records(arms))
    rng = np.random.default_rng(seed)
    t0 = datetime.now(UTC) - timedelta(hours=1)
    ds, os_ = records(n, dim, arms, lambda i: t0 + timedelta(microseconds=i), rng)
    writer = DecisionLogWriter(engine, max_buffer=2 * n + 2).start()
    la = load()
    start = time.perf_counter()
    for d, o in zip(ds, os_, strict=True):
        writer.log_decision(d)
        writer.log_outcome(o)
    assert writer.flush(timeout_s=600)
    write_s = time.perf_counter() - start
    writer.close()
    assert writer.stats.written_decisions == n and writer.stats.written_outcomes == n

    ones = [FeedbackInput.validated(str(d.request_id), 0.7) for d in ds[:single]]
    start = time.perf_counter()
    for fb in ones:
        with engine.begin() as conn:
            feedback.record_feedback(conn, fb)
    one_s = time.perf_counter() - start
    many = [FeedbackInput.validated(str(d.request_id), 0.4) for d in ds[single:]]
    start = time.perf_counter()
    for i in range(0, len(many), 1000):
        with engine.begin() as conn:
            feedback.record_feedback_many(conn, many[i : i + 1000])
    many_s = time.perf_counter() - start
    engine.dispose()
    return {
        "requests": n,
        "requests_per_s": n / write_s,
        "records_per_s": 2 * n / write_s,
        "feedback_one_per_s": len(ones) / one_s,
        "feedback_batched_per_s": len(many) / many_s,
        "load_average": la,
    }


def arms_repo_records(arms: list[str]) -> list[Any]:
    from feedback.records import ArmRecord

    return [ArmRecord(id=a, model=a, backend="replay") for a in arms]


# -- (b) the learner against Postgres ------------------------------------------


def write_rated(engine: Engine, cfg: BanditConfig, n: int, rng: np.random.Generator) -> None:
    arms = [a.name for a in cfg.arms]
    t0 = datetime.now(UTC) - timedelta(hours=1)
    ds, os_ = records(n, cfg.featurizer.dim, arms, lambda i: t0 + timedelta(microseconds=i), rng)
    q = rng.random(n)
    for lo in range(0, n, 5000):
        with engine.begin() as conn:
            request_log.write_decisions(conn, ds[lo : lo + 5000])
            request_log.write_outcomes(conn, os_[lo : lo + 5000])
            feedback.record_feedback_many(
                conn,
                [FeedbackInput(d.request_id, float(q[lo + i])) for i, d in enumerate(ds[lo : lo + 5000])],
            )  # fmt: skip
    analyze(engine)


def bench_learner(url: str, n_arms: int, dim: int, n: int, seed: int) -> dict[str, Any]:
    cfg = config(n_arms, dim)
    engine = create_engine(url)
    rng = np.random.default_rng(seed)
    with engine.begin() as conn:
        arms_repo.upsert_arms(conn, arm_records(cfg))
    write_rated(engine, cfg, n, rng)
    la = load()
    loop = LearnerLoop(engine, cfg)
    loop.start()  # the initial version (not timed)
    start = time.perf_counter()
    done = loop.run_until_idle()
    loop.stop()  # the last pending events' version, as a stopping learner writes it
    loop_s = time.perf_counter() - start
    assert done == n, (done, n)
    with engine.connect() as conn:
        st = snapshots.storage(conn)
    # the claim alone, on as many fresh events
    write_rated(engine, cfg, n, rng)
    claimed, start = 0, time.perf_counter()
    while True:
        with engine.begin() as conn:
            got = reward_stream.claim_reward_events(conn, cfg.objective, datetime.now(UTC), 5000)
        if not got:
            break
        claimed += len(got)
    claim_s = time.perf_counter() - start
    engine.dispose()
    return {
        "arms": n_arms,
        "dim": dim,
        "events": n,
        "loop_events_per_s": n / loop_s,
        "claim_events_per_s": claimed / claim_s,
        "versions": st["versions"],
        "state_mb_each": st["state_bytes"] / max(st["versions"], 1) / 1e6,
        "load_average": la,
    }


# -- (c) the learner in process: arms x dim -------------------------------------


def bench_grid(arms_list: list[int], dims: list[int], seed: int) -> list[dict[str, Any]]:
    out = []
    rng = np.random.default_rng(seed)
    for dim in dims:
        for n_arms in arms_list:
            arms = [f"m{i}" for i in range(n_arms)]
            n = 20_000 if dim <= 64 else 5_000
            X = rng.standard_normal((n, dim)) / np.sqrt(dim)
            X[:, 0] = 1.0
            R = rng.random((n, 4))
            pick = rng.integers(n_arms, size=n)
            meta: dict[str, object] = {"arms": arms}
            events = [RewardEvent(X[i], arms[pick[i]], R[i], 0.5, meta) for i in range(n)]
            learner = make_learner({"kind": "linucb", "alpha": 0.3}, dim, W)
            la = load()
            t0 = time.perf_counter()
            for lo in range(0, n, 5000):
                learner.update(events[lo : lo + 5000])
            upd = n / (time.perf_counter() - t0)
            k = min(n, 2000)
            t0 = time.perf_counter()
            for i in range(k):
                learner.select(X[i], arms, rng)
            sel = k / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            state = learner.state_bytes()
            ser_ms = 1e3 * (time.perf_counter() - t0)
            row = {
                "arms": n_arms,
                "dim": dim,
                "update_per_s": upd,
                "select_per_s": sel,
                "state_mb": len(state) / 1e6,
                "state_ms": ser_ms,
                "load_average": la,
            }
            out.append(row)
            print(
                f"  {n_arms:>4} arms  d={dim:<4} update {upd:>9,.0f}/s  select {sel:>8,.0f}/s  "
                f"state {row['state_mb']:>8.2f} MB in {ser_ms:>7.1f} ms  (load {la:.1f})",
                flush=True,
            )
    return out


# -- (d) the log as it grows ----------------------------------------------------


def load_log(
    engine: Engine, arms: list[str], dim: int, lo: int, hi: int, now: datetime, spacing_s: float
) -> None:
    """Rows ``lo..hi`` of a log whose row j was made ``j * spacing_s`` before ``now``, each
    with its outcome and a feedback row on every other one, credited in time order."""
    rng = np.random.default_rng(lo)
    batch = 50_000
    for b in range(lo, hi, batch):
        ds, os_ = records(
            min(batch, hi - b), dim, arms, lambda i, b=b: now - timedelta(seconds=(b + i) * spacing_s), rng
        )  # fmt: skip
        with engine.begin() as conn:
            request_log.write_decisions(conn, ds)
            request_log.write_outcomes(conn, os_)
            fbs = [
                (d.request_id, "user", 0.5, d.created_at + timedelta(seconds=2)) for d in ds[::2]
            ]
            copy_into(conn, "feedback", ("request_id", "source", "quality", "created_at"), fbs)
    with engine.begin() as conn:  # credited, as a learner that keeps up leaves them
        conn.execute(text(
            "UPDATE decisions d SET credit_seq = s.seq, credit_kind = 'feedback', credit_quality = 0.5 "
            "FROM (SELECT request_id, nextval('reward_credit_seq') AS seq FROM "
            "(SELECT request_id FROM decisions WHERE credit_seq IS NULL ORDER BY created_at) x) s "
            "WHERE d.request_id = s.request_id"
        ))  # fmt: skip
        wm = int(conn.execute(text("SELECT max(credit_seq) FROM decisions")).scalar_one())
        snapshots.save_snapshot(
            conn, learner_kind="linucb", config={}, state=b"x", watermark=wm,
            events_applied=wm, summary={},
        )  # fmt: skip
    analyze(engine, vacuum=True)


def log_figures(engine: Engine, cfg: BanditConfig, rng: np.random.Generator) -> dict[str, Any]:
    obj: Objective = cfg.objective
    arms = [a.name for a in cfg.arms]
    now = datetime.now(UTC)
    with engine.connect() as conn:
        n = int(conn.execute(text("SELECT count(*) FROM decisions")).scalar_one())
        size = {
            t: int(conn.execute(text(f"SELECT pg_total_relation_size('{t}')")).scalar_one())
            for t in ("decisions", "outcomes", "feedback")
        }
    f: dict[str, Any] = {
        "rows": n,
        "mb": {t: s / 1e6 for t, s in size.items()},
        "bytes_per_request": sum(size.values()) / max(n, 1),
        "load_average": load(),
    }
    # a batch of writes: 20,000 requests, COPY in batches of 5,000
    ds, os_ = records(
        20_000, cfg.featurizer.dim, arms, lambda i: now - timedelta(minutes=5, microseconds=i), rng
    )
    t0 = time.perf_counter()
    blocks = f["blocks"] = {}
    for lo in range(0, len(ds), 5000):
        with engine.begin() as conn:
            request_log.write_decisions(conn, ds[lo : lo + 5000])
            request_log.write_outcomes(conn, os_[lo : lo + 5000])
    f["write_requests_per_s"] = len(ds) / (time.perf_counter() - t0)

    # the claim of those (they are ready: 5 minutes old, past the feedback window)
    analyze(engine)
    with engine.connect() as conn:  # the claim's plan, run and rolled back
        plan = conn.execute(
            text("EXPLAIN (ANALYZE, BUFFERS) " + reward_stream._CLAIM_SQL),
            reward_stream.claim_params(obj, now, 5000),
        ).scalars()
        f["claim_plan"] = list(plan)
        conn.rollback()
    claims = []
    for i in range(4):
        t0 = time.perf_counter()
        if i == 0:
            blocks["claim"] = (
                blocks_of(engine, lambda c: reward_stream.claim_reward_events(c, obj, now, 5000))
                / 5000
            )  # per event
        else:
            with engine.begin() as conn:
                assert len(reward_stream.claim_reward_events(conn, obj, now, 5000)) == 5000
        claims.append(time.perf_counter() - t0)
    f["claim_5000_ms"] = 1e3 * statistics.median(claims)
    with engine.begin() as conn:  # the probe's rows leave: the log is the loaded one again
        conn.execute(
            text("DELETE FROM decisions WHERE request_id = ANY(:ids)"),
            {"ids": [d.request_id for d in ds]},
        )
    analyze(engine, vacuum=True)
    hour = now - timedelta(hours=1)
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    queries: dict[str, Callable[[Any], object]] = {
        "lag": lambda c: reward_stream.learner_lag(c, obj, now),
        "arm_stats_1h": lambda c: reports.arm_stats(c, obj, since=hour),
        "routing_sample_1h": lambda c: reports.routing_sample(c, obj, since=hour),
        "table_counts": reports.table_counts,
        "spend_month": lambda c: spend.spend_since(c, month, ["k"], ["t"]),
        "arm_stats_all": lambda c: reports.arm_stats(c, obj),
    }
    for name, q in queries.items():
        blocks[name] = blocks_of(engine, q)
    with engine.connect() as conn:
        f["lag_ms"] = median_ms(lambda: reward_stream.learner_lag(conn, obj, now))
        f["arm_stats_1h_ms"] = median_ms(lambda: reports.arm_stats(conn, obj, since=hour))
        f["routing_sample_1h_ms"] = median_ms(lambda: reports.routing_sample(conn, obj, since=hour))
        f["counts_1h_ms"] = median_ms(lambda: reports.counts_since(conn, hour))
        f["table_counts_ms"] = median_ms(lambda: reports.table_counts(conn), repeats=3)
        f["spend_month_ms"] = median_ms(
            lambda: spend.spend_since(conn, month, ["k"], ["t"]), repeats=3
        )
        f["arm_stats_all_ms"] = median_ms(lambda: reports.arm_stats(conn, obj), repeats=3)
    return f


def bench_growth(
    url: str, sizes: list[int], dim: int, spacing_s: float, keep_days: float, batch: int
) -> dict[str, Any]:
    cfg = config(8, dim)
    engine = create_engine(url)
    arms = [a.name for a in cfg.arms]
    with engine.begin() as conn:
        arms_repo.upsert_arms(conn, arm_records(cfg))
    rng = np.random.default_rng(7)
    now = datetime.now(UTC)
    out: dict[str, Any] = {"sizes": []}
    have = 0
    for size in sizes:
        t0 = time.perf_counter()
        load_log(engine, arms, dim, have, size, now, spacing_s)
        have = size
        print(f"  loaded {size:,} rows in {time.perf_counter() - t0:.0f} s", flush=True)
        out["sizes"].append(log_figures(engine, cfg, rng))
    # retention: prune what is older than keep_days, archived, in bounded batches
    before = now - timedelta(days=keep_days)
    arch = Path(tempfile.mkdtemp(prefix="banditctl-archive-"))
    la = load()
    t0 = time.perf_counter()
    with log_pruner.Archive(arch) as archive:
        total = log_pruner.prune_log(engine, before=before, batch=batch, archive=archive)
    prune_s = time.perf_counter() - t0
    archive_mb = sum(p.stat().st_size for p in arch.iterdir()) / 1e6
    analyze(engine, vacuum=True)
    out["prune"] = {
        "keep_days": keep_days,
        "batch": batch,
        "decisions": total.decisions,
        "outcomes": total.outcomes,
        "feedback": total.feedback,
        "batches": total.batches,
        "seconds": prune_s,
        "decisions_per_s": total.decisions / prune_s,
        "longest_batch_ms": 1e3 * total.longest_batch_s,
        "archive_mb": archive_mb,
        "load_average": la,
    }
    out["after_prune"] = log_figures(engine, cfg, rng)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        t0 = time.perf_counter()
        for t in ("decisions", "outcomes", "feedback"):  # the files back to the rows kept
            conn.execute(text(f"VACUUM FULL ANALYZE {t}"))
        out["vacuum_full_s"] = time.perf_counter() - t0
    out["after_vacuum_full"] = log_figures(engine, cfg, rng)
    engine.dispose()
    return out


# -- printing -------------------------------------------------------------------


def print_growth(g: dict[str, Any]) -> None:
    cols = g["sizes"] + [g["after_prune"], g["after_vacuum_full"]]
    names = [f"{c['rows']:,} rows" for c in g["sizes"]] + ["pruned", "+ VACUUM FULL"]
    print("  " + " " * 30 + "".join(f"{n:>18}" for n in names))
    rows = [
        ("MB decisions+outcomes+feedback", lambda c: f"{sum(c['mb'].values()):,.1f}"),
        ("bytes per request", lambda c: f"{c['bytes_per_request']:,.0f}"),
        ("write, requests/s", lambda c: f"{c['write_requests_per_s']:,.0f}"),
        ("claim of 5,000, ms", lambda c: f"{c['claim_5000_ms']:.1f}"),
        ("learner lag query, ms", lambda c: f"{c['lag_ms']:.1f}"),
        ("arm stats, last hour, ms", lambda c: f"{c['arm_stats_1h_ms']:.1f}"),
        ("routing sample, last hour, ms", lambda c: f"{c['routing_sample_1h_ms']:.1f}"),
        ("counts, last hour, ms", lambda c: f"{c['counts_1h_ms']:.1f}"),
        ("table counts (all rows), ms", lambda c: f"{c['table_counts_ms']:.1f}"),
        ("spend this month, ms", lambda c: f"{c['spend_month_ms']:.1f}"),
        ("arm stats, all time, ms", lambda c: f"{c['arm_stats_all_ms']:.1f}"),
        ("load average", lambda c: f"{c['load_average']:.1f}"),
    ]
    for name, fmt in rows:
        print(f"  {name:<30}" + "".join(f"{fmt(c):>18}" for c in cols))
    print("  pages touched (buffer cache or disk; the load does not change these):")
    brow = [
        ("claim, per event", "claim", "{:,.1f}"),
        ("learner lag query", "lag", "{:,.0f}"),
        ("arm stats, last hour", "arm_stats_1h", "{:,.0f}"),
        ("routing sample, last hour", "routing_sample_1h", "{:,.0f}"),
        ("table counts (all rows)", "table_counts", "{:,.0f}"),
        ("spend this month", "spend_month", "{:,.0f}"),
        ("arm stats, all time", "arm_stats_all", "{:,.0f}"),
    ]
    for name, key, fmt in brow:
        print(f"  {name:<30}" + "".join(f"{fmt.format(c['blocks'][key]):>18}" for c in cols))
    p = g["prune"]
    print(
        f"  prune older than {p['keep_days']:g} days, batches of {p['batch']:,}: "
        f"{p['decisions']:,} decisions, {p['outcomes']:,} outcomes, {p['feedback']:,} feedback "
        f"in {p['batches']} batches, {p['seconds']:.1f} s ({p['decisions_per_s']:,.0f} requests/s, "
        f"longest batch {p['longest_batch_ms']:.0f} ms), archive {p['archive_mb']:.1f} MB gzip'd "
        f"(load {p['load_average']:.1f}); VACUUM FULL after it {g['vacuum_full_s']:.1f} s"
    )
    for c, name in zip(cols, names, strict=True):  # the claim's plan, top lines
        print(f"  claim plan at {name}:")
        for line in c["claim_plan"][:14]:
            print(f"    {line}")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    ap.add_argument("--parts", default="writes,learner,grid,growth")
    ap.add_argument("--requests", type=int, default=60_000, help="writes: requests logged")
    ap.add_argument("--single", type=int, default=2_000, help="writes: feedback one by one")
    ap.add_argument("--dim", type=int, default=64, help="context dim of writes and growth")
    ap.add_argument("--events", type=int, default=30_000, help="learner: events per shape")
    ap.add_argument("--loop-shapes", default="4x64,16x64,16x256", help="learner: ARMSxDIM,...")
    ap.add_argument("--arms", default="4,16,64")
    ap.add_argument("--dims", default="16,64,256")
    ap.add_argument("--log-sizes", default="100000,1000000")
    ap.add_argument("--spacing-s", type=float, default=3.456, help="growth: s between rows")
    ap.add_argument("--keep-days", type=float, default=4.0, help="growth: retention")
    ap.add_argument("--prune-batch", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    result: dict[str, Any] = {"started": datetime.now(UTC).isoformat(), "cpus": os.cpu_count()}

    def scratch() -> Any:
        return scratch_database(args.database_url, "banditctl_scale")

    if "writes" in parts:
        with scratch() as (url, where):
            print(f"server: {where}", flush=True)
            w = bench_writes(url, args.requests, args.single, args.dim, args.seed)
        result["writes"] = w
        print(
            f"writes (load {w['load_average']:.1f}): {w['requests_per_s']:,.0f} requests/s "
            f"through the writer ({w['records_per_s']:,.0f} decisions+outcomes rows/s, "
            f"{w['requests']:,} requests); feedback one by one {w['feedback_one_per_s']:,.0f}/s, "
            f"in batches of 1,000 {w['feedback_batched_per_s']:,.0f}/s",
            flush=True,
        )
    if "learner" in parts:
        result["learner"] = []
        print("learner loop against Postgres (production snapshot rule):", flush=True)
        for shape in args.loop_shapes.split(","):
            a, d = (int(v) for v in shape.split("x"))
            with scratch() as (url, _where):
                r = bench_learner(url, a, d, args.events, args.seed)
            result["learner"].append(r)
            print(
                f"  {a:>3} arms d={d:<4} loop {r['loop_events_per_s']:>8,.0f} events/s  "
                f"claim alone {r['claim_events_per_s']:>8,.0f}/s  versions {r['versions']} "
                f"({r['state_mb_each']:.2f} MB each)  (load {r['load_average']:.1f})",
                flush=True,
            )
    if "grid" in parts:
        print("LinUCB in process, one thread, batches of 5,000:", flush=True)
        result["grid"] = bench_grid(
            [int(v) for v in args.arms.split(",")],
            [int(v) for v in args.dims.split(",")],
            args.seed,
        )
    if "growth" in parts:
        print(
            f"the log as it grows (one request every {args.spacing_s:g} s, newest now; "
            f"context dim {args.dim}):",
            flush=True,
        )
        with scratch() as (url, _where):
            g = bench_growth(
                url,
                [int(v) for v in args.log_sizes.split(",")],
                args.dim,
                args.spacing_s,
                args.keep_days,
                args.prune_batch,
            )
        result["growth"] = g
        print_growth(g)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
