"""``banditctl db upgrade | downgrade | current | check``: the schema, through Alembic;
``banditctl db prune-snapshots``: policy snapshot retention, as the learner runs it."""

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
    prune = dbsub.add_parser(
        "prune-snapshots",
        help="compact old policy versions (delete their state, keep the rows)",
        description="Delete the learner state of every policy version no retention rule "
        "keeps: the newest --keep-last, those that served traffic within --keep-served-s, "
        "and those a rollback restored or replaced. The learner service does the same every "
        "learner_service.retention.prune_every_s.",
    )
    prune.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    prune.add_argument(
        "--config", help="take the retention knobs from this config file (default: defaults)"
    )
    prune.add_argument("--keep-last", type=int, help="override retention.keep_last")
    prune.add_argument("--keep-served-s", type=float, help="override retention.keep_served_s")
    prune.set_defaults(func=_prune_snapshots)


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


def _prune_snapshots(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from controlplane.config import ConfigError, LearnerServiceConfig, load_config
    from controlplane.settings import get_settings
    from feedback.database import make_engine
    from feedback.repositories import snapshots

    try:
        svc = load_config(args.config).learner_service if args.config else LearnerServiceConfig()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    keep_last = svc.retention.keep_last if args.keep_last is None else args.keep_last
    keep_served_s = (
        svc.retention.keep_served_s if args.keep_served_s is None else args.keep_served_s
    )
    if keep_last < 1 or keep_served_s < 0:
        print("error: --keep-last must be at least 1, --keep-served-s at least 0", file=sys.stderr)
        return 2
    with get_settings().database() as db:
        engine = make_engine(db.url, pool_size=1)
        try:
            with engine.begin() as conn:
                before = snapshots.storage(conn)
                plan = snapshots.prune_snapshots(
                    conn,
                    now=datetime.now(UTC),
                    keep_served_s=keep_served_s,
                    keep_last=keep_last,
                    dry_run=args.dry_run,
                )
        finally:
            engine.dispose()
    print(
        f"policy versions: {before['versions']}, {before['with_state']} holding a state "
        f"({_mb(before['state_bytes'])})"
    )
    print(f"rules: the newest {keep_last}, served within {keep_served_s:g} s, rollback ends")
    for rule in ("last", "served", "rollback"):
        kept = [v for v, why in plan.kept.items() if rule in why]
        print(f"  kept ({rule:<8}): {len(kept):>5}  {_ranges(kept)}")
    verb = "would compact" if args.dry_run else "compacted"
    print(
        f"{verb}: {len(plan.compact)} versions ({_mb(plan.compact_bytes)})  {_ranges(plan.compact)}"
    )
    return 0


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _ranges(versions: list[int] | tuple[int, ...]) -> str:
    """``1-3, 5, 7-9`` for [1, 2, 3, 5, 7, 8, 9]."""
    out: list[str] = []
    for v in sorted(versions):
        if out and int(out[-1].rsplit("-", 1)[-1]) == v - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{v}"
        else:
            out.append(str(v))
    return ", ".join(out)
