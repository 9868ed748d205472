"""Decision ids: UUIDv7, ordered by the time they were made, unique, unguessable."""

from __future__ import annotations

import os
import time
import uuid

from feedback.records import new_request_id


def test_request_ids_are_uuid7_in_time_order_and_unique():
    before_ms = time.time_ns() // 1_000_000
    ids = [new_request_id() for _ in range(20_000)]
    after_ms = time.time_ns() // 1_000_000
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    stamps = [i.int >> 80 for i in ids]
    assert before_ms <= stamps[0] and stamps[-1] <= after_ms
    assert stamps == sorted(stamps)  # made later: sorts later (to the millisecond)
    assert len(set(ids)) == len(ids)
    # 74 random bits: within one millisecond the ids still differ everywhere below it
    rand = [i.int & ((1 << 80) - 1) for i in ids]
    assert len({r >> 64 & 0xFFF for r in rand}) > 3000  # rand_a: 12 bits, well spread
    assert len({r & 0xFFFF for r in rand}) > 15_000  # rand_b's low bits
    time.sleep(0.002)
    assert new_request_id() > ids[-1]  # a later millisecond sorts after every earlier id


def test_a_forked_child_draws_random_bits_of_its_own():
    """Ids take their random bits from a block read ahead: a fork's child must not make
    the ids its parent makes next from the same block."""
    new_request_id()  # the parent holds a block, partly used
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids' random bits, to the parent
        try:
            os.write(write, b"".join(new_request_id().bytes[6:] for _ in range(5)))
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        child = f.read()
    os.waitpid(pid, 0)
    parent = b"".join(new_request_id().bytes[6:] for _ in range(5))
    assert len(child) == len(parent) == 50
    assert child != parent
