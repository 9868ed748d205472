"""POLAR on Ray Serve against plain multiplexing LRU, on the same request trace.

Six LoRA adapters on one base model, two slots per replica. Each task has its
own adapter (feedback teaches the learner which); two tasks carry most of the
traffic and the rest arrive as a scan of cold adapters. Serve's multiplexing
LRU lets every cold request evict a hot adapter, which the next hot request
pages back in; POLAR's plan keeps the adapters the learner values where the
demand is and serves cold ones by one-off loads. Adapters are fake but their
loads are real (allocate and copy the weights).
"""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
from ray import serve
from sqlalchemy import create_engine, text

from controlplane.cli.launch import APP_NAME, deploy, wait_ready
from controlplane.config import parse_config
from deployments.pool import pool_name
from feedback import migrate

pytestmark = pytest.mark.ray

SECRET = "residency-test-secret-0123456789"
ADAPTERS = [f"a{i}" for i in range(6)]
TASKS = [f"task{i}" for i in range(6)]
HOT = (0, 1)


def _config(policy: str | dict, port: int):
    return parse_config(
        {
            "arms": [{"name": f"small:{a}", "model": "small", "adapter": a} for a in ADAPTERS],
            "featurizer": {"dim": 32, "tasks": TASKS},
            "learner": {"kind": "linucb", "alpha": 0.1},
            "objective": {"weights": {"quality": 1.0}, "feedback_window_s": 600},
            "gateway": {"policy_refresh_s": 0.2},
            "learner_service": {"poll_interval_s": 0.05, "snapshot_every_events": 5, "snapshot_every_s": 0.2,
                                "min_snapshot_interval_s": 0.0, "snapshot_min_change": 0.0},
            "auth": {"open_chat": True},
            "replay": {"latency_scale": 0.0},
            "cache": {"policy": policy, "slots_per_replica": 2, "tick_s": 0.1, "clusters": 6,
                      "adapter_rank": 16},
            "http_port": port,
        },
        "test",
    )  # fmt: skip


def _trace(seed: int, n: int) -> list[int]:
    """Task per request: 80% the two hot tasks, 20% a scan over the four cold ones."""
    rng = np.random.default_rng(seed)
    cold = iter(np.tile(np.arange(2, 6), n))
    return [int(rng.choice(HOT)) if rng.random() < 0.8 else int(next(cold)) for _ in range(n)]


def _send(http: httpx.Client, task: int, feedback: bool) -> None:
    body = {
        "model": f"small:{ADAPTERS[task]}",
        "messages": [{"role": "user", "content": f"request for {TASKS[task]} number {task}"}],
        "metadata": {"task": TASKS[task]},
    }
    r = http.post("/chat/completions", json=body)
    r.raise_for_status()
    if feedback:
        meta = r.json()["banditctl"]
        http.post("/feedback", json={"request_id": meta["request_id"], "quality": 1.0,
                                     "feedback_token": meta["feedback_token"]}).raise_for_status()  # fmt: skip


def _stats() -> dict:
    h = serve.get_deployment_handle(pool_name("small"), app_name=APP_NAME)
    return h.residency_stats.remote().result(timeout_s=30)


def _run(policy: str | dict, port: int, pg_server) -> dict:
    url = pg_server.create_database("banditctl_res")
    migrate.upgrade(url)
    base = deploy(_config(policy, port), url, SECRET)
    wait_ready(base, timeout_s=180)
    try:
        with httpx.Client(base_url=base + "/v1", timeout=30) as http:
            for task in _trace(1, 60):  # learn: every adapter is good for its own task
                _send(http, task, feedback=True)
            time.sleep(3.0)  # a snapshot, and (POLAR) a plan made from it
            before = _stats()
            for task in _trace(2, 200):
                _send(http, task, feedback=False)
            after = _stats()
            cache_status = http.get("/stats").json()["cache"]
        eng = create_engine(url)
        with eng.connect() as conn:
            epochs = conn.execute(
                text("SELECT status, count(*) FROM residency_epochs GROUP BY status")
            ).all()
            epoch_hits = int(
                conn.execute(
                    text("SELECT coalesce(sum(hits), 0) FROM residency_epochs")
                ).scalar_one()
            )
        eng.dispose()
        return {
            "page_ins": after["page_ins"] - before["page_ins"],
            "hits": after["hits"] - before["hits"],
            "resident": after["resident"],
            "capacity": after["capacity"],
            "epochs": {str(s): int(n) for s, n in epochs},
            "epoch_hits": epoch_hits,
            "all_hits": after["hits"],
            "cache_status": cache_status,
        }
    finally:
        serve.delete(APP_NAME)


def test_polar_pages_in_less_than_serve_lru_on_the_same_trace(ray_session, pg_server):
    lru = _run("lru", ray_session, pg_server)
    polar = _run({"kind": "polar", "epoch_s": 1.0}, ray_session, pg_server)
    print(f"\nresidency trace of 200 requests, 6 adapters, 2 slots: lru {lru}\npolar {polar}")
    assert lru["epochs"] == {}  # plain multiplexing: no controller, no plans
    assert lru["cache_status"] is None
    # /v1/stats reports the controller: its epochs and what it holds, no error
    assert polar["cache_status"]["epochs"] >= 2 and polar["cache_status"]["error"] is None
    assert len(polar["cache_status"]["residency"][pool_name("small")]) <= polar["capacity"]
    assert polar["epochs"].get("applied", 0) >= 2  # plans reached the replica and were recorded
    assert len(polar["resident"]) <= polar["capacity"] and len(lru["resident"]) <= lru["capacity"]
    assert set(polar["resident"]) == {ADAPTERS[i] for i in HOT}
    assert polar["page_ins"] < 0.7 * lru["page_ins"], (polar, lru)
    assert polar["hits"] > lru["hits"]
    # each epoch's row carries the traffic it served (the last epoch's settles when it closes)
    assert 0 < polar["epoch_hits"] <= polar["all_hits"]
