"""The request path's pieces keep the GIL.

A gateway replica runs the request path on Serve's event loop thread beside other
threads that want the GIL (Serve's router loop, Ray's own, the log writer). A call that
lets the GIL go hands it to one of them, and the request waits to take it back, up to the
interpreter's switch interval (5 ms) each time. With a thread spinning beside it, such a
call costs the caller a voluntary context switch whenever the spinner wakes before the
call returns (most times for a call of a few microseconds); a call that keeps the GIL
costs one only when the interpreter's switch interval makes it drop the GIL, once per
5 ms of its own work. The test counts them (``/proc/self/task/<tid>/status``) for each
piece that once let the GIL go (the feedback token's HMAC, a decision id's random bits,
the spool's write, the learner's compiled scoring), after checking that the count sees a
call that lets it go (``time.sleep``).
"""

from __future__ import annotations

import errno
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from controlplane.tokens import FeedbackTokens
from feedback.records import new_request_id
from feedback.spool import _write
from learners import make_learner

CALLS = 1000


def _voluntary_switches() -> int:
    with open(f"/proc/self/task/{threading.get_native_id()}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in /proc")


@pytest.fixture
def spinning() -> Iterator[None]:
    """Another thread that wants the GIL all the time."""
    stop = threading.Event()

    def spin() -> None:
        n = 0
        while not stop.is_set():
            n += 1

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def switches_per_call(call: Callable[[], object], calls: int = CALLS) -> float:
    call()  # warm
    before = _voluntary_switches()
    for _ in range(calls):
        call()
    return (_voluntary_switches() - before) / calls


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path / "spool", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    yield fd
    os.close(fd)


@pytest.mark.usefixtures("spinning")
def test_the_request_path_keeps_the_gil(fd):
    control = switches_per_call(lambda: time.sleep(0.0001), calls=100)
    assert control >= 0.5, f"time.sleep: {control:.2f} switches a call (the count cannot tell)"
    frame = b"x" * 300

    tokens = FeedbackTokens("a-secret-of-some-length-0123456789", 600)
    rid = uuid.uuid4()
    learner = make_learner({"kind": "linucb"}, 64, {"quality": 1.0})
    for arm in ("a", "b", "c", "d"):
        learner.add_arm(arm)
    x = np.random.default_rng(0).normal(size=64)
    rng = np.random.default_rng(0)
    pieces = {
        "feedback token": lambda: tokens.issue(rid),
        "decision id": new_request_id,
        "spool write": lambda: _write(fd, frame),
        "linucb select": lambda: learner.select(x, ["a", "b", "c", "d"], rng),
    }
    for name, call in pieces.items():
        got = switches_per_call(call)
        assert got <= 0.02, f"{name}: {got:.3f} switches a call (time.sleep: {control:.2f})"


def test_the_spools_write_lands_its_bytes_and_raises_the_kernels_error(tmp_path):
    path = tmp_path / "segment"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        assert _write(fd, b"abc") == 3
        assert _write(fd, b"defg") == 4
    finally:
        os.close(fd)
    assert path.read_bytes() == b"abcdefg"
    ro = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as refused:
            _write(ro, b"x")
        assert refused.value.errno == errno.EBADF  # not open for writing
    finally:
        os.close(ro)
