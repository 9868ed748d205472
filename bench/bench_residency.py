"""POLAR against Serve's multiplexing LRU on real LoRA adapters, through the gateway.

    .venv/bin/python bench/bench_residency.py --backend hf --adapters 6 --slots 2 \\
        --requests 200 --json out.json

One local Ray; for each policy (``--policies``, default ``lru,polar``) a fresh
database and a fresh deployment of the same app: one pool of ``--adapters`` LoRA
adapters on one base model (``hf``: SmolLM2-135M-Instruct with adapters made by
``banditctl adapters make``, or found in ``--adapter-dir``; ``replay``: the fake
adapters, whose loads allocate and copy weights), ``--slots`` adapter slots.

The trace drifts: it runs in ``--phases`` phases, each with two hot adapters that
carry 80% of its requests (the hot pair moves on at each phase), the other 20% a
scan over the cold ones. Each request pins its adapter arm (``model``), as a client
of one fine-tune does, and carries its task, so that the cache controller sees the
demand. A warm-up of ``--warmup`` requests, every adapter in turn (feedback quality
1 for each, so the learner values every adapter on its own task), precedes the
measured trace.

The trace is paced: request k starts at k x ``--interval-s`` (1 s; a request that
ends late starts the next at once, counted in ``late_starts``), so both policies meet the
same timeline on a busy machine too: POLAR's epochs and its demand half-life are in
seconds. POLAR plans every ``--epoch-s`` (1 s) and forgets demand with a half-life of
three requests (``--half-life-s``; by default three intervals): a pinned request is demand for its adapter, and a
pool keeps a missed adapter in place of its least valued one when the controller's
admission values say it is worth more. The same trace replays without a model in
``cache_manager.sim.pinned``.

Every request streams (``stream: true``): time to first token is measured by the
client (send to first content delta, a page-in included), tokens/s over the rest of
the answer. The pool's own counters give page-ins, hits and the measured load time.
Writes ``{"policies": {"lru": {...}, "polar": {...}}, "ratios": {...}}``: per policy
``page_ins``, ``hits``, ``misses``, ``adapter_load_ms_mean``, ``ttft_ms_p50``,
``ttft_ms_p99``, ``tokens_per_s``; ratios are polar / lru.

``DATABASE_URL`` names a server to create the databases on (dropped and created
empty for each policy); unset, an embedded server in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sqlalchemy import make_url

from cache_manager.sim.pinned import drifting_trace

SECRET = "bench-residency-secret-0123456789"
# POLAR forgets demand with a half-life of about three requests: on the simulated trace
# (cache_manager.sim.pinned, 4 requests/s) 0.75 s paged least (tests/cache_manager/
# test_pinned_demand.py); a half-life of many requests keeps the last phase's hot pair
HALF_LIFE_REQUESTS = 3.0
DEFAULT_HALF_LIFE_S = 2.0


def make_adapters(args: argparse.Namespace) -> tuple[list[str], str | None]:
    """The adapters' names and their folder (hf), made unless ``--adapter-dir`` has them."""
    if args.backend == "replay":
        return [f"a{i}" for i in range(args.adapters)], None
    folder = Path(args.adapter_dir or tempfile.mkdtemp(prefix="bench-adapters-"))
    found = sorted(p.name for p in folder.iterdir() if (p / "adapter_config.json").exists())
    if len(found) >= args.adapters:
        return found[: args.adapters], str(folder)
    from controlplane.settings import get_settings
    from deployments.backends.hf_adapters import make_adapters as make
    from deployments.backends.hf_models import load_causal_lm, resolve_model

    files = resolve_model(None, get_settings().data_dir / "models")
    model, tokenizer = load_causal_lm(files.folder, None)
    start = time.perf_counter()
    made = make(
        model, tokenizer, folder, n=args.adapters, ranks=[4, 8, 16], steps=args.steps,
        seed=0, base=str(files.source),
    )  # fmt: skip
    print(f"made {len(made)} adapters in {time.perf_counter() - start:.1f} s in {folder}")
    return [a.name for a in made], str(folder)


def base_model(args: argparse.Namespace) -> str:
    """The base model's name: a model of the replay data set, or SmolLM2."""
    return "small" if args.backend == "replay" else "smol"


def half_life_s(args: argparse.Namespace) -> float:
    """POLAR's demand half-life: ``--half-life-s``, else the time of
    ``HALF_LIFE_REQUESTS`` requests: paced (``--interval-s``), or at the rate the
    previous policy's trace ran at (``args.measured_rate``), else ``DEFAULT_HALF_LIFE_S``."""
    if args.half_life_s is not None:
        return float(args.half_life_s)
    if args.interval_s > 0:
        return HALF_LIFE_REQUESTS * args.interval_s
    rate = getattr(args, "measured_rate", None)
    return HALF_LIFE_REQUESTS / rate if rate else DEFAULT_HALF_LIFE_S


