"""Ray nodes started as the README's cluster section starts them (``ray start`` in a
shell that exports the settings), each with ports and a temp dir of its own, so that
they never meet another Ray on this machine.

A node's processes are found by its temp dir (on their command line, or the
``BANDITCTL_RAY_NODE`` variable every process of the node inherits) and stopped that
way: ``ray stop`` would stop every Ray process on the machine, other people's too.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controlplane.cli.launch import NODE_MARKER, LocalRay

BIN = Path(sys.executable).parent  # the venv's ray, serve and banditctl
RAN: list[list[str]] = []  # every command run, in order (checked against the README)


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that nothing listens on now (held together while chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def worker_port_range(width: int = 48) -> tuple[int, int]:
    """A range of ports, all free now, for one node's worker processes (Ray's default,
    10002-19999, is shared by every node on the machine)."""
    for _ in range(200):
        base = random.randrange(30000, 60000 - width)
        if all(_port_free(p) for p in range(base, base + width)):
            return base, base + width - 1
    raise RuntimeError("no free range of worker ports")


def new_token() -> str:
    """A cluster token as ``ray get-auth-token --generate`` makes one (256 bits, hex)."""
    return secrets.token_hex(32)


@dataclass
class Node:
    """One ``ray start`` node. ``env``: what the README's step 2 exports in the node's
    shell (database, secrets, API keys, the Ray token)."""

    name: str
    temp_dir: str
    env: dict[str, str]
    head_address: str | None = None  # None: this is the head
    resources: dict[str, float] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    worker_ports: tuple[int, int] = (0, 0)
    log: list[str] = field(default_factory=list)

    @classmethod
    def create(
        cls,
        name: str,
        temp_dir: str,
        env: dict[str, str],
        *,
        head_address: str | None = None,
        resources: dict[str, float] | None = None,
    ) -> Node:
        keys = [
            "node_manager",
            "object_manager",
            "dashboard_agent_listen",
            "dashboard_agent_grpc",
            "runtime_env_agent",
            "metrics_export",
        ]
        if head_address is None:
            keys += ["gcs", "dashboard", "ray_client_server"]
        ports = dict(zip(keys, free_ports(len(keys)), strict=True))
        Path(temp_dir).mkdir(parents=True, exist_ok=True)
        return cls(
            name,
            temp_dir,
            env,
            head_address,
            dict(resources or {}),
            ports,
            worker_port_range(),
        )

    @property
    def is_head(self) -> bool:
        return self.head_address is None

    @property
    def gcs_address(self) -> str:
        return self.head_address or f"127.0.0.1:{self.ports['gcs']}"

    @property
    def dashboard_url(self) -> str:
        assert self.is_head
        return f"http://127.0.0.1:{self.ports['dashboard']}"

    def start_command(self) -> list[str]:
        p = self.ports
        cmd = [str(BIN / "ray"), "start"]
        if self.is_head:
            cmd += [
                "--head",
                f"--port={p['gcs']}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={p['dashboard']}",
                f"--ray-client-server-port={p['ray_client_server']}",
            ]
        else:
            cmd += [f"--address={self.head_address}"]
        cmd += [
            "--node-ip-address=127.0.0.1",
            f"--node-manager-port={p['node_manager']}",
            f"--object-manager-port={p['object_manager']}",
            f"--dashboard-agent-listen-port={p['dashboard_agent_listen']}",
            f"--dashboard-agent-grpc-port={p['dashboard_agent_grpc']}",
            f"--runtime-env-agent-port={p['runtime_env_agent']}",
            f"--metrics-export-port={p['metrics_export']}",
            f"--min-worker-port={self.worker_ports[0]}",
            f"--max-worker-port={self.worker_ports[1]}",
            f"--temp-dir={self.temp_dir}",
            "--num-cpus=1",
            "--object-store-memory=100000000",
            f"--resources={json.dumps(self.resources)}",
            "--disable-usage-stats",
        ]
        return cmd

    def process_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(self.env)
        env[NODE_MARKER] = self.temp_dir  # every process of the node inherits it
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        return env

    def start(self, timeout_s: float = 180.0, attempts: int = 3) -> float:
        """``ray start``; the seconds it took. A start that times out on a busy machine is
        retried once every process of the failed attempt is stopped (as ``banditctl up``
        does). Raises with Ray's output on failure."""
        t0 = time.monotonic()
        for attempt in range(1, attempts + 1):
            RAN.append(self.start_command())
            done = subprocess.run(
                self.start_command(),
                env=self.process_env(),
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
            self.log.append(done.stdout[-3000:] + done.stderr[-3000:])
            if done.returncode == 0:
                return time.monotonic() - t0
            self.kill()
            if "timed out during startup" not in self.log[-1] or attempt == attempts:
                break
            time.sleep(2.0)
        raise RuntimeError(f"ray start ({self.name}) exited {done.returncode}:\n{self.log[-1]}")

    def processes(self) -> list[Any]:
        return LocalRay(self.temp_dir).processes()

    def raylet(self) -> Any:
        found = [p for p in self.processes() if p.info["cmdline"] and "raylet" in p.name()]
        return found[0] if found else None

    def kill_raylet(self) -> None:
        """SIGKILL the node's raylet, as a crash of the machine would end it."""
        raylet = self.raylet()
        assert raylet is not None, f"{self.name}: no raylet running"
        raylet.kill()
        raylet.wait(10)

    def kill(self) -> int:
        """Stop every process of the node (TERM, then KILL); how many there were."""
        return LocalRay(self.temp_dir).kill(grace_s=2.0)


def run(
    cmd: Iterable[str], env: dict[str, str], timeout_s: float = 300.0
) -> subprocess.CompletedProcess[str]:
    """Run one of the README's commands; fail with its output when it exits non-zero."""
    argv = list(cmd)
    RAN.append(argv)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-4000:]}\n"
            f"{done.stderr[-4000:]}"
        )
    return done
