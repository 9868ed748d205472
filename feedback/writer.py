"""The batched, asynchronous decision/outcome log.

The request path calls :meth:`DecisionLogWriter.log_decision` and
:meth:`~DecisionLogWriter.log_outcome`, which only append to a bounded
in-memory FIFO; a background thread flushes it to Postgres in batches, one
transaction per batch (COPY + ``ON CONFLICT DO NOTHING``), so a batch lands
whole or not at all, and a retried batch never duplicates a row.

Durability contract:

* a record accepted by ``log_*`` is written unless the process dies first;
  what a crash can lose is bounded by ``max_buffer`` records (default
  50,000, about 1-2 s of traffic at full speed) and is visible as the
  ``buffered`` gauge;
* when the buffer is full, ``log_decision`` raises :class:`WriterFull` (counted
  in ``rejected``): the caller sheds the request instead of losing it silently.
  A decision is accepted only with room for its outcome too, and an outcome is
  never refused (the buffer may exceed ``max_buffer`` by the outcomes of the
  requests in flight), so no answered request is logged without its outcome;
* transient database errors (connection lost, server restarting) are retried
  with exponential backoff, forever, while the buffer holds;
* a batch that fails on its data (constraint or type error, or any other
  error that is not a lost connection, such as a text the driver cannot
  encode) is split in halves until the offending records stand alone; those
  are dropped and counted in ``invalid`` (their request ids are logged), the
  rest is written;
* the background thread survives any error: a turn that raised is logged,
  counted in ``health`` (:class:`feedback.loop_health.LoopHealth`:
  last success, last error, restarts) and the loop goes on;
* with a :class:`feedback.spool.Spool`, what a crash could lose is on the
  node's disk instead: each accepted record is appended to a segment file
  until it is written, and the writer writes (then deletes) the segments of
  writers of the same database that died on this node, when it starts and
  every ``orphan_scan_s``. The spool starts once the writer has reached the
  database (it names the spool's folder); records accepted before then are
  spooled at that moment. A disk that refuses a write turns the spool off
  (counted in ``spool_errors``); the writer goes on without it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from feedback.errors import WriterFull
from feedback.loop_health import LoopHealth
from feedback.records import DecisionRecord, OutcomeRecord
from feedback.repositories import request_log
from feedback.spool import Orphan, Spool, database_folder

log = logging.getLogger(__name__)

Record = DecisionRecord | OutcomeRecord


@dataclass
class WriterStats:
    accepted: int = 0
    written_decisions: int = 0
    written_outcomes: int = 0
    rejected: int = 0  # refused because the buffer was full
    invalid: int = 0  # dropped after isolation: the database refused them alone
    retries: int = 0
    flushes: int = 0
    buffered: int = 0
    spool_errors: int = 0
    replayed_segments: int = 0  # dead writers' segments written from the spool
    replayed_records: int = 0
    replayed_rows: int = 0  # of those, rows the database did not hold yet: what the spool saved
    last_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def as_dict(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


class DecisionLogWriter:
    def __init__(
        self,
        engine: Engine,
        *,
        max_buffer: int = 50_000,
        max_batch: int = 5_000,
        flush_interval_s: float = 0.2,
        max_backoff_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        stale_after_s: float = 60.0,
        spool: Spool | None = None,
        orphan_scan_s: float = 60.0,
    ) -> None:
        """``stale_after_s``: the health signal reports the writer stuck when no batch
        was written (nor the queue found empty) for this long. ``spool``: keep accepted
        records on local disk until written (see the module's contract)."""
        if max_buffer < max_batch:
            raise ValueError("max_buffer must be at least max_batch")
        self._engine = engine
        self._max_buffer = max_buffer
        self._max_batch = max_batch
        self._flush_interval = flush_interval_s
        self._max_backoff = max_backoff_s
        self._sleep = sleep
        self._queue: deque[Record] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._inflight = 0
        self._thread: threading.Thread | None = None
        self._give_up_at: float | None = None  # a flush without the thread: its deadline
        # records ever appended, and ever taken off the queue written (or dropped as
        # invalid): the queue is FIFO, so record n is done once ``_done >= n``
        self._appended = 0
        self._done = 0
        self.stats = WriterStats()
        self.health = LoopHealth("decision_log_writer", stale_after_s=stale_after_s)
        self._spool = spool
        self._orphan_scan_s = orphan_scan_s
        self._next_scan = 0.0

    # -- request path -------------------------------------------------

    def log_decision(self, record: DecisionRecord) -> None:
        self._append(record, room=2)  # itself and, later, its outcome

    def log_outcome(self, record: OutcomeRecord) -> None:
        self._append(record, room=0)  # its decision kept room for it

    def _append(self, record: Record, room: int) -> None:
        with self._cond:
            if self._closed:
                raise WriterFull("decision log writer is closed")
            if room and len(self._queue) + room > self._max_buffer:
                self.stats.rejected += 1
                raise WriterFull(f"decision log buffer full ({self._max_buffer} records)")
            self._queue.append(record)
            self._appended += 1
            if self._spool is not None and self._spool.active:
                self._spool_append(self._appended, record)
            self.stats.accepted += 1
            self.stats.buffered = len(self._queue) + self._inflight
            if len(self._queue) >= self._max_batch:
                self._cond.notify()

    async def written(self, timeout_s: float) -> bool:
        """Wait (without blocking the event loop) until every record appended so far has
        been written, asking the thread to write now rather than at its next interval;
        False if ``timeout_s`` passed first (the records stay queued). Concurrent waiters
        share the batches they cause: a group commit."""
        with self._cond:
            target = self._appended
            if self._done >= target:
                return True
            self._cond.notify()
        deadline = time.monotonic() + timeout_s
        delay = 0.001
        while self._done < target:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)
        return True

    # -- spool ------------------------------------------------------------

    def _spool_append(self, seq: int, record: Record) -> None:
        """Under the lock: append to the spool; a disk error turns the spool off."""
        assert self._spool is not None
        try:
            self._spool.append(seq, record)
        except OSError as exc:
            self.stats.spool_errors += 1
            log.error("decision log spool turned off: %s", exc)
            self._spool.close(self._done)
            self._spool = None

    def activate_spool(self) -> bool:
        """Reach the database, open the spool in its folder, spool what is queued and
        write the segments that dead writers of this database left; False when the
        database could not be reached (tried again on a later turn). Called by the
        thread; tests call it directly."""
        spool = self._spool
        if spool is None:
            return True
        if not spool.active:
            with self._engine.connect() as conn:
                oid = request_log.database_oid(conn)
            url = self._engine.url
            folder = database_folder(url.host, url.port, url.database, oid)
            with self._cond:
                spool.activate(folder)
                for i, record in enumerate(self._queue):
                    if self._spool is None:
                        break
                    self._spool_append(self._done + i + 1, record)
        self.replay_orphans()
        return True

    def replay_orphans(self) -> int:
        """Write the segments that dead writers of this database left on this node, then
        delete them; returns the records written."""
        spool = self._spool
        self._next_scan = time.monotonic() + self._orphan_scan_s
        if spool is None or not spool.active:
            return 0
        total = 0
        for path in spool.orphans():
            orphan = Orphan.claim(path)
            if orphan is None:
                continue
            before = self.stats.written_decisions + self.stats.written_outcomes
            try:
                records = list(orphan.records())
                for i in range(0, len(records), self._max_batch):
                    self._write_with_retry(records[i : i + self._max_batch])
            except BaseException:
                orphan.release()
                raise
            orphan.done()
            total += len(records)
            self.stats.replayed_segments += 1
            self.stats.replayed_records += len(records)
            new_rows = self.stats.written_decisions + self.stats.written_outcomes - before
            self.stats.replayed_rows += new_rows
            log.warning(
                "decision log: %d records a dead writer left in %s, %d of them not yet written",
                len(records), path.name, new_rows,
            )  # fmt: skip
        return total

    def _spool_turn(self) -> None:
        """The thread's spool chores: start it, and look for dead writers' segments."""
        spool = self._spool
        if spool is None or time.monotonic() < self._next_scan:
            return
        if not spool.active:
            self._next_scan = time.monotonic() + 1.0  # the database away: try again soon
            self.activate_spool()
        else:
            self.replay_orphans()

    # -- lifecycle ----------------------------------------------------

    def start(self) -> DecisionLogWriter:
        if self._thread is None:
            thread = threading.Thread(target=self._run, name="decision-log-writer", daemon=True)
            self._thread = thread
            self.health.alive = thread.is_alive
            thread.start()
        return self

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Block until everything accepted so far is written (or timeout)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._cond.notify()
        while time.monotonic() < deadline:
            with self._cond:
                if not self._queue and self._inflight == 0:
                    return True
                if self._thread is None:
                    break
            time.sleep(0.01)
        if self._thread is None:  # written here, retrying no longer than the timeout
            self._give_up_at = deadline
            try:
                while self._queue and self.flush_once_sync():
                    pass
            except _GaveUp:
                log.warning(
                    "flush gave up: the database is away; %d records kept", len(self._queue)
                )
            finally:
                self._give_up_at = None
            return not self._queue
        return False

    def close(self, timeout_s: float = 30.0) -> bool:
        done = self.flush(timeout_s)
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        with self._cond:
            if self._spool is not None and self._spool.active:
                kept = self._spool.close(self._done)
                if kept:
                    log.warning("decision log: %d records left in the spool for a successor", kept)
        return done

    # -- background flushing -----------------------------------------

    def _run(self) -> None:
        while True:
            try:
                self._spool_turn()
            except Exception as exc:  # the database away: the spool waits, records queue
                self.health.failed(exc)
                log.warning("decision log spool: %s; trying again", _describe(exc))
            with self._cond:
                if not self._queue:
                    if self._closed:
                        return
                    self._cond.wait(self._flush_interval)
                if not self._queue:
                    self.health.beat("idle")
                    continue
            try:
                self.flush_once_sync()
            except Exception as exc:  # never let the writer die: the batch stays queued
                self.health.failed(exc)
                self.health.restarted()
                log.exception("decision log writer turn failed; going on")
                self._sleep(self._flush_interval)
            else:
                self.health.beat("writing")

    def flush_once_sync(self) -> int:
        """Write one batch from the head of the queue; returns records taken."""
        with self._cond:
            n = min(len(self._queue), self._max_batch)
            batch = [self._queue[i] for i in range(n)]
            self._inflight = n
        if not batch:
            return 0
        try:
            self._write_with_retry(batch)
        except _GaveUp:
            with self._cond:
                self._inflight = 0
            raise
        with self._cond:
            for _ in range(n):
                self._queue.popleft()
            self._done += n
            self._inflight = 0
            if self._spool is not None and self._spool.active:
                self._spool.release(self._done)
            self.stats.buffered = len(self._queue)
            self.stats.flushes += 1
        return n

    def _write_with_retry(self, batch: list[Record]) -> None:
        backoff = 0.05
        while True:
            try:
                self._write(batch)
                return
            except Exception as exc:
                if _transient(exc):
                    self.stats.retries += 1
                    self.stats.last_error = _describe(exc)
                    self.health.failed(exc)
                    log.warning("decision log write failed, retrying in %.2fs: %s", backoff, exc)
                    if (
                        self._give_up_at is not None
                        and time.monotonic() + backoff > self._give_up_at
                    ):
                        raise _GaveUp from exc
                    self._sleep(backoff)
                    backoff = min(backoff * 2, self._max_backoff)
                    continue
                # refused on its data, or a record the driver cannot even send (an
                # unencodable text): find the bad records, write the rest
                self._isolate(batch, exc)
                return

    def _isolate(self, batch: list[Record], exc: Exception) -> None:
        """A batch the database refuses on its data: write what it accepts."""
        if len(batch) == 1:
            self.stats.invalid += 1
            self.stats.last_error = _describe(exc)
            self.health.failed(exc)
            log.error(
                "dropping invalid %s record %s: %s",
                type(batch[0]).__name__, batch[0].request_id, self.stats.last_error,
            )  # fmt: skip
            return
        mid = len(batch) // 2
        for half in (batch[:mid], batch[mid:]):
            self._write_with_retry(half)

    def _write(self, batch: list[Record]) -> None:
        """One transaction: COPY without savepoints (the common case: no row of the batch
        is there yet); a batch whose rows are partly there already (retried after its
        commit was acknowledged late, or replayed from the spool) fails it on a unique
        violation, and is written again in one that skips the rows there."""
        decisions = [r for r in batch if isinstance(r, DecisionRecord)]
        outcomes = [r for r in batch if isinstance(r, OutcomeRecord)]
        try:
            nd, no = self._write_once(decisions, outcomes, guarded=False)
        except IntegrityError as exc:
            if not request_log.already_written(exc):
                raise
            nd, no = self._write_once(decisions, outcomes, guarded=True)
        self.stats.written_decisions += nd
        self.stats.written_outcomes += no

    def _write_once(
        self, decisions: list[DecisionRecord], outcomes: list[OutcomeRecord], *, guarded: bool
    ) -> tuple[int, int]:
        with self._engine.begin() as conn:
            nd = request_log.write_decisions(conn, decisions, guarded=guarded)
            no = request_log.write_outcomes(conn, outcomes, guarded=guarded)
        return nd, no


class _GaveUp(Exception):
    """A flush without the background thread ran out of time while the database is away."""


def _transient(exc: Exception) -> bool:
    """A lost connection or a server going away: the same batch may succeed later."""
    if isinstance(exc, IntegrityError):
        return False
    if isinstance(exc, DBAPIError):
        return isinstance(exc, OperationalError) or exc.connection_invalidated
    return False


def _describe(exc: Exception) -> str:
    if isinstance(exc, DBAPIError):
        return str(exc.orig or exc)[:500]
    return f"{type(exc).__name__}: {exc}"[:500]