def config(args: argparse.Namespace, policy: str, adapters: list[str], folder: str | None) -> Any:
    from controlplane.config import parse_config

    arm: dict[str, Any] = {"model": base_model(args), "backend": args.backend}
    if args.backend == "hf":
        arm |= {"adapter_dir": folder, "max_new_tokens": args.max_tokens}
    cache: dict[str, Any] = {
        "policy": "lru" if policy == "lru" else {"kind": "polar", "epoch_s": args.epoch_s},
        "slots_per_replica": args.slots,
        "tick_s": 0.1,
        "clusters": args.adapters,
        "demand_half_life_s": half_life_s(args),
    }
    return parse_config(
        {
            "arms": [{"name": f"{arm['model']}:{a}", "adapter": a, **arm} for a in adapters],
            "featurizer": {"dim": 32, "tasks": [f"task-{a}" for a in adapters]},
            "learner": {"kind": "linucb", "alpha": 0.1},
            "objective": {"weights": {"quality": 1.0}, "feedback_window_s": 600},
            "gateway": {"policy_refresh_s": 0.2},
            "learner_service": {"poll_interval_s": 0.05, "snapshot_every_events": 5,
                                "snapshot_every_s": 0.2, "min_snapshot_interval_s": 0.0,
                                "snapshot_min_change": 0.0},
            "auth": {"open_chat": True},
            "replay": {"latency_scale": 0.0},
            "cache": cache,
            "http_port": args.port,
        },
        "bench",
    )  # fmt: skip


