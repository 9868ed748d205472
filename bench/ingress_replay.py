"""What a client gets for the requests a SIGKILLed replica held, behind Serve's Python proxy
or its HAProxy ingress: a small Serve app (two replicas of a handler that reads the body
and sleeps ``--handler-s``), ``--clients`` threads sending requests in a closed loop, one
replica SIGKILLed ``--kill-after-s`` in; the statuses seen, and which requests started
before the kill failed.

    python bench/ingress_replay.py --ingress haproxy --retry-on "conn-failure empty-response" \\
        --method POST --body 100 --runs 3

A local Ray node starts for the runs (its GCS on a free port) and stops at the end; Serve
starts again for each run. ``--port`` is the HTTP port; HAProxy's other ports and the
replicas' take the 19 after it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def haproxy_env(port: int, retry_on: str) -> dict[str, str]:
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_RETRY_ON": retry_on,
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(port + 1),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(port + 2),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(port + 3),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(port + 4),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port + 5),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 12),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(port + 13),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(port + 19),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
    }


def one_run(args: argparse.Namespace) -> dict[str, Any]:
    import httpx
    from ray import serve

    handler_s = args.handler_s

    @serve.deployment(num_replicas=2, max_ongoing_requests=8)
    class Echo:
        async def __call__(self, request: Any) -> dict[str, int]:
            await request.body()
            await asyncio.sleep(handler_s)
            return {"pid": os.getpid()}

    env = haproxy_env(args.port, args.retry_on) if args.ingress == "haproxy" else {}
    if args.haproxy_binary:
        env["RAY_SERVE_HAPROXY_BINARY_PATH"] = args.haproxy_binary
    serve.start(
        http_options={"host": "127.0.0.1", "port": args.port},
        controller_options={"runtime_env": {"env_vars": env}} if env else None,
    )
    serve.run(Echo.bind(), name="replay", route_prefix="/")  # type: ignore[attr-defined]
    base = f"http://127.0.0.1:{args.port}/"
    pids = {httpx.get(base, timeout=10).json()["pid"] for _ in range(10)}
    results: list[tuple[float, str]] = []
    lock = threading.Lock()
    stop = threading.Event()
    body = b"x" * args.body

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                t = time.monotonic()
                try:
                    r = http.request(args.method, base, content=body or None)
                    got = str(r.status_code)
                except httpx.HTTPError as exc:
                    got = type(exc).__name__
                with lock:
                    results.append((t, got))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
    for th in threads:
        th.start()
    time.sleep(args.kill_after_s)
    killed = time.monotonic()
    os.kill(min(pids), signal.SIGKILL)
    time.sleep(args.after_s)
    stop.set()
    for th in threads:
        th.join(60)
    serve.shutdown()
    failed = [round(t - killed, 2) for t, got in results if got != "200"]
    return {
        "replicas_seen": len(pids),
        "statuses": dict(Counter(got for _, got in results)),
        "failed_started_s_from_kill": failed,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ingress", choices=("proxy", "haproxy"), default="haproxy")
    p.add_argument("--retry-on", default="conn-failure empty-response")
    p.add_argument("--haproxy-binary", help="RAY_SERVE_HAPROXY_BINARY_PATH (default: Serve's)")
    p.add_argument("--method", choices=("GET", "POST"), default="POST")
    p.add_argument("--body", type=int, default=100, help="request body bytes (POST)")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--handler-s", type=float, default=0.3)
    p.add_argument("--kill-after-s", type=float, default=2.0)
    p.add_argument("--after-s", type=float, default=8.0)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--port", type=int, default=8250)
    args = p.parse_args()
    if args.method == "GET":
        args.body = 0

    from controlplane.cli.launch import init_ray, stop_ray

    node = init_ray(None)
    try:
        for i in range(args.runs):
            print(f"run {i + 1}: {one_run(args)}", flush=True)
    finally:
        stop_ray(node)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
