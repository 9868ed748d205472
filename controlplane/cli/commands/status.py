"""``banditctl status``: the database and, when one answers, the running control plane.

Read-only unless ``--migrate``. Three sections, each labelled with where its
figures come from:

- database: where it is, the schema revision, table counts, the published
  policy version and snapshot storage, and the learner's lag (events ready but
  not credited yet), all read from PostgreSQL;
- gateway: ``/healthz`` and the learner's live status from ``/v1/stats`` at
  ``--url``;
- Ray Serve: application and deployment health with replicas per state, when
  a Ray cluster answers at ``RAY_ADDRESS`` or a local one is running. No Ray is
  ever started: an address that does not accept a connection within
  ``--timeout`` is reported as not running.

Exits 0 when it could report (whatever is not running), 1 when the database
cannot be reached.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import Connection

DEFAULT_URL = "http://127.0.0.1:8000"
APP_NAME = "banditctl"  # the Serve application `banditctl up` deploys (controlplane.cli.launch)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "status",
        help="report the database and the running control plane (read-only)",
        description="Report the database (where, revision, counts, policy version, learner "
        "lag) and, when they answer, the gateway at --url and the Ray Serve application. "
        "Changes nothing unless --migrate. Exits 1 when the database cannot be reached.",
    )
    p.add_argument(
        "--url", default=DEFAULT_URL, help=f"the gateway's base URL (default: {DEFAULT_URL})"
    )
    p.add_argument("--migrate", action="store_true", help="upgrade the schema to head first")
    p.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        help="seconds to wait for the gateway and for Ray to answer (default: 2)",
    )
    p.set_defaults(func=_status)


def _line(label: str, value: object) -> None:
    print(f"  {label:<13}: {value}")


def _status(args: argparse.Namespace) -> int:
    from controlplane.settings import get_settings

    settings = get_settings()
    print("database")
    if not _database(settings, args.migrate):
        return 1
    print(f"gateway ({args.url.rstrip('/')})")
    _gateway(args.url.rstrip("/"), args.timeout)
    print("ray serve")
    _ray(settings.ray_address, args.timeout)
    return 0


# -- database --------------------------------------------------------------------


def _database(settings: Any, migrate_first: bool) -> bool:
    """Print the database section; False when it cannot be reached."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from feedback import migrate

    if settings.database_url:
        where = f"DATABASE_URL {make_url(settings.database_url).render_as_string()}"
    else:
        pg_dir = settings.data_dir / "postgres"
        where = f"embedded under {pg_dir}"
        if not pg_dir.exists():  # starting one would create it: not for a read-only command
            _line("where", f"{where}: none yet (DATABASE_URL is unset)")
            print("  `banditctl up`, `banditctl demo` or `banditctl db upgrade` creates it.")
            return False
    _line("where", where)
    try:
        with settings.database() as db:
            if migrate_first:
                migrate.upgrade(db.url)
                _line("migrated", "upgraded to head (--migrate)")
            _report_database(db.url)
    except (SQLAlchemyError, OSError, ModuleNotFoundError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _line("error", f"cannot reach the database: {first}")
        return False
    return True


def _report_database(url: str) -> None:
    from feedback import migrate
    from feedback.database import make_engine

    engine = make_engine(url, pool_size=1, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:  # raises when the server cannot be reached
            rev = migrate.current_revision(url)
            head = migrate.head_revision()
            if rev is None:
                _line("revision", "none: an empty database")
                print(
                    "  `banditctl db upgrade` (or `banditctl status --migrate`) creates the schema."
                )
                return
            note = "head" if rev == head else f"head is {head}: run `banditctl db upgrade`"
            _line("revision", f"{rev} ({note})")
            _report_tables(conn)
    finally:
        engine.dispose()


def _report_tables(conn: Connection) -> None:
    from datetime import UTC, datetime

    from feedback.objective import Objective
    from feedback.repositories import reports, reward_stream, snapshots

    counts = reports.table_counts(conn)
    _line("tables", ", ".join(f"{name} {n:,}" for name, n in counts.items()))
    latest = snapshots.list_snapshots(conn, limit=1)
    if not latest:
        _line("policy", "none published yet (the learner writes version 1 when it starts)")
        objective = Objective()
    else:
        snap = latest[0]
        store = snapshots.storage(conn)
        _line(
            "policy",
            f"version {snap['version']} ({snap['reason']}, {snap['created_at']:%Y-%m-%d %H:%M:%S %Z}): "
            f"watermark {snap['watermark']}, {snap['events_applied']:,} events applied",
        )
        _line(
            "versions",
            f"{store['versions']:,} stored, {store['with_state']:,} holding a state "
            f"({_size(store['state_bytes'])}), "
            f"{store['versions'] - store['with_state']:,} compacted by retention",
        )
        try:  # lag is measured with the running objective's feedback window
            objective = Objective.model_validate((snap.get("config") or {})["objective"])
        except (KeyError, TypeError, ValueError):
            objective = Objective()
    lag = reward_stream.learner_lag(conn, objective, datetime.now(UTC))
    _line(
        "learner lag",
        f"{lag['events_behind']:,.0f} events ready, not credited yet; oldest "
        f"{lag['seconds_behind']:.1f} s (feedback window {objective.feedback_window_s:g} s)",
    )


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.0f} KB"


# -- gateway ---------------------------------------------------------------------


def _unhealthy(health: Any) -> str | None:
    """The loops a 503 from ``/healthz`` names, with their problems."""
    try:
        loops = health.json().get("loops") or {}
    except ValueError:
        return None
    bad = [f"{name} {r.get('problem')}" for name, r in loops.items() if not r.get("healthy")]
    return "unhealthy: " + "; ".join(bad) if bad else None


def _gateway(url: str, timeout: float) -> None:
    import httpx

    try:
        health = httpx.get(url + "/healthz", timeout=timeout)
    except httpx.HTTPError as exc:
        _line("/healthz", f"not running (no answer: {type(exc).__name__})")
        return
    if health.status_code != 200:
        _line("/healthz", f"HTTP {health.status_code}: {_unhealthy(health) or health.text[:200]}")
        return
    body = health.json()
    _line("/healthz", f"ok, this replica serves policy version {body.get('policy_version')}")
    try:
        stats = httpx.get(url + "/v1/stats", timeout=max(timeout, 6.0))
        learner = stats.json().get("learner") if stats.status_code == 200 else None
    except (httpx.HTTPError, ValueError) as exc:
        _line("learner", f"unknown (/v1/stats: {type(exc).__name__})")
        return
    if not isinstance(learner, dict):
        _line("learner", "not reported by /v1/stats")
    elif "error" in learner and "version" not in learner:
        _line("learner", f"unreachable: {learner['error']}")
    else:
        _line(
            "learner",
            f"version {learner.get('version')}, watermark {learner.get('watermark')}, "
            f"{learner.get('events_applied'):,} events applied, {learner.get('pending')} "
            "since its last snapshot (live, /v1/stats)",
        )
        if learner.get("error"):
            _line("learner error", learner["error"])


# -- Ray Serve -------------------------------------------------------------------


def _ray(address: str | None, timeout: float) -> None:
    import os

    if address:
        source = "RAY_ADDRESS"
    else:
        local = sorted(_local_gcs_addresses())
        if not local:
            _line("ray", "not running (no local Ray; RAY_ADDRESS is unset)")
            return
        address, source = local[0], "local"
        if len(local) > 1:
            source += f", {len(local)} local clusters: set RAY_ADDRESS to pick another"
    if address.startswith("ray://"):
        _line("ray", f"{address} ({source}): Ray Client addresses are not queried")
        return
    if not _answers(address, timeout):
        _line("ray", f"not running (nothing answers at {address}, {source})")
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import logging

        import ray
        from ray import serve

        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        try:
            status = serve.status()
        finally:
            ray.shutdown()  # disconnects this driver; the cluster keeps running
    except Exception as exc:
        _line("ray", f"{address} ({source}) answers, but: {type(exc).__name__}: {exc}")
        return
    _line("ray", f"{address} ({source})")
    apps = status.applications
    if not apps:
        _line("serve", "no application running")
        return
    for name, app in sorted(apps.items(), key=lambda kv: kv[0] != APP_NAME):
        message = f" ({app.message})" if app.message else ""
        _line("application", f"{name}: {_enum(app.status)}{message}")
        for dep_name, dep in app.deployments.items():
            replicas = ", ".join(
                f"{n} {_enum(state)}" for state, n in sorted(dep.replica_states.items())
            )
            print(f"    {dep_name:<20}: {_enum(dep.status)}; replicas: {replicas or 'none'}")


def _enum(value: object) -> str:
    """A Serve status enum's name as Serve prints it (``RUNNING``, ``HEALTHY``)."""
    return str(getattr(value, "value", value))


def _answers(address: str, timeout: float) -> bool:
    """Whether ``host:port`` accepts a TCP connection within ``timeout`` seconds."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _local_gcs_addresses() -> set[str]:
    """GCS addresses of the Ray processes running on this machine (as ``ray.init(address=
    "auto")`` finds them: the ``--gcs-address`` flag of Ray's processes)."""
    try:
        import psutil
    except ModuleNotFoundError:
        return set()
    found: set[str] = set()
    for proc in psutil.process_iter(["cmdline"]):
        for arg in proc.info.get("cmdline") or ():
            if arg.startswith("--gcs-address=") and arg.split("=", 1)[1] not in ("", "None"):
                found.add(arg.split("=", 1)[1])
    return found
