"""Alembic environment bound to ``feedback.models.metadata``.

The URL comes from the Alembic config's ``sqlalchemy.url`` (set by
``feedback.migrate``) or, failing that, from the process settings.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from feedback.models import metadata

config = context.config


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from controlplane.settings import get_settings

    settings_url = get_settings().database_url
    if not settings_url:
        raise RuntimeError("no database URL: set DATABASE_URL or use `banditctl db upgrade`")
    return settings_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
