"""Retention of the request log: decisions older than a cutoff leave the database, with
their outcomes, feedback and shadow picks, once the learner has credited them and a
policy snapshot holds the credit.

A decision may go only if ``credit_seq <= W``, with ``W`` the latest snapshot's
watermark: a claim above it can still be released (a learner restarting from that
snapshot un-claims it and credits it again), and an uncredited decision still waits
for its reward. Every batch takes at most ``limit`` decisions, oldest first, locked
with ``FOR UPDATE SKIP LOCKED`` (two pruners never take the same rows); the caller
owns the transaction (``feedback.log_pruner`` commits one per batch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, text

# the tables a pruned decision leaves, children first (the order of the deletes)
TABLES = ("feedback", "shadow_decisions", "outcomes", "decisions")

_ELIGIBLE = "created_at < :before AND credit_seq <= :wm"

_DELETE = {
    table: f"DELETE FROM {table} t USING _prune_ids p WHERE t.request_id = p.request_id"
    for table in TABLES
}
# shadow picks are keyed (candidate_id, request_id), with no index on request_id alone:
# joined through the candidates, the primary key can serve the lookups
_DELETE["shadow_decisions"] = (
    "DELETE FROM shadow_decisions t USING _prune_ids p, policy_candidates c "
    "WHERE t.candidate_id = c.id AND t.request_id = p.request_id"
)


def prunable_watermark(conn: Connection) -> int:
    """The latest snapshot's watermark (0 without one): the highest credit a restart keeps."""
    wm = conn.execute(
        text("SELECT watermark FROM policy_snapshots ORDER BY version DESC LIMIT 1")
    ).scalar()
    return 0 if wm is None else int(wm)


@dataclass(frozen=True)
class LogPlan:
    """What a prune at ``before`` would take now, and what it keeps although older."""

    watermark: int
    decisions: int
    oldest: datetime | None
    newest: datetime | None
    kept_uncredited: int  # older than the cutoff, not credited yet
    kept_unsnapshotted: int  # older, credited above the latest snapshot's watermark


def plan(conn: Connection, before: datetime) -> LogPlan:
    wm = prunable_watermark(conn)
    r = conn.execute(
        text(
            f"""
            SELECT count(*) FILTER (WHERE {_ELIGIBLE}),
                   min(created_at) FILTER (WHERE {_ELIGIBLE}),
                   max(created_at) FILTER (WHERE {_ELIGIBLE}),
                   count(*) FILTER (WHERE credit_seq IS NULL),
                   count(*) FILTER (WHERE credit_seq > :wm)
            FROM decisions WHERE created_at < :before
            """
        ),
        {"before": before, "wm": wm},
    ).one()
    return LogPlan(wm, int(r[0]), r[1], r[2], int(r[3]), int(r[4]))


@dataclass(frozen=True)
class BatchResult:
    decisions: int = 0
    outcomes: int = 0
    feedback: int = 0
    shadow_decisions: int = 0
    oldest: datetime | None = None
    newest: datetime | None = None


# (table, COPY ... TO STDOUT chunks): the rows of one table a batch is about to delete
ArchiveSink = Callable[[str, Iterator[bytes]], None]


def prune_batch(
    conn: Connection,
    *,
    before: datetime,
    limit: int,
    archive: ArchiveSink | None = None,
) -> BatchResult:
    """Delete up to ``limit`` decisions made before ``before`` whose credit a snapshot
    holds (oldest first), with their outcomes, feedback and shadow picks. ``archive``
    is handed each table's rows (CSV with a header, ``COPY`` format) before they are
    deleted, in this transaction."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    wm = prunable_watermark(conn)
    conn.execute(
        text(
            "CREATE TEMP TABLE IF NOT EXISTS _prune_ids "
            "(request_id uuid PRIMARY KEY, created_at timestamptz NOT NULL) "
            "ON COMMIT DELETE ROWS"
        )
    )
    conn.execute(text("TRUNCATE _prune_ids"))
    conn.execute(
        text(
            f"""
            INSERT INTO _prune_ids
            SELECT request_id, created_at FROM decisions WHERE {_ELIGIBLE}
            ORDER BY created_at LIMIT :n FOR UPDATE SKIP LOCKED
            """
        ),
        {"before": before, "wm": wm, "n": limit},
    )
    span = conn.execute(
        text("SELECT count(*), min(created_at), max(created_at) FROM _prune_ids")
    ).one()
    if not span[0]:
        return BatchResult()
    if archive is not None:
        for table in reversed(TABLES):  # parents first: a restore loads them in this order
            archive(table, _copy_out(conn, table))
    counts = {table: int(conn.execute(text(_DELETE[table])).rowcount) for table in TABLES}
    return BatchResult(
        decisions=counts["decisions"],
        outcomes=counts["outcomes"],
        feedback=counts["feedback"],
        shadow_decisions=counts["shadow_decisions"],
        oldest=span[1],
        newest=span[2],
    )


def _copy_out(conn: Connection, table: str) -> Iterator[bytes]:
    """The rows of ``table`` for the batch's decisions, as ``COPY ... CSV HEADER``."""
    sql = (
        f"COPY (SELECT t.* FROM {table} t JOIN _prune_ids p ON p.request_id = t.request_id "
        "ORDER BY t.created_at) TO STDOUT WITH (FORMAT csv, HEADER true)"
    )
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        with cursor.copy(sql) as copy:
            for chunk in copy:
                yield bytes(chunk)
    finally:
        cursor.close()
