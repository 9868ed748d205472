"""``banditctl db upgrade | downgrade | current | check``: the schema, through Alembic;
``banditctl db prune-snapshots``: policy snapshot retention, as the learner runs it;
``banditctl db prune-log``: request log retention (``feedback.log_pruner``)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from controlplane.config import Budget


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
    log = dbsub.add_parser(
        "prune-log",
        help="delete (and archive) decisions, outcomes and feedback older than a retention",
        description="Delete decisions made before --older-than ago, with their outcomes, "
        "feedback and shadow picks, in batches of --batch (one transaction each), oldest "
        "first. Only decisions the learner has credited and a policy snapshot holds "
        "(credit_seq at or below the latest snapshot's watermark) go; uncredited ones stay "
        "whatever their age. With --archive, each table's rows are first appended to "
        "<table>-<time>.csv.gz there (COPY's CSV with a header; restore with COPY ... FROM). "
        "Refuses a retention shorter than learner_service.retention.keep_served_s, or one "
        "that reaches into a budget's current period (budgets read the period's spend).",
    )
    log.add_argument("--older-than", required=True, help="retention: 90d, 36h, 3600s")
    log.add_argument("--archive", help="append the rows to gzip'd CSV files in this folder")
    log.add_argument("--batch", type=int, default=10_000, help="decisions per transaction")
    log.add_argument("--max-batches", type=int, help="stop after this many batches")
    log.add_argument("--pause-s", type=float, default=0.0, help="sleep between batches")
    log.add_argument("--dry-run", action="store_true", help="count what would go, change nothing")
    log.add_argument("--config", help="the config whose retention and budgets bound the cutoff")
    log.set_defaults(func=_prune_log)


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


_SPAN = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _seconds(text: str) -> float | None:
    """``90d``, ``36h``, ``30m``, ``3600s`` or plain seconds; None if malformed."""
    t = text.strip()
    unit = _SPAN.get(t[-1:])
    try:
        return float(t[:-1]) * unit if unit is not None else float(t)
    except ValueError:
        return None


def log_cutoff_refusal(
    now: datetime, older_than_s: float, keep_served_s: float, budgets: Sequence[Budget]
) -> str | None:
    """Why a cutoff ``older_than_s`` before ``now`` is refused, or None: it must keep the
    decisions snapshot retention reads (``keep_served_s``) and every budget's current
    period."""
    from datetime import timedelta

    from controlplane.budgets import period_bounds

    keep = keep_served_s
    if older_than_s < keep:
        return (
            f"--older-than {older_than_s:g} s is shorter than retention.keep_served_s "
            f"({keep:g} s): the policy versions that served in between would lose their state"
        )
    cutoff = now - timedelta(seconds=older_than_s)
    for b in budgets:
        start = period_bounds(now, b.period)[0]
        if cutoff > start:
            who = f"key {b.key}" if b.key else f"tenant {b.tenant}"
            return (
                f"the cutoff {cutoff.isoformat()} is inside the current {b.period} of the "
                f"budget of {who} (since {start.isoformat()}): its spend would be undercounted"
            )
    return None


def _prune_log(args: argparse.Namespace) -> int:
    import contextlib
    from datetime import UTC, datetime, timedelta

    from controlplane.config import ConfigError, LearnerServiceConfig, load_config
    from controlplane.settings import get_settings
    from feedback import log_pruner
    from feedback.database import make_engine
    from feedback.repositories import log_retention

    older_than_s = _seconds(args.older_than)
    if older_than_s is None or older_than_s <= 0 or args.batch < 1:
        print("error: --older-than like 90d, 36h or 3600s; --batch at least 1", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config) if args.config else None
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    svc = cfg.learner_service if cfg is not None else LearnerServiceConfig()
    now = datetime.now(UTC)
    refusal = log_cutoff_refusal(
        now, older_than_s, svc.retention.keep_served_s, cfg.budgets if cfg is not None else ()
    )
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    before = now - timedelta(seconds=older_than_s)
    with get_settings().database() as db:
        engine = make_engine(db.url, pool_size=1)
        try:
            with engine.connect() as conn:
                plan = log_retention.plan(conn, before)
            print(
                f"decisions before {before.isoformat(timespec='seconds')}: {plan.decisions:,} "
                f"credited at or below the latest snapshot's watermark {plan.watermark:,}"
                + (f" ({plan.oldest:%Y-%m-%d} .. {plan.newest:%Y-%m-%d})" if plan.decisions else "")
            )
            print(
                f"kept although older: {plan.kept_uncredited:,} not credited yet, "
                f"{plan.kept_unsnapshotted:,} credited after the latest snapshot"
            )
            if args.dry_run or not plan.decisions:
                print(
                    f"{'would delete' if args.dry_run else 'deleted'}: {plan.decisions:,} decisions"
                )
                return 0
            archive = log_pruner.Archive(args.archive) if args.archive else None
            with archive or contextlib.nullcontext():
                total = log_pruner.prune_log(
                    engine,
                    before=before,
                    batch=args.batch,
                    archive=archive,
                    max_batches=args.max_batches,
                    pause_s=args.pause_s,
                )
        finally:
            engine.dispose()
    print(
        f"deleted: {total.decisions:,} decisions, {total.outcomes:,} outcomes, "
        f"{total.feedback:,} feedback, {total.shadow_decisions:,} shadow picks in "
        f"{total.batches} batches (longest {1e3 * total.longest_batch_s:.0f} ms)"
    )
    if archive is not None:
        for path in archive.paths.values():
            print(f"archived: {path}")
    return 0
