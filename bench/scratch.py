"""A throwaway, migrated database for a benchmark run, on any server."""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, make_url, text

from controlplane.settings import Settings
from feedback import migrate
from feedback.database import start_embedded


@contextlib.contextmanager
def scratch_database(database_url: str | None, prefix: str) -> Iterator[tuple[str, str]]:
    """Yield ``(url, where)``: a fresh database at head on the server ``database_url``
    names (else an embedded server in a temp dir); dropped, and the server released, after."""
    handle = None
    if database_url:
        admin = Settings(database_url=database_url).database_url
        assert admin is not None
        where = make_url(admin).render_as_string(hide_password=True)
    else:
        handle = start_embedded(Path(tempfile.mkdtemp(prefix=f"{prefix}-pg-")), "postgres")
        admin, where = handle.url, "embedded PostgreSQL (Unix socket)"
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin_engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with admin_engine.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(admin).set(database=name).render_as_string(hide_password=False)
        migrate.upgrade(url)
        yield url, where
    finally:
        with admin_engine.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin_engine.dispose()
        if handle is not None:
            handle.stop()
