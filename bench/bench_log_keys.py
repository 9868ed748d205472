"""The decision log's primary key: random ids (UUIDv4) against time-ordered ones (UUIDv7,
``feedback.records.new_request_id``), written side by side.

    python bench/bench_log_keys.py [--database-url URL] [--decisions 1000000] [--measured 20000]

Two scratch databases at head on one server take the same decisions and outcomes, in
alternating batches of the gateway writer's COPY (``--batch``), one keyed by
``uuid.uuid4()``, the other by ``new_request_id()``. After ``--decisions`` of them, a
CHECKPOINT; then ``--measured`` more, as a live log takes between two checkpoints (5
minutes by default: 30,000 at 100 requests/s) while its indexes hold far more. Over
those, per kind: WAL bytes per decision (each batch's WAL position before and after: a
page first dirtied after a checkpoint is written whole), decisions written per second,
and the primary key's blocks read from outside PostgreSQL's buffers; the primary key's
size at the end. Without a URL (and no DATABASE_URL) an embedded PostgreSQL starts in a
temp dir.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scratch import scratch_database  # noqa: E402

from controlplane.cli.demo import demo_config  # noqa: E402
from controlplane.learner_loop import arm_records  # noqa: E402
from feedback.records import DecisionRecord, OutcomeRecord, new_request_id  # noqa: E402
from feedback.repositories import arms as arms_repo  # noqa: E402
from feedback.repositories import request_log  # noqa: E402

KINDS = {"uuid4 (random)": uuid.uuid4, "uuid7 (time-ordered)": new_request_id}


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    ap.add_argument("--decisions", type=int, default=1_000_000)
    ap.add_argument("--measured", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args()
    cfg = demo_config()
    arms = [a.name for a in cfg.arms]
    ctx = np.random.default_rng(0).normal(size=(256, cfg.featurizer.dim)).astype(np.float32)
    with contextlib.ExitStack() as stack:
        engines = {}
        for kind in KINDS:
            url, where = stack.enter_context(scratch_database(args.database_url, "banditctl_benchkeys"))  # fmt: skip
            engines[kind] = create_engine(url)
            stack.callback(engines[kind].dispose)
            with engines[kind].begin() as conn:
                arms_repo.upsert_arms(conn, arm_records(cfg))
        print(f"server: {where}; batches of {args.batch:,} decisions and their outcomes")
        wal = dict.fromkeys(KINDS, 0)
        secs = dict.fromkeys(KINDS, 0.0)
        reads0: dict[str, int] = {}
        t0 = datetime.now(UTC) - timedelta(days=1)
        half = args.decisions // args.batch * args.batch  # measured from here
        total = half + args.measured
        for lo in range(0, total, args.batch):
            if lo == half:
                for kind, engine in engines.items():
                    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                        conn.execute(text("CHECKPOINT"))
                        reads0[kind] = _pk_reads(conn)
            for kind, make_id in KINDS.items():
                ds, os_ = [], []
                for i in range(lo, min(total, lo + args.batch)):
                    at = t0 + timedelta(milliseconds=i)
                    d = DecisionRecord(make_id(), at, "auto", arms[i % len(arms)], ctx[i % 256], 0.5, 1, "linucb")  # fmt: skip
                    ds.append(d)
                    os_.append(OutcomeRecord(d.request_id, at, "ok", 300.0, energy_j=5.0, cost_usd=0.001))  # fmt: skip
                with engines[kind].begin() as conn:
                    before = _lsn(conn)
                    start = time.perf_counter()
                    request_log.write_decisions(conn, ds)
                    request_log.write_outcomes(conn, os_)
                if lo >= half:
                    with engines[kind].connect() as conn:
                        wal[kind] += _lsn(conn) - before
                    secs[kind] += time.perf_counter() - start
        measured = total - half
        print(f"after {half:,} and a CHECKPOINT, {measured:,} decisions each:")
        print(f"  {'ids':<22}{'WAL bytes/decision':>20}{'decisions/s':>13}{'pk blocks read':>16}{'pk size':>10}")  # fmt: skip
        for kind, engine in engines.items():
            with engine.connect() as conn:
                reads = _pk_reads(conn) - reads0[kind]
                size = conn.execute(text("SELECT pg_relation_size('pk_decisions')")).scalar_one()
            print(f"  {kind:<22}{wal[kind] / measured:20,.0f}{measured / secs[kind]:13,.0f}"
                  f"{reads:16,}{size / 2**20:8.0f} MB")  # fmt: skip
        v4, v7 = KINDS
        print(f"WAL ratio uuid4 / uuid7: {wal[v4] / wal[v7]:.2f}; write rate ratio uuid7 / uuid4: "
              f"{secs[v4] / secs[v7]:.2f}")  # fmt: skip
    return 0


def _lsn(conn) -> int:
    return int(conn.execute(text("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn")).scalar_one())  # fmt: skip


def _pk_reads(conn) -> int:
    return int(conn.execute(text(
        "SELECT coalesce(idx_blks_read, 0) FROM pg_statio_user_indexes WHERE indexrelname = 'pk_decisions'"
    )).scalar_one())  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
