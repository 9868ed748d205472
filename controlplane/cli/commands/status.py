"""``banditctl status``: where the database is, its revision and what it holds."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "status", help="start (if embedded) and migrate the database, then print its status"
    )
    p.add_argument("--no-migrate", action="store_true", help="do not upgrade the schema first")
    p.set_defaults(func=_status)


def _status(args: argparse.Namespace) -> int:
    from controlplane.settings import get_settings
    from feedback import migrate
    from feedback.database import make_engine
    from feedback.repositories import reports, snapshots

    s = get_settings()
    with s.database() as db:
        if not args.no_migrate:
            migrate.upgrade(db.url)
        engine = make_engine(db.url, pool_size=1)
        try:
            with engine.connect() as conn:
                counts = reports.table_counts(conn)
                version = snapshots.latest_version(conn)
        finally:
            engine.dispose()
        where = f"embedded under {s.data_dir / 'postgres'}" if db.embedded else "DATABASE_URL"
        print(f"database : {where}")
        print(f"revision : {migrate.current_revision(db.url)} (head {migrate.head_revision()})")
        print(f"policy   : version {version}")
        for name, n in counts.items():
            print(f"{name:<17}: {n}")
    return 0
