"""The request log on the real server: batches round-trip, retry idempotently, land whole."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import numpy as np
import pytest
from sqlalchemy import select, text
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


def test_the_binary_copy_types_are_the_tables_column_types(db):
    """COPY's binary format takes each column's type as given: these must be the tables'."""
    query = text(
        "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
        " WHERE a.attrelid = CAST(:table AS regclass) AND a.attnum > 0 AND NOT a.attisdropped"
    )
    written = (
        ("decisions", request_log._DECISION_COLS, request_log._DECISION_TYPES),
        ("outcomes", request_log._OUTCOME_COLS, request_log._OUTCOME_TYPES),
    )
    with db.connect() as conn:
        for table, cols, types in written:
            have = dict(conn.execute(query, {"table": table}).tuples().all())
            assert len(cols) == len(types)
            assert {c: have[c] for c in cols} == dict(zip(cols, types, strict=True)), table


def test_every_field_round_trips_through_the_binary_copy(db):
    first = decision(seed=1, dim=64)
    d = dataclasses.replace(
        decision(seed=2, dim=64, at=datetime(2026, 3, 1, 12, 30, 45, 123456, tzinfo=UTC)),
        route="chat-äöü",
        propensity=0.125,
        policy_version=2**31 - 1,
        tenant="tenant \t\\ \n one",
        task="math",
        key_id="key-1",
        attempt=3,
        fallback_of=first.request_id,
        client_request_id="client-req-7",
    )
    o = dataclasses.replace(outcome(d, status="error"), ttft_ms=None, error="upstream\t500 \\ x")
    with db.begin() as conn:
        assert request_log.write_decisions(conn, [first, d], guarded=False) == 2
        assert request_log.write_outcomes(conn, [outcome(first), o], guarded=False) == 2
    with db.connect() as conn:
        row = (
            conn.execute(select(m.decisions).where(m.decisions.c.request_id == d.request_id))
            .one()
            ._mapping
        )
        out = conn.execute(select(m.outcomes).where(m.outcomes.c.request_id == d.request_id)).one()
    expected = {
        "created_at": d.created_at, "route": d.route, "arm_id": d.arm_id, "context_dim": 64,
        "propensity": 0.125, "policy_version": 2**31 - 1, "learner": "linucb",
        "tenant": d.tenant, "task": "math", "key_id": "key-1", "attempt": 3,
        "fallback_of": first.request_id, "client_request_id": "client-req-7",
    }  # fmt: skip
    assert {k: row[k] for k in expected} == expected
    np.testing.assert_array_equal(np.frombuffer(row["context"], dtype="<f4"), d.context)
    assert (out.status, out.error, out.ttft_ms, out.latency_ms) == ("error", o.error, None, 500.0)
    assert (out.prompt_tokens, out.completion_tokens, out.energy_j, out.cost_usd) == (
        12, 40, 3.5, 0.002,
    )  # fmt: skip
    assert out.created_at == o.created_at
