"""User feedback on an answer, single and batch.

Each item names the answer's ``request_id`` and carries its ``feedback_token``
(or the request shows an API key with the feedback scope); the quality is
``quality`` in [0, 1] or a ``rating``: thumbs ("up"/"down") or 1-5 stars.
With a token, one feedback row per answer, whatever its ``source`` (a repeat is
answered ``duplicate: true``); with a feedback key, one per (answer, source).
``source`` is a label (printable, at most 64 characters), ``comment`` free text of at
most ``limits.max_comment_chars`` (:mod:`.validation`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from controlplane.api import schemas
from controlplane.api.auth import ApiKeys, ApiKeysDep, authorise_feedback
from controlplane.api.deps import CoreDep, read_json
from controlplane.api.validation import check_free_text, check_label
from controlplane.gateway_core import BadRequest, GatewayCore
from feedback.errors import InvalidInput
from feedback.records import MAX_SOURCE_LEN, FeedbackInput, parse_request_id
from feedback.repositories import feedback as feedback_repo

THUMBS = {"up": 1.0, "thumbs_up": 1.0, "down": 0.0, "thumbs_down": 0.0}

router = APIRouter()


def quality_from(payload: dict[str, Any]) -> tuple[float, str | None]:
    """``quality`` in [0, 1], or ``rating``: thumbs ("up"/"down") or 1-5 stars."""
    if "quality" in payload and payload["quality"] is not None:
        return payload["quality"], None
    rating = payload.get("rating")
    if rating is None:
        raise InvalidInput("quality", "give quality in [0, 1] or a rating")
    if isinstance(rating, str) and rating.lower() in THUMBS:
        return THUMBS[rating.lower()], rating
    if isinstance(rating, int) and not isinstance(rating, bool) and 1 <= rating <= 5:
        return (rating - 1) / 4.0, str(rating)
    raise InvalidInput("rating", "must be 'up', 'down' or an integer 1-5")


def _parse_feedback(
    request: Request, payload: Any, core: GatewayCore, keys: ApiKeys
) -> tuple[FeedbackInput, bool]:
    if not isinstance(payload, dict):
        raise InvalidInput("body", "must be a JSON object")
    rid = parse_request_id(payload.get("request_id"))
    require_known = authorise_feedback(request, payload, rid, keys, core.tokens)
    quality, raw = quality_from(payload)
    comment = payload.get("comment")
    if comment is not None:
        check_free_text("comment", comment, core.config.limits.max_comment_chars)
    source = payload.get("source", "user")
    check_label("source", source, MAX_SOURCE_LEN)
    fb = FeedbackInput.validated(rid, quality, source, raw_rating=raw, comment=comment)
    return fb, require_known


def _counted(core: GatewayCore, results: list[Any]) -> list[dict[str, Any]]:
    """Count stored feedback and duplicates on this replica; the answer per item."""
    dups = sum(r.duplicate for r in results)
    core.counters["feedback_duplicates"] = core.counters.get("feedback_duplicates", 0) + dups
    core.counters["feedback"] = core.counters.get("feedback", 0) + len(results) - dups
    core.instruments.feedback_stored(r.source for r in results if not r.duplicate)
    return [
        {"request_id": str(r.request_id), "source": r.source, "duplicate": r.duplicate}
        for r in results
    ]


def _store_one(core: GatewayCore, fb: FeedbackInput, require_known: bool) -> Any:
    # a key's feedback is kept per source; a token's once per answer (require_known is
    # False exactly when a token authorised it)
    with core.engine.begin() as conn:
        return feedback_repo.record_feedback(
            conn, fb, require_known=require_known, once_per_request=not require_known
        )


@router.post("/v1/feedback", openapi_extra=schemas.FEEDBACK_BODY)
async def feedback(request: Request, core: CoreDep, keys: ApiKeysDep) -> Any:
    fb, require_known = _parse_feedback(request, await read_json(request), core, keys)
    res = await asyncio.to_thread(_store_one, core, fb, require_known)
    return _counted(core, [res])[0]


@router.post("/v1/feedback/batch", openapi_extra=schemas.FEEDBACK_BATCH_BODY)
async def feedback_batch(request: Request, core: CoreDep, keys: ApiKeysDep) -> Any:
    payload = await read_json(request)
    items = payload.get("items") if isinstance(payload, dict) else None
    if not isinstance(items, list) or not items or len(items) > schemas.MAX_FEEDBACK_BATCH:
        raise InvalidInput(
            "items", f"must be a list of 1 to {schemas.MAX_FEEDBACK_BATCH} feedback objects"
        )
    parsed = []
    for i, item in enumerate(items):
        try:
            parsed.append(_parse_feedback(request, item, core, keys))
        except InvalidInput as exc:
            raise InvalidInput(f"items[{i}].{exc.field}", exc.message) from None
        except BadRequest as exc:
            raise BadRequest(f"items[{i}].{exc.field}", exc.message, exc.status) from None
    if any(req for _, req in parsed):

        def store() -> Any:
            with core.engine.begin() as conn:
                return feedback_repo.record_feedback_many(conn, [fb for fb, _ in parsed])

        results = await asyncio.to_thread(store)
    else:

        def store_tokens() -> Any:
            with core.engine.begin() as conn:
                return [
                    feedback_repo.record_feedback(
                        conn, fb, require_known=False, once_per_request=True
                    )
                    for fb, _ in parsed
                ]

        results = await asyncio.to_thread(store_tokens)
    return {"results": _counted(core, results)}