def stream_one(http: httpx.Client, arm: str, task: str, max_tokens: int) -> dict[str, Any]:
    """One streamed chat completion: TTFT, tokens, seconds, and its banditctl fields."""
    body = {
        "model": arm,
        "messages": [{"role": "user", "content": f"Say something about {task}."}],
        "metadata": {"task": task},
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first: float | None = None
    deltas = 0
    usage: dict[str, Any] | None = None
    meta: dict[str, Any] = {}
    with http.stream("POST", "/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            meta = chunk.get("banditctl") or meta
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or ():
                if (choice.get("delta") or {}).get("content"):
                    deltas += 1
                    if first is None:
                        first = time.perf_counter()
    end = time.perf_counter()
    tokens = int(usage["completion_tokens"]) if usage else deltas
    first = end if first is None else first
    return {
        "ttft_ms": (first - start) * 1000.0,
        "tokens": tokens,
        "decode_s": end - first,
        "meta": meta,
    }


def pool_stats(model: str) -> dict[str, Any]:
    from ray import serve

    from controlplane.cli.launch import APP_NAME
    from deployments.pool import pool_name

    h = serve.get_deployment_handle(pool_name(model), app_name=APP_NAME)
    stats: dict[str, Any] = h.residency_stats.remote().result(timeout_s=60)
    return stats


def run_policy(
    args: argparse.Namespace, policy: str, adapters: list[str], folder: str | None, url: str
) -> dict[str, Any]:
    from ray import serve

    from controlplane.cli.launch import APP_NAME, deploy, wait_ready
    from feedback import migrate

    model = base_model(args)
    migrate.upgrade(url)
    base = deploy(config(args, policy, adapters, folder), url, SECRET)
    wait_ready(base, timeout_s=600)
    try:
        with httpx.Client(base_url=base + "/v1", timeout=300) as http:
            for i in [k % len(adapters) for k in range(args.warmup)]:  # each in turn
                a = adapters[i]
                got = stream_one(http, f"{model}:{a}", f"task-{a}", args.max_tokens)
                meta = got["meta"]
                if meta.get("request_id") and meta.get("feedback_token"):
                    http.post("/feedback", json={
                        "request_id": meta["request_id"], "quality": 1.0,
                        "feedback_token": meta["feedback_token"],
                    }).raise_for_status()  # fmt: skip
            time.sleep(max(3.0, 2 * args.epoch_s))  # a snapshot, and (POLAR) a plan from it
            before = pool_stats(model)
            runs = []
            late = 0
            t0 = time.perf_counter()
            trace = drifting_trace(args.seed, args.requests, len(adapters), args.phases)
            for k, i in enumerate(trace):
                # paced: request k starts at k intervals, so that every policy meets the
                # same timeline (POLAR's epochs and demand half-life are in seconds)
                wait = t0 + k * args.interval_s - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                elif args.interval_s > 0 and k > 0:
                    late += 1
                a = adapters[i]
                runs.append(stream_one(http, f"{model}:{a}", f"task-{a}", args.max_tokens))
            wall = time.perf_counter() - t0
            after = pool_stats(model)
            cache_status = http.get("/stats").json().get("cache")
    finally:
        serve.delete(APP_NAME)
    epochs = epoch_summary(url)
    page_ins = after["page_ins"] - before["page_ins"]
    load_s = after["load_s"] - before["load_s"]
    ttft = sorted(r["ttft_ms"] for r in runs)
    decode_s = sum(r["decode_s"] for r in runs)
    return {
        "requests": len(runs),
        "page_ins": page_ins,
        "hits": after["hits"] - before["hits"],
        "misses": after["misses"] - before["misses"],
        "admitted": after.get("admitted", 0) - before.get("admitted", 0),
        "adapter_load_ms_mean": 1000.0 * load_s / page_ins if page_ins else None,
        "ttft_ms_p50": statistics.median(ttft),
        "ttft_ms_p99": float(np.percentile(ttft, 99)),
        "tokens_per_s": sum(r["tokens"] for r in runs) / decode_s if decode_s > 0 else None,
        "wall_s": wall,
        "late_starts": late,
        "resident_at_end": after["resident"],
        "max_held": after.get("max_held"),
        "epochs": epochs,
        "controller": None
        if not cache_status
        else {k: cache_status.get(k) for k in ("epochs", "applied", "error", "load_ms")},
    }


def epoch_summary(url: str) -> dict[str, Any]:
    """The residency epochs the controller recorded: count by status, the errors."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT status, count(*), max(error) FROM residency_epochs GROUP BY status")
            ).all()
    finally:
        engine.dispose()
    return {str(r[0]): {"count": int(r[1]), "error": r[2]} for r in rows}


def database_url(policy: str, tmp: str, handles: list[Any]) -> str:
    from feedback.database import recreate_database, start_embedded

    name = f"bench_residency_{policy}"
    given = os.environ.get("DATABASE_URL")
    if given:
        url = make_url(given).set(database=name).render_as_string(hide_password=False)
        recreate_database(url)
        return url
    handle = start_embedded(Path(tmp), name)
    handles.append(handle)
    return handle.url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["hf", "replay"], default="hf")
    parser.add_argument("--adapters", type=int, default=6)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=36)
    parser.add_argument("--phases", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--epoch-s", type=float, default=1.0)
    parser.add_argument(
        "--interval-s",
        type=float,
        default=1.0,
        help="start request k of the trace at k intervals (0: back to back); late_starts"
        " counts those the machine could not start on time",
    )
    parser.add_argument(
        "--half-life-s",
        type=float,
        default=None,
        help="POLAR's demand half-life (seconds); default: three requests' time (three"
        " intervals; unpaced, at the rate the previous policy's trace ran at, 2 s first)",
    )
    parser.add_argument("--steps", type=int, default=4, help="adapters make: training steps")
    parser.add_argument("--adapter-dir", default=None, help="existing peft adapters to use")
    parser.add_argument("--policies", default="lru,polar")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from controlplane.cli.launch import init_ray, stop_ray

    adapters, folder = make_adapters(args)
    node = init_ray(None)
    handles: list[Any] = []
    results: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-residency-db-") as tmp:
            for policy in [p.strip() for p in args.policies.split(",") if p.strip()]:
                url = database_url(policy, tmp, handles)
                results[policy] = run_policy(args, policy, adapters, folder, url)
                results[policy]["half_life_s"] = half_life_s(args) if policy != "lru" else None
                args.measured_rate = results[policy]["requests"] / results[policy]["wall_s"]
                print(policy, json.dumps(results[policy]), flush=True)
            for h in handles:
                h.stop()
    finally:
        stop_ray(node)
    out: dict[str, Any] = {
        "backend": args.backend,
        "adapters": adapters,
        "slots": args.slots,
        "requests": args.requests,
        "phases": args.phases,
        "max_tokens": args.max_tokens,
        "policies": results,
    }
    if "lru" in results and "polar" in results:
        lru, polar = results["lru"], results["polar"]
        out["ratios"] = {
            k: polar[k] / lru[k]
            for k in ("page_ins", "ttft_ms_p50", "ttft_ms_p99", "tokens_per_s")
            if lru.get(k) and polar.get(k) is not None
        }
        print("polar / lru:", json.dumps(out["ratios"]))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
