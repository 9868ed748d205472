"""The control plane deployed on a local Ray Serve against a private PostgreSQL, for the
fault probes (``test_serve_faults.py``) and the soak bench (``bench/bench_soak.py``):
the config they run, the processes of its replicas (to SIGKILL or to measure), and the
database checks every probe ends with."""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil
from sqlalchemy import Engine, create_engine, text

from controlplane.cli.demo import demo_config
from controlplane.config import BanditConfig

SECRET = "probe-secret-0123456789abcdef"


def probe_config(
    port: int,
    *,
    adapters: bool = True,
    latency_scale: float = 0.0,
    ingress: dict[str, Any] | None = None,
    **gateway: Any,
) -> BanditConfig:
    """The demo's scenario (four models on replay backends, answering at once unless
    ``latency_scale``), with ``adapters`` two LoRA adapters of the small model under
    POLAR (so a cache controller runs), a fast learner, a short outcome timeout
    (decisions a crashed gateway never closed), ``gateway``'s fields and ``ingress``
    set."""
    data = demo_config().model_dump(mode="json")
    if adapters:
        data["arms"] += [
            {"name": f"small:{a}", "model": "small", "adapter": a, "backend": "replay"}
            for a in ("a0", "a1")
        ]
        data["cache"].update(
            policy={"kind": "polar", "epoch_s": 2.0}, slots_per_replica=1, tick_s=0.5
        )
    data["http_port"] = port
    data["objective"]["feedback_window_s"] = 30.0
    data["gateway"].update(policy_refresh_s=0.5, **gateway)
    data["learner_service"].update(
        poll_interval_s=0.1,
        snapshot_every_events=50,
        snapshot_every_s=0.5,
        min_snapshot_interval_s=0.2,
        outcome_timeout_s=8.0,
    )
    data["replay"]["latency_scale"] = latency_scale
    if ingress is not None:
        data["ingress"] = ingress
    return BanditConfig.model_validate(data)


@dataclass
class App:
    config: BanditConfig
    db_url: str
    base_url: str

    def engine(self) -> Engine:
        return create_engine(self.db_url, pool_size=2)


def deploy_app(config: BanditConfig, db_url: str, timeout_s: float = 240.0) -> App:
    from controlplane.cli.launch import deploy, wait_ready
    from feedback import migrate

    migrate.upgrade(db_url)
    instance = uuid.uuid4().hex
    base = deploy(config, db_url, SECRET, instance_id=instance)
    wait_ready(base, timeout_s=timeout_s, instance_id=instance)
    return App(config, db_url, base)


def _node_processes() -> list[psutil.Process]:
    """The processes of the local Ray node this process started (by its temp dir, as
    ``LocalRay`` finds them: never another Ray's on this machine)."""
    from ray._private import worker

    from controlplane.cli.launch import LocalRay

    node = worker._global_node
    assert node is not None, "Ray is not started"
    return list(LocalRay(node.get_temp_dir_path()).processes())


def _title(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def replica_processes(deployment: str) -> list[psutil.Process]:
    """The live processes of ``deployment``'s replicas (their title is
    ``ray::...ServeReplica:<app>:<deployment>[.<method>]``)."""
    from controlplane.cli.launch import APP_NAME

    pattern = re.compile(rf"ServeReplica:{re.escape(APP_NAME)}:{re.escape(deployment)}(\.|$| )")
    return [p for p in _node_processes() if pattern.search(_title(p))]


def serve_actor_processes(actor: str) -> list[psutil.Process]:
    """The processes of Serve's ``actor`` on this node (``ServeController``, ``ProxyActor``)."""
    return [p for p in _node_processes() if _title(p).startswith(f"ray::{actor}")]


def haproxy_processes() -> list[psutil.Process]:
    """The HAProxy processes of this node's Serve (``ingress.kind: haproxy``): the one
    serving the port, and any that a reload left finishing its open connections."""
    found = []
    for p in _node_processes():
        with contextlib.suppress(psutil.Error):
            if p.name() == "haproxy":
                found.append(p)
    return found


def sigkill(proc: psutil.Process) -> None:
    proc.kill()
    proc.wait(10)


def wait_new(
    processes: Callable[[], list[psutil.Process]],
    old_pid: int | set[int],
    what: str,
    timeout_s: float = 120.0,
) -> float:
    """Wait until ``processes()`` holds one other than ``old_pid`` (or than every one of a
    set: those there were before the kill); seconds waited."""
    old = {old_pid} if isinstance(old_pid, int) else old_pid
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if any(p.pid not in old for p in processes()):
            return time.monotonic() - t0
        time.sleep(0.25)
    raise AssertionError(f"no new {what} within {timeout_s:.0f}s")


def wait_replaced(deployment: str, old_pid: int | set[int], timeout_s: float = 120.0) -> float:
    """Wait for a live replica of ``deployment`` other than ``old_pid`` (see
    :func:`wait_new`); seconds waited."""
    return wait_new(
        lambda: replica_processes(deployment), old_pid, f"{deployment} replica", timeout_s
    )


def rss_mb(procs: list[psutil.Process]) -> float:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def count(engine: Engine, sql: str, **params: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql), params).scalar_one())


def missing_rows(engine: Engine, request_ids: list[str], table: str) -> list[str]:
    """The ids of ``request_ids`` without a row in ``table`` (decisions, outcomes or
    feedback)."""
    if not request_ids:
        return []
    with engine.connect() as conn:
        rows = conn.execute(
            text(f"SELECT DISTINCT request_id::text FROM {table} WHERE request_id = ANY(:ids)"),
            {"ids": [uuid.UUID(r) for r in request_ids]},
        ).all()
    have = {r[0] for r in rows}
    return [r for r in request_ids if r not in have]


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def credit_check(engine: Engine) -> dict[str, int]:
    """Exactly-once, against the database: every decision credited, each with its own
    credit number, and the latest snapshot's watermark and events applied covering
    exactly the credited decisions (an event applied twice would count twice). Both
    reads see one snapshot of the database (REPEATABLE READ): read apart, the learner
    could credit decisions between them."""
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        row = conn.execute(
            text(
                "SELECT count(*), count(credit_seq), count(DISTINCT credit_seq), "
                "coalesce(max(credit_seq), 0) FROM decisions"
            )
        ).one()
        snap = conn.execute(
            text(
                "SELECT watermark, events_applied FROM policy_snapshots "
                "ORDER BY version DESC LIMIT 1"
            )
        ).one()
    return {
        "decisions": int(row[0]),
        "credited": int(row[1]),
        "distinct_credits": int(row[2]),
        "max_credit": int(row[3]),
        "watermark": int(snap[0]),
        "events_applied": int(snap[1]),
    }
