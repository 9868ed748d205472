"""Feedback: quality ratings of served answers, stored once per (request id, source), or
once per request id whatever the source (``once_per_request``: feedback that shows the
answer's token, which proves one answer, not who rates it)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import Connection, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from feedback import models as m
from feedback.errors import NotFound
from feedback.records import FeedbackInput, FeedbackResult
from feedback.repositories._sql import copy_insert

FEEDBACK_LOCK_CLASS = 0x66656564  # "feed": the two-key advisory lock space of feedback


def _request_lock_key(request_id: uuid.UUID) -> int:
    return int.from_bytes(request_id.bytes[:4], "big", signed=True)


def record_feedback(
    conn: Connection,
    fb: FeedbackInput,
    *,
    require_known: bool = True,
    once_per_request: bool = False,
) -> FeedbackResult:
    """Store feedback once per (request id, source).

    ``require_known``: the decision must already be in the database (else
    :class:`NotFound`, nothing written). The HTTP layer turns it off when a
    valid signed feedback token proves the request was served but its
    decision may still sit in a gateway's write buffer.
    ``once_per_request``: store nothing (a duplicate) when the request has feedback of
    any source already; concurrent posts for one request are serialized by a
    transaction-level advisory lock on its id.
    """
    if once_per_request:
        conn.execute(
            text("SELECT pg_advisory_xact_lock(:c, :k)"),
            {"c": FEEDBACK_LOCK_CLASS, "k": _request_lock_key(fb.request_id)},
        )
        had = select(m.feedback.c.id).where(m.feedback.c.request_id == fb.request_id).limit(1)
        if conn.execute(had).first() is not None:
            return FeedbackResult(fb.request_id, fb.source, duplicate=True, feedback_id=None)
    if require_known:
        known = select(m.decisions.c.request_id).where(m.decisions.c.request_id == fb.request_id)
        if conn.execute(known).first() is None:
            raise NotFound("request_id", str(fb.request_id))
    stmt = (
        pg_insert(m.feedback)
        .values(
            request_id=fb.request_id,
            source=fb.source,
            quality=fb.quality,
            raw_rating=fb.raw_rating,
            comment=fb.comment,
        )
        .on_conflict_do_nothing(index_elements=["request_id", "source"])
        .returning(m.feedback.c.id)
    )
    new_id = conn.execute(stmt).scalar()
    return FeedbackResult(fb.request_id, fb.source, duplicate=new_id is None, feedback_id=new_id)


def record_feedback_many(conn: Connection, items: Sequence[FeedbackInput]) -> list[FeedbackResult]:
    """Batch form: one statement; reports duplicates per item (within the batch too)."""
    if not items:
        return []
    ids = list({fb.request_id for fb in items})
    known = {
        r[0]
        for r in conn.execute(
            select(m.decisions.c.request_id).where(m.decisions.c.request_id.in_(ids))
        )
    }
    missing = [str(i) for i in ids if i not in known]
    if missing:
        raise NotFound("request_id", missing[0])
    seen: set[tuple[uuid.UUID, str]] = set()
    rows = []
    for fb in items:
        key = (fb.request_id, fb.source)
        if key not in seen:
            seen.add(key)
            rows.append((fb.request_id, fb.source, fb.quality, fb.raw_rating, fb.comment))
    cols = ("request_id", "source", "quality", "raw_rating", "comment")
    returned = copy_insert(conn, "feedback", cols, rows, returning="id, request_id, source")
    inserted = {(r.request_id, r.source): r.id for r in returned}
    results = []
    reported: set[tuple[uuid.UUID, str]] = set()
    for fb in items:
        key = (fb.request_id, fb.source)
        new_id = inserted.get(key) if key not in reported else None
        reported.add(key)
        results.append(
            FeedbackResult(fb.request_id, fb.source, duplicate=new_id is None, feedback_id=new_id)
        )
    return results
