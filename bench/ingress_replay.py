"""What a client gets for the requests a SIGKILLed replica held, behind Serve's Python proxy
or its HAProxy ingress: a small Serve app (two replicas of a handler that reads the body
and sleeps ``--handler-s``), ``--clients`` threads sending requests in a closed loop, one
replica SIGKILLed ``--kill-after-s`` in; the statuses seen, and which requests started
before the kill failed.

    python bench/ingress_replay.py --ingress haproxy --retry-on "conn-failure empty-response" \\
        --method POST --body 100 --runs 3 [--no-buffer-requests]

The HAProxy ingress gets the Serve controller's environment that banditctl's
``ingress.kind: haproxy`` gives (``ingress.buffer_requests`` unless ``--no-buffer-requests``).
A local Ray node starts for the runs (its GCS on a free port) and stops at the end; Serve
starts again for each run. ``--port`` is the HTTP port; HAProxy's other ports and the
replicas' take the 19 after it; any ``RAY_SERVE_HAPROXY_*`` variable of the environment
is passed on. ``--split-body-s S`` makes each client send a POST's headers and its body
S seconds apart (two writes), as a slow or Nagle-delayed client does. ``--log-dir DIR``
keeps, per run, HAProxy's access log (``RAY_SERVE_HAPROXY_LOG_TARGET="stderr format raw"``
unless set), its config, the Serve logs of its manager and the failures' wall-clock times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def haproxy_env(port: int, retry_on: str, buffer_requests: bool) -> dict[str, str]:
    """The Serve controller's environment that ``ingress.kind: haproxy`` gives, on the
    ports from ``port`` up."""
    from controlplane.config import IngressConfig

    ports = {
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": port + 1,
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": port + 2,
        "RAY_SERVE_HAPROXY_METRICS_PORT": port + 3,
        "RAY_SERVE_HAPROXY_STATS_PORT": port + 4,
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": port + 5,
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": port + 12,
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": port + 13,
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": port + 19,
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": 1,
    }
    ingress = IngressConfig(
        kind="haproxy",
        retry_on=tuple(retry_on.split()),
        buffer_requests=buffer_requests,
        env={k: str(v) for k, v in ports.items()},
    )
    return ingress.controller_env()


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

    env = (
        haproxy_env(args.port, args.retry_on, args.buffer_requests)
        if args.ingress == "haproxy"
        else {}
    )
    if args.haproxy_binary:
        env["RAY_SERVE_HAPROXY_BINARY_PATH"] = args.haproxy_binary
    if env:
        env.update({k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE_HAPROXY_")})
        if args.log_dir:
            env.setdefault("RAY_SERVE_HAPROXY_LOG_TARGET", "stderr format raw")
    try:
        serve.start(
            http_options={"host": "127.0.0.1", "port": args.port},
            controller_options={"runtime_env": {"env_vars": env}} if env else None,
        )
        serve.run(Echo.bind(), name="replay", route_prefix="/")  # type: ignore[attr-defined]
    except Exception as exc:  # on a loaded machine: its HAProxy manager failed its checks
        serve.shutdown()
        return {"serve_did_not_start": f"{type(exc).__name__}: {str(exc)[:160]}"}
    base = f"http://127.0.0.1:{args.port}/"
    pids = {httpx.get(base, timeout=10).json()["pid"] for _ in range(10)}
    results: list[tuple[float, str]] = []
    failures: list[dict[str, Any]] = []
    lock = threading.Lock()
    stop = threading.Event()
    body = b"x" * args.body

    def split_body() -> Any:
        time.sleep(args.split_body_s)
        yield body

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                t, wall = time.monotonic(), time.time()
                try:
                    if body and args.split_body_s:
                        r = http.request(
                            args.method,
                            base,
                            content=split_body(),
                            headers={"Content-Length": str(len(body))},
                        )
                    else:
                        r = http.request(args.method, base, content=body or None)
                    got = str(r.status_code)
                except httpx.HTTPError as exc:
                    got = type(exc).__name__
                    with lock:
                        failures.append({"wall": wall, "t": t, "error": repr(exc)})
                with lock:
                    results.append((t, got))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
    for th in threads:
        th.start()
    time.sleep(args.kill_after_s)
    killed, killed_wall = time.monotonic(), time.time()
    os.kill(min(pids), signal.SIGKILL)
    time.sleep(args.after_s)
    stop.set()
    for th in threads:
        th.join(60)
    if args.log_dir:
        keep_logs(Path(args.log_dir), killed_wall, min(pids), failures)
    serve.shutdown()
    failed = [round(t - killed, 2) for t, got in results if got != "200"]
    return {
        "replicas_seen": len(pids),
        "sent": len(results),
        "answered": sum(1 for _, got in results if got == "200"),
        "5xx": sum(1 for _, got in results if got.startswith("5")),
        "no_answer": sum(1 for _, got in results if not got.isdigit()),
        "statuses": dict(Counter(got for _, got in results)),
        "failed_started_s_from_kill": failed,
    }


def keep_logs(
    into: Path, killed_wall: float, killed_pid: int, failures: list[dict[str, Any]]
) -> None:
    """HAProxy's files on this node (its access logs, one per process it started, and its
    config) and the Serve logs of its manager, into a new folder under ``into``."""
    import ray

    run = into / f"run-{time.strftime('%H%M%S')}"
    run.mkdir(parents=True)
    node = ray.get_runtime_context().get_node_id()
    haproxy_dir = Path("/tmp/haproxy-serve") / node
    if haproxy_dir.is_dir():
        for f in haproxy_dir.iterdir():
            if f.is_file() and (f.suffix in (".log", ".cfg")):
                shutil.copy(f, run / f.name)
    session = Path(ray._private.worker.global_worker.node.get_session_dir_path())
    for f in (session / "logs" / "serve").glob("*"):
        if "haproxy" in f.name.lower() or "controller" in f.name.lower():
            shutil.copy(f, run / f.name)
    (run / "kill.json").write_text(
        json.dumps({"killed_wall": killed_wall, "killed_pid": killed_pid, "failures": failures})
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ingress", choices=("proxy", "haproxy"), default="haproxy")
    p.add_argument("--retry-on", default="conn-failure empty-response")
    p.add_argument(
        "--no-buffer-requests",
        dest="buffer_requests",
        action="store_false",
        help="ingress.buffer_requests: false (HAProxy sends a request on before its body came)",
    )
    p.add_argument("--haproxy-binary", help="RAY_SERVE_HAPROXY_BINARY_PATH (default: Serve's)")
    p.add_argument("--method", choices=("GET", "POST"), default="POST")
    p.add_argument("--body", type=int, default=100, help="request body bytes (POST)")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--handler-s", type=float, default=0.3)
    p.add_argument("--kill-after-s", type=float, default=2.0)
    p.add_argument("--after-s", type=float, default=8.0)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--port", type=int, default=8250)
    p.add_argument("--split-body-s", type=float, default=0.0)
    p.add_argument("--log-dir", help="keep HAProxy's logs and config of each run here")
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
