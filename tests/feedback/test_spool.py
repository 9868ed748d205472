"""The decision log's spool: a writer killed before its batches land loses nothing that a
successor on the node can write; a live writer's segments are never taken; written
segments are deleted; a spool never reaches another database."""

from __future__ import annotations

import os
import pickle
import stat
import struct
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import fields
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine

from feedback import migrate
from feedback.records import DecisionRecord, OutcomeRecord
from feedback.repositories import arms as arms_repo
from feedback.spool import SUFFIX, Orphan, Spool, decode, encode
from feedback.writer import DecisionLogWriter
from tests.feedback.factories import ARMS, decision, log_counts, outcome

ROOT = Path(__file__).resolve().parents[2]

# a writer that spools ``n`` answered requests (half accepted before the spool starts,
# half after, the last one without its outcome yet) and is SIGKILLed before any batch lands
_KILLED = textwrap.dedent(
    """
    import os, signal, sys
    from sqlalchemy import create_engine
    from feedback.spool import Spool
    from feedback.writer import DecisionLogWriter
    from tests.feedback.factories import decision, outcome

    url, root, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    w = DecisionLogWriter(create_engine(url), spool=Spool(root, segment_records=7))
    for i in range(n):
        if i == n // 2:
            assert w.activate_spool()
        d = decision(seed=i)
        w.log_decision(d)
        if i < n - 1:
            w.log_outcome(outcome(d))
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _kill_a_writer(url: str, root: Path, n: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _KILLED, url, str(root), str(n)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == -9, done.stderr[-2000:]


def _segments(root: Path) -> list[Path]:
    return sorted(root.glob(f"*/*{SUFFIX}"))


def test_a_killed_writers_records_are_written_by_its_successor(arms, tmp_path):
    url = arms.url.render_as_string(hide_password=False)
    _kill_a_writer(url, tmp_path, 40)
    assert log_counts(arms) == (0, 0)  # nothing reached the database before the kill
    segments = _segments(tmp_path)
    assert len(segments) == 12  # 79 records, 7 a segment
    folder = segments[0].parent
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in segments)

    w = DecisionLogWriter(arms, spool=Spool(tmp_path)).start()
    deadline = time.monotonic() + 30
    while log_counts(arms) != (40, 39) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log_counts(arms) == (40, 39)  # the last decision's outcome was never accepted
    assert (w.stats.replayed_segments, w.stats.replayed_records, w.stats.replayed_rows) == (
        12,
        79,
        79,
    )
    assert _segments(tmp_path) == []  # written, then deleted
    assert w.close(timeout_s=30)


def test_a_live_writers_segments_are_left_alone_and_deleted_once_written(arms, tmp_path):
    live = DecisionLogWriter(arms, spool=Spool(tmp_path, segment_records=10))
    assert live.activate_spool()
    for i in range(25):  # not started: everything stays queued, and spooled
        d = decision(seed=i)
        live.log_decision(d)
        live.log_outcome(outcome(d))
    assert len(_segments(tmp_path)) == 5
    other = DecisionLogWriter(arms, spool=Spool(tmp_path))
    assert other.activate_spool()
    assert other.replay_orphans() == 0 and log_counts(arms) == (0, 0)
    assert live.close(timeout_s=30)  # written here, then its segments deleted
    assert log_counts(arms) == (25, 25) and _segments(tmp_path) == []
    assert other.close(timeout_s=5)


def test_a_spool_is_never_written_into_another_database(arms, pg_server, tmp_path):
    url = arms.url.render_as_string(hide_password=False)
    _kill_a_writer(url, tmp_path, 3)  # 5 records: one segment
    other_url = pg_server.create_database("banditctl_spool_other")
    migrate.upgrade(other_url)
    other = create_engine(other_url)
    try:
        with other.begin() as conn:
            arms_repo.upsert_arms(conn, ARMS)
        w = DecisionLogWriter(other, spool=Spool(tmp_path))
        assert w.activate_spool() and w.replay_orphans() == 0
        assert log_counts(other) == (0, 0) and len(_segments(tmp_path)) == 1
        assert w.close(timeout_s=5)
    finally:
        other.dispose()
    # the database it belongs to takes them, once: a segment written again (a successor
    # that died while replaying it) adds nothing
    (path,) = _segments(tmp_path)
    kept = path.read_bytes()
    w = DecisionLogWriter(arms, spool=Spool(tmp_path))
    assert w.activate_spool() and w.stats.replayed_records == 5  # replays as it starts
    assert log_counts(arms) == (3, 2) and not path.exists()
    path.write_bytes(kept)
    assert w.replay_orphans() == 5 and log_counts(arms) == (3, 2)
    assert (w.stats.replayed_records, w.stats.replayed_rows) == (10, 5)
    assert w.close(timeout_s=5)


def test_a_record_cut_short_by_the_crash_ends_its_segment(tmp_path):
    spool = Spool(tmp_path)
    spool.activate("db")
    ds = [decision(seed=i) for i in range(3)]
    for i, d in enumerate(ds, start=1):
        spool.append(i, d)
    (path,) = _segments(tmp_path)
    size = path.stat().st_size
    spool.close(0)  # kept for a successor, unlocked
    with open(path, "r+b") as f:
        f.truncate(size - 5)
    orphan = Orphan.claim(path)
    assert orphan is not None
    assert [r.request_id for r in orphan.records()] == [d.request_id for d in ds[:2]]
    orphan.done()
    assert not path.exists()


def test_a_disk_that_refuses_turns_the_spool_off_and_the_writer_goes_on(arms, tmp_path):
    spool = Spool(tmp_path)
    w = DecisionLogWriter(arms, spool=spool)
    assert w.activate_spool()

    def refuse(*_):
        raise OSError(28, "No space left on device")

    spool.append = refuse  # type: ignore[method-assign]
    d = decision(seed=1)
    w.log_decision(d)
    w.log_outcome(outcome(d))
    assert w.stats.spool_errors == 1
    assert w.close(timeout_s=30) and log_counts(arms) == (1, 1)


_times = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1),
    timezones=st.one_of(st.none(), st.just(UTC),
                        st.builds(timezone, st.timedeltas(min_value=timedelta(hours=-23),
                                                          max_value=timedelta(hours=23)))),
)  # fmt: skip
_text = st.one_of(st.none(), st.text(max_size=20))
_floats = st.floats(allow_nan=False)


@st.composite
def _records(draw: st.DrawFn) -> DecisionRecord | OutcomeRecord:
    rid = uuid.UUID(int=draw(st.integers(0, 2**128 - 1)))
    at = draw(_times)
    if draw(st.booleans()):
        dtype = draw(st.sampled_from([np.float32, np.float64]))
        dim = draw(st.integers(0, 70))
        elements = st.floats(allow_nan=False, width=32)
        context = np.asarray(draw(st.lists(elements, min_size=dim, max_size=dim)), dtype=dtype)
        return DecisionRecord(
            request_id=rid, created_at=at, route=draw(st.text(max_size=10)),
            arm_id=draw(st.text(max_size=10)), context=context,
            propensity=draw(_floats), policy_version=draw(st.integers(0, 2**31)),
            learner=draw(st.text(max_size=10)), tenant=draw(_text), task=draw(_text),
            key_id=draw(_text), attempt=draw(st.integers(1, 5)),
            fallback_of=draw(st.one_of(st.none(), st.uuids())),
            client_request_id=draw(_text),
        )  # fmt: skip
    return OutcomeRecord(
        request_id=rid, created_at=at, status=draw(st.sampled_from(["ok", "error", "timeout"])),
        latency_ms=draw(_floats), ttft_ms=draw(st.one_of(st.none(), _floats)),
        prompt_tokens=draw(st.integers(0, 2**31)), completion_tokens=draw(st.integers(0, 2**31)),
        energy_j=draw(_floats), cost_usd=draw(_floats), error=draw(_text),
    )  # fmt: skip


def _same(a: DecisionRecord | OutcomeRecord, b: DecisionRecord | OutcomeRecord) -> bool:
    """Equal field by field, the time with its offset, the context with its dtype."""
    if type(a) is not type(b):
        return False
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            if not (x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()):
                return False
        elif isinstance(x, datetime):
            if not (x == y and x.utcoffset() == y.utcoffset()):
                return False
        elif x != y or type(x) is not type(y):
            return False
    return True


@settings(max_examples=300, deadline=None)
@given(_records())
def test_a_spooled_frame_gives_back_the_record_pickling_it_would(record):
    # the frame of plain fields against the plain computation: the pickled record
    assert _same(decode(encode(record)), pickle.loads(pickle.dumps(record)))
    assert _same(decode(encode(record)), record)


def test_a_segment_of_pickled_records_as_earlier_versions_wrote_is_read(tmp_path):
    ds = [decision(seed=i) for i in range(3)]
    records = [ds[0], outcome(ds[0]), ds[1], ds[2]]
    path = tmp_path / f"old-1-00000001{SUFFIX}"
    with open(path, "wb") as f:
        for r in records:
            data = pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL)
            f.write(struct.pack("<I", len(data)) + data)
        data = pickle.dumps(("x", 1))  # not a record: the rest is ignored
        f.write(struct.pack("<I", len(data)) + data)
        f.write(struct.pack("<I", len(data)) + pickle.dumps(ds[0]))
    orphan = Orphan.claim(path)
    assert orphan is not None
    read = list(orphan.records())
    assert len(read) == 4 and all(_same(a, b) for a, b in zip(read, records, strict=True))
    orphan.release()
