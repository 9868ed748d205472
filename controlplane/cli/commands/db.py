"""``banditctl db upgrade | downgrade | current | check``: the schema, through Alembic."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("db", help="migrate and inspect the database schema")
    dbsub = p.add_subparsers(dest="db_command", metavar="ACTION")
    dbsub.required = True
    up = dbsub.add_parser("upgrade", help="upgrade the schema (default: to head)")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(func=_upgrade)
    down = dbsub.add_parser(
        "downgrade", help="downgrade the schema (default: to base, dropping all tables)"
    )
    down.add_argument("revision", nargs="?", default="base")
    down.set_defaults(func=_downgrade)
    cur = dbsub.add_parser("current", help="print the database's revision")
    cur.set_defaults(func=_current)
    chk = dbsub.add_parser("check", help="fail if the models and the database schema differ")
    chk.set_defaults(func=_check)


def _upgrade(args: argparse.Namespace) -> int:
    from controlplane.settings import get_settings
    from feedback import migrate

    s = get_settings()
    with s.database() as db:
        migrate.upgrade(db.url, args.revision)
        print(f"upgraded to {migrate.current_revision(db.url)}")
    return 0


def _downgrade(args: argparse.Namespace) -> int:
    from controlplane.settings import get_settings
    from feedback import migrate

    s = get_settings()
    with s.database() as db:
        migrate.downgrade(db.url, args.revision)
        print(f"downgraded to {migrate.current_revision(db.url) or 'base'}")
    return 0


def _current(_args: argparse.Namespace) -> int:
    from controlplane.settings import get_settings
    from feedback import migrate

    s = get_settings()
    with s.database() as db:
        rev = migrate.current_revision(db.url)
        head = migrate.head_revision()
        print(f"{rev or 'base'}{' (head)' if rev == head else ''}")
    return 0


def _check(_args: argparse.Namespace) -> int:
    from controlplane.settings import get_settings
    from feedback import migrate

    s = get_settings()
    with s.database() as db:
        drift = migrate.schema_drift(db.url)
    if drift:
        for d in drift:
            print(d, file=sys.stderr)
        return 1
    print("schema matches the models")
    return 0
