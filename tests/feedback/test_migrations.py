"""Alembic on the real server: empty -> head -> base, and no autogenerate drift."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect

from feedback import migrate
from feedback.models import metadata


def _tables(url: str) -> set[str]:
    eng = create_engine(url)
    try:
        return set(inspect(eng).get_table_names()) - {"alembic_version"}
    finally:
        eng.dispose()


def test_upgrade_empty_database_to_head_then_back_to_base(pg_server):
    url = pg_server.create_database("banditctl_mig")
    assert migrate.current_revision(url) is None
    assert _tables(url) == set()

    migrate.upgrade(url)
    assert migrate.current_revision(url) == migrate.head_revision()
    assert _tables(url) == set(metadata.tables)

    migrate.downgrade(url, "base")
    assert migrate.current_revision(url) is None
    assert _tables(url) == set()

    migrate.upgrade(url)  # and up again: the downgrade left nothing behind
    assert migrate.current_revision(url) == migrate.head_revision()


def test_autogenerate_against_head_finds_no_difference(db_url):
    assert migrate.schema_drift(db_url) == []


def test_cli_upgrade_then_current_prints_head(pg_server, capsys, monkeypatch):
    from controlplane.cli import main

    url = pg_server.create_database("banditctl_cli")
    monkeypatch.setenv("DATABASE_URL", url)
    assert main(["db", "upgrade"]) == 0
    assert main(["db", "current"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"{migrate.head_revision()} (head)"
    assert main(["db", "check"]) == 0
