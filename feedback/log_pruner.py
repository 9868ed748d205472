"""Pruning the request log in bounded batches, optionally archived to gzip'd CSV first.

:func:`prune_log` runs :func:`feedback.repositories.log_retention.prune_batch` one
transaction per batch until nothing older than the cutoff is eligible (the rules are
the repository's: credited, and at or below the latest snapshot's watermark). Each
batch holds its rows' locks for one batch only, so the gateways' writes and the
learner's claims go on between batches.

:class:`Archive` keeps one gzip'd CSV per table for a run
(``<table>-<run start, UTC>.csv.gz``, one header). A batch's rows are written and
fsynced before its deletes commit, so an archived row may be deleted or (if the
commit failed) still in the database and archived again by the next run; a deleted
row is always in an archive. Restore: decisions first, then the other tables::

    gunzip -c decisions-*.csv.gz | psql "$URL" -c "COPY decisions FROM STDIN WITH (FORMAT csv, HEADER true)"
"""

from __future__ import annotations

import gzip
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from sqlalchemy import Engine

from feedback.repositories import log_retention


@dataclass
class PruneTotals:
    decisions: int = 0
    outcomes: int = 0
    feedback: int = 0
    shadow_decisions: int = 0
    batches: int = 0
    longest_batch_s: float = 0.0
    oldest: datetime | None = None
    newest: datetime | None = None


class Archive:
    """gzip'd CSV files, one per table, under ``directory`` (created if missing)."""

    def __init__(self, directory: Path | str, *, now: datetime | None = None) -> None:
        self.directory = Path(directory)
        self.stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
        self._files: dict[str, gzip.GzipFile] = {}
        self.paths: dict[str, Path] = {}

    def __enter__(self) -> Archive:
        self.directory.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __call__(self, table: str, chunks: Iterator[bytes]) -> None:
        """Append one batch's rows of ``table`` (CSV with a header line) and sync them."""
        first = table not in self._files
        if first:
            path = self.directory / f"{table}-{self.stamp}.csv.gz"
            self.paths[table] = path
            self._files[table] = gzip.GzipFile(path, "ab", compresslevel=6)
        out = self._files[table]
        head = b"" if first else None  # a batch's header line is kept once per file
        for chunk in chunks:
            if head is None:  # drop this batch's header: everything up to the first newline
                nl = chunk.find(b"\n")
                if nl < 0:
                    continue  # pragma: no cover - a header split over chunks
                chunk, head = chunk[nl + 1 :], b""
            out.write(chunk)
        out.flush()  # a full flush of the gzip stream, then to the disk
        raw = getattr(out, "fileobj", None)
        if raw is not None:
            raw.flush()
            os.fsync(raw.fileno())

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def prune_log(
    engine: Engine,
    *,
    before: datetime,
    batch: int = 10_000,
    archive: Callable[[str, Iterator[bytes]], None] | None = None,
    max_batches: int | None = None,
    pause_s: float = 0.0,
    on_batch: Callable[[log_retention.BatchResult, float], None] | None = None,
) -> PruneTotals:
    """Prune, one transaction per batch of at most ``batch`` decisions, until none is
    eligible (or ``max_batches``); ``pause_s`` between batches leaves the database to
    the request path. Returns the totals."""
    totals = PruneTotals()
    while max_batches is None or totals.batches < max_batches:
        t0 = time.perf_counter()
        with engine.begin() as conn:
            r = log_retention.prune_batch(conn, before=before, limit=batch, archive=archive)
        took = time.perf_counter() - t0
        if not r.decisions:
            break
        totals.batches += 1
        totals.decisions += r.decisions
        totals.outcomes += r.outcomes
        totals.feedback += r.feedback
        totals.shadow_decisions += r.shadow_decisions
        totals.longest_batch_s = max(totals.longest_batch_s, took)
        if totals.oldest is None or (r.oldest is not None and r.oldest < totals.oldest):
            totals.oldest = r.oldest
        if totals.newest is None or (r.newest is not None and r.newest > totals.newest):
            totals.newest = r.newest
        if on_batch is not None:
            on_batch(r, took)
        if pause_s:
            time.sleep(pause_s)
    return totals
