"""The request log on the real server: batches round-trip, retry idempotently, land whole."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from feedback import models as m
from feedback.repositories import request_log
from tests.feedback.factories import count_rows, decision, outcome


def test_batch_write_round_trips_context_and_is_idempotent(db):
    ds = [decision(seed=i, dim=16) for i in range(50)]
    os_ = [outcome(d) for d in ds]
    with db.begin() as conn:
        assert request_log.write_decisions(conn, ds) == 50
        assert request_log.write_outcomes(conn, os_) == 50
    with db.begin() as conn:  # a retried batch writes nothing twice
        assert request_log.write_decisions(conn, ds) == 0
        assert request_log.write_outcomes(conn, os_) == 0
    with db.connect() as conn:
        assert count_rows(conn, m.decisions) == 50
        row = conn.execute(
            select(m.decisions.c.context, m.decisions.c.context_dim).where(
                m.decisions.c.request_id == ds[7].request_id
            )
        ).one()
    assert row.context_dim == 16
    np.testing.assert_array_equal(np.frombuffer(row.context, dtype="<f4"), ds[7].context)


def test_an_unguarded_write_of_a_retried_batch_fails_on_the_rows_there(db):
    ds = [decision(seed=i) for i in range(5)]
    with db.begin() as conn:
        assert request_log.write_decisions(conn, ds[:2], guarded=False) == 2
    with pytest.raises(IntegrityError) as raised, db.begin() as conn:
        request_log.write_decisions(conn, ds, guarded=False)
    assert request_log.already_written(raised.value)
    bad = decision(arm="no-such-arm")  # bad data is no retried batch
    with pytest.raises(IntegrityError) as raised, db.begin() as conn:
        request_log.write_decisions(conn, [bad], guarded=False)
    assert not request_log.already_written(raised.value)
    with db.connect() as conn:
        assert count_rows(conn, m.decisions) == 2


def test_batch_failing_midway_writes_none_of_it(db):
    good = [decision(seed=i) for i in range(10)]
    bad = decision(arm="no-such-arm")
    with pytest.raises(IntegrityError, match="fk_decisions_arm_id_arms"), db.begin() as conn:
        request_log.write_decisions(conn, good[:5] + [bad] + good[5:])
    with db.connect() as conn:
        assert count_rows(conn, m.decisions) == 0
