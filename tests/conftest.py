"""Session-wide fixtures: one real PostgreSQL per test session.

``TEST_DATABASE_URL`` names a server to use (a fresh database is created on
it for the session and dropped at the end); without it, an embedded server
starts in a temporary directory. Tests that use ``engine`` start and end on
empty tables.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, make_url, text

from feedback import models

pytest_plugins = ["tests.ray_fixtures"]  # ray_session, deployed: e2e and browser tests

REPO_ROOT = Path(__file__).resolve().parents[1]
# every table of the schema: tests start and end on empty tables
TABLES = [t.name for t in models.metadata.sorted_tables]


class PgServer:
    """An admin URL on a real server, able to create throwaway databases."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self._admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self._created: list[str] = []

    def create_database(self, prefix: str = "banditctl_test") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with self._admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        self._created.append(name)
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with self._admin.connect() as conn:
            for name in self._created:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self._admin.dispose()


@pytest.fixture(scope="session")
def model_data_dir() -> Path:
    """Where SmolLM2's converted copy and the adapters made from it are kept from one run
    to the next: ``$BANDITCTL_TEST_DATA_DIR``, else a folder in the system's temp dir."""
    default = Path(tempfile.gettempdir()) / "banditctl-test-data"
    return Path(os.environ.get("BANDITCTL_TEST_DATA_DIR") or default)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    url = os.environ.get("TEST_DATABASE_URL")
    handle = None
    if url:
        from controlplane.settings import Settings

        url = Settings(database_url=url).database_url
        assert url is not None
    else:
        from feedback.database import start_embedded

        tmp = Path(tempfile.mkdtemp(prefix="banditctl-pg-"))
        handle = start_embedded(tmp, "postgres")
        url = handle.url
    server = PgServer(url)
    yield server
    server.drop_all()
    if handle is not None:
        handle.stop()


@pytest.fixture(scope="session")
def db_url(pg_server: PgServer) -> str:
    """A database migrated to head, shared by the session."""
    from feedback import migrate

    url = pg_server.create_database()
    migrate.upgrade(url)
    return url


def truncate_all(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        conn.execute(text("ALTER SEQUENCE reward_credit_seq RESTART"))


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = create_engine(db_url, pool_size=4)
    truncate_all(eng)
    yield eng
    truncate_all(eng)
    eng.dispose()
