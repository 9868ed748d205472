"""Feedback on the real server: stored once per (request, source), validated, never orphaned."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from feedback import models as m
from feedback.errors import InvalidInput, NotFound
from feedback.records import FeedbackInput
from feedback.repositories import feedback
from tests.feedback.factories import count_rows, write_served


def test_feedback_is_stored_once_and_repeat_reports_duplicate(db):
    d = write_served(db)
    fb = FeedbackInput.validated(str(d.request_id), 0.8, "user")
    with db.begin() as conn:
        first = feedback.record_feedback(conn, fb)
    with db.begin() as conn:
        second = feedback.record_feedback(
            conn, FeedbackInput.validated(str(d.request_id), 0.1, "user")
        )
        other_source = feedback.record_feedback(
            conn, FeedbackInput.validated(str(d.request_id), 0.3, "judge")
        )
    assert not first.duplicate and first.feedback_id is not None
    assert second.duplicate and second.feedback_id is None
    assert not other_source.duplicate
    with db.connect() as conn:
        qs = conn.execute(
            select(m.feedback.c.source, m.feedback.c.quality).order_by(m.feedback.c.id)
        ).all()
    assert [tuple(r) for r in qs] == [("user", 0.8), ("judge", 0.3)]


def test_the_completion_id_is_accepted_as_the_request_id(db):
    d = write_served(db)
    by_completion_id = FeedbackInput.validated(f"chatcmpl-{d.request_id.hex}", 1.0, "user")
    assert by_completion_id.request_id == d.request_id
    with db.begin() as conn:
        assert not feedback.record_feedback(conn, by_completion_id).duplicate
    with pytest.raises(InvalidInput):
        FeedbackInput.validated("chatcmpl-not-hex", 1.0, "user")


@pytest.mark.parametrize(
    ("request_id", "quality", "source", "field"),
    [
        ("not-a-uuid", 0.5, "user", "request_id"),
        (123, 0.5, "user", "request_id"),
        (None, 1.5, "user", "quality"),
        (None, -0.01, "user", "quality"),
        (None, float("nan"), "user", "quality"),
        (None, "0.5", "user", "quality"),
        (None, True, "user", "quality"),
        (None, 0.5, "", "source"),
        (None, 0.5, "x" * 65, "source"),
    ],
)
def test_bad_feedback_names_the_field_and_writes_nothing(db, request_id, quality, source, field):
    d = write_served(db)
    with pytest.raises(InvalidInput) as err:
        FeedbackInput.validated(
            request_id if request_id is not None else str(d.request_id), quality, source
        )
    assert err.value.field == field
    with db.connect() as conn:
        assert count_rows(conn, m.feedback) == 0


def test_feedback_for_unknown_request_is_not_found_and_writes_nothing(db):
    write_served(db)
    unknown = FeedbackInput.validated(str(uuid.uuid4()), 0.5)
    with pytest.raises(NotFound) as err, db.begin() as conn:
        feedback.record_feedback(conn, unknown)
    assert err.value.resource == "request_id"
    with pytest.raises(NotFound), db.begin() as conn:
        feedback.record_feedback_many(conn, [unknown])
    with db.connect() as conn:
        assert count_rows(conn, m.feedback) == 0


def test_feedback_batch_reports_duplicates_within_and_across_calls(db):
    a, b = write_served(db), write_served(db)
    items = [
        FeedbackInput.validated(str(a.request_id), 1.0),
        FeedbackInput.validated(str(b.request_id), 0.0),
        FeedbackInput.validated(str(a.request_id), 0.2),  # same (request, source) within the batch
    ]
    with db.begin() as conn:
        res = feedback.record_feedback_many(conn, items)
    assert [r.duplicate for r in res] == [False, False, True]
    with db.begin() as conn:
        again = feedback.record_feedback_many(conn, items[:2])
    assert [r.duplicate for r in again] == [True, True]
    with db.connect() as conn:
        assert count_rows(conn, m.feedback) == 2
