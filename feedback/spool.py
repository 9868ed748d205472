"""The decision log's spool: what a gateway has accepted, on local disk until it is written.

The writer (:mod:`feedback.writer`) keeps accepted records in memory until a batch lands in
Postgres; a process that dies first (SIGKILL, out of memory) would lose them. With a spool,
each record is also appended to a segment file on the node's disk as it is accepted (one
``write`` to the page cache, holding the GIL, no ``fsync``: it survives the process, not the
machine; where a machine's crash matters, ``gateway.durable_log`` answers only after the
write). A segment is deleted once every record in it is written. A successor on the same
node (a restarted replica, or any writer of the same database that scans the folder) finds
the segments of writers that died, writes their records (idempotently: rows already there
are skipped) and deletes them.

Who holds a segment: its writer keeps it open under an exclusive ``flock`` until it deletes
it; the kernel drops the lock when the process dies, so a segment whose lock can be taken is
an orphan (a dead writer's, whatever became of its pid). Segments live in a folder per
database (its server, name and oid), so a spool is never written into another database,
nor into a database of the same name created since.

A segment is a sequence of frames: a 4-byte little-endian length, then the pickled record,
as a tuple of its fields in plain types (:func:`encode`; a pickled record object, as
earlier versions wrote, is read too). A frame cut short by the crash is the end of the
segment. The folder is created 0700 and
the files 0600: they hold what the decision log holds (contexts, tenants, task labels).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import logging
import os
import pickle
import struct
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from feedback.records import DecisionRecord, OutcomeRecord

log = logging.getLogger(__name__)

Record = DecisionRecord | OutcomeRecord
_LEN = struct.Struct("<I")
SUFFIX = ".spool"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def _held_write() -> Callable[[int, bytes], int]:
    """``os.write`` without letting the GIL go: libc's ``write`` called through
    ``ctypes.PyDLL``, which keeps it. ``os.write`` lets it go around the call, and on a
    gateway replica another thread (Serve's router loop, Ray's) then holds it for up to
    the interpreter's switch interval (5 ms) before the request goes on, twice a request;
    a write to the page cache takes a microsecond or two. A write the kernel holds back
    (the disk far behind on dirty pages) holds the replica's other threads with it, as it
    holds the request's event loop either way. Plain ``os.write`` where libc's ``write``
    cannot be found."""
    try:
        libc = ctypes.PyDLL(None, use_errno=True)
        write = libc.write
    except (OSError, AttributeError):
        return os.write
    write.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t)
    write.restype = ctypes.c_ssize_t

    def held(fd: int, data: bytes) -> int:
        n = int(write(fd, data, len(data)))
        if n < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return n

    return held


_write = _held_write()


def encode(record: Record) -> bytes:
    """A record's frame body: its fields as plain values (bytes, ints, floats, strings) in
    a pickled tuple, a quarter of the time of pickling the record itself (the request
    path spools every record); :func:`decode` gives back an equal record."""
    if type(record) is DecisionRecord:
        ctx = np.ascontiguousarray(record.context)
        fields: tuple[Any, ...] = (
            "d",
            record.request_id.bytes,
            *_when(record.created_at),
            record.route,
            record.arm_id,
            ctx.dtype.str,
            ctx.shape,
            ctx.tobytes(),
            record.propensity,
            record.policy_version,
            record.learner,
            record.tenant,
            record.task,
            record.key_id,
            record.attempt,
            None if record.fallback_of is None else record.fallback_of.bytes,
            record.client_request_id,
        )
    elif type(record) is OutcomeRecord:
        fields = (
            "o",
            record.request_id.bytes,
            *_when(record.created_at),
            record.status,
            record.latency_ms,
            record.ttft_ms,
            record.prompt_tokens,
            record.completion_tokens,
            record.energy_j,
            record.cost_usd,
            record.error,
        )
    else:  # a subclass or anything else: the object itself
        return pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
    return pickle.dumps(fields, protocol=pickle.HIGHEST_PROTOCOL)


def decode(data: bytes) -> Record:
    """The record of a frame body (:func:`encode`'s, or a pickled record object);
    raises ``ValueError`` on anything else."""
    obj = pickle.loads(data)
    if isinstance(obj, DecisionRecord | OutcomeRecord):
        return obj
    if not isinstance(obj, tuple) or not obj or obj[0] not in ("d", "o"):
        raise ValueError("not a record")
    if obj[0] == "d":
        (_, rid, us, offset, route, arm, dtype, shape, ctx, propensity, version, learner,
         tenant, task, key_id, attempt, fallback_of, client_request_id) = obj  # fmt: skip
        return DecisionRecord(
            request_id=uuid.UUID(bytes=rid),
            created_at=_from_when(us, offset),
            route=route,
            arm_id=arm,
            context=np.frombuffer(ctx, dtype=np.dtype(dtype)).reshape(shape).copy(),
            propensity=propensity,
            policy_version=version,
            learner=learner,
            tenant=tenant,
            task=task,
            key_id=key_id,
            attempt=attempt,
            fallback_of=None if fallback_of is None else uuid.UUID(bytes=fallback_of),
            client_request_id=client_request_id,
        )
    (_, rid, us, offset, status, latency_ms, ttft_ms, prompt_tokens, completion_tokens,
     energy_j, cost_usd, error) = obj  # fmt: skip
    return OutcomeRecord(
        request_id=uuid.UUID(bytes=rid),
        created_at=_from_when(us, offset),
        status=status,
        latency_ms=latency_ms,
        ttft_ms=ttft_ms,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        energy_j=energy_j,
        cost_usd=cost_usd,
        error=error,
    )


def _when(at: datetime) -> tuple[int, int | None]:
    """A time as whole microseconds since the epoch (UTC) and its UTC offset in
    microseconds (None: a naive time, counted as if it were UTC)."""
    offset = at.utcoffset()
    if offset is None:
        return (at.replace(tzinfo=UTC) - _EPOCH) // _US, None
    return (at - _EPOCH) // _US, offset // _US


def _from_when(us: int, offset: int | None) -> datetime:
    at = _EPOCH + us * _US
    if offset is None:
        return at.replace(tzinfo=None)
    return at.astimezone(timezone(offset * _US))


def database_folder(host: str | None, port: int | None, name: str | None, oid: int) -> str:
    """The folder name of one database's spool: its address, name and oid, hashed."""
    key = f"{host or ''}:{port or ''}/{name or ''}/{oid}".encode()
    return hashlib.sha256(key).hexdigest()[:20]


@dataclass
class _Segment:
    path: Path
    fd: int
    first: int  # sequence number of its first record
    last: int  # of its last record
    opened: float


class Spool:
    """Segment files of one writer's accepted, not yet written records.

    Records carry the writer's sequence numbers (1, 2, ...; record ``n`` is written once
    the writer's count of written records reaches ``n``): :meth:`append` them in order,
    :meth:`release` what is written. Not thread-safe: the writer calls it under its lock.
    """

    def __init__(
        self, root: Path | str, *, segment_records: int = 5_000, segment_s: float = 5.0
    ) -> None:
        self.root = Path(root)
        self.segment_records = segment_records
        self.segment_s = segment_s
        self.folder: Path | None = None  # set by :meth:`activate`
        self._tag = uuid.uuid4().hex[:12]
        self._n = 0
        self._segments: deque[_Segment] = deque()
        self.appended = 0
        self.errors = 0

    @property
    def active(self) -> bool:
        return self.folder is not None

    def activate(self, database: str) -> None:
        """Spool into ``root/database`` (a :func:`database_folder` name) from now on."""
        folder = self.root / database
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(OSError):
            os.chmod(self.root, 0o700)
            os.chmod(folder, 0o700)
        self.folder = folder

    def append(self, seq: int, record: Record) -> None:
        """Add record number ``seq`` (raises ``OSError`` when the disk refuses)."""
        seg = self._current(seq)
        data = encode(record)
        frame = _LEN.pack(len(data)) + data
        written = _write(seg.fd, frame)
        if written != len(frame):  # a full disk: the segment is cut short here
            raise OSError(f"spool: short write ({written} of {len(frame)} bytes)")
        seg.last = seq
        self.appended += 1

    def release(self, done: int) -> int:
        """Delete the segments whose records are all written (``done``: the writer's count
        of written records); returns how many were deleted."""
        deleted = 0
        while self._segments and self._segments[0].last <= done:
            seg = self._segments[0]
            if seg is self._segments[-1] and not self._full(seg):
                break  # the open segment takes more records yet
            self._segments.popleft()
            _remove(seg)
            deleted += 1
        return deleted

    def close(self, done: int) -> int:
        """Delete what is written, and keep the rest on disk, unlocked, for a successor to
        write (the database away at shutdown); returns the records kept."""
        kept = 0
        while self._segments:
            seg = self._segments.popleft()
            if seg.last <= done:
                _remove(seg)
            else:
                kept += seg.last - max(seg.first, done + 1) + 1
                os.close(seg.fd)
        return kept

    def orphans(self) -> list[Path]:
        """Segment files in this database's folder, oldest first (each writer's in the
        order it wrote them): candidates for :meth:`Orphan.claim`, which skips those a live
        writer holds, this one's included (``flock`` locks conflict between descriptors
        of one process too)."""
        if self.folder is None:
            return []
        found = []
        for path in self.folder.glob(f"*{SUFFIX}"):
            with contextlib.suppress(OSError):
                found.append((path.stat().st_mtime, path.name, path))
        return [p for _, _, p in sorted(found)]

    def _current(self, seq: int) -> _Segment:
        if self.folder is None:
            raise RuntimeError("spool: not active")
        if self._segments and not self._full(self._segments[-1]):
            return self._segments[-1]
        self._n += 1
        path = self.folder / f"{self._tag}-{os.getpid()}-{self._n:08d}{SUFFIX}"
        # locked before it bears a name that a successor looks for
        fresh = path.with_suffix(".new")
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(fresh, path)
        seg = _Segment(path, fd, seq, seq - 1, time.monotonic())
        self._segments.append(seg)
        return seg

    def _full(self, seg: _Segment) -> bool:
        return (
            seg.last - seg.first + 1 >= self.segment_records
            or time.monotonic() - seg.opened >= self.segment_s
        )


class Orphan:
    """A dead writer's segment, locked by this process while it is replayed."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def claim(cls, path: Path) -> Orphan | None:
        """The segment, if no live process holds it (else None)."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # replayed and deleted by another writer
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        if not os.path.exists(path):  # deleted between open and lock
            os.close(fd)
            return None
        return cls(path, fd)

    def records(self) -> Iterator[Record]:
        """Its records in order; a frame cut short ends it, as does one that does not
        unpickle into a record."""
        with os.fdopen(os.dup(self._fd), "rb") as f:
            while True:
                head = f.read(_LEN.size)
                if len(head) < _LEN.size:
                    return
                (size,) = _LEN.unpack(head)
                data = f.read(size)
                if len(data) < size:
                    log.warning("spool %s: last record cut short; ignored", self.path.name)
                    return
                try:
                    record = decode(data)
                except Exception:
                    log.error("spool %s: a record that does not load; the rest ignored", self.path)
                    return
                yield record

    def done(self) -> None:
        """Its records are written: delete it."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)

    def release(self) -> None:
        """Leave it for later (the database went away while replaying)."""
        os.close(self._fd)


def _remove(seg: _Segment) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(seg.path)  # while still locked: no one replays what is written
    os.close(seg.fd)
