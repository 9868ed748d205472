"""Validation at the API edge: every body and text field is checked before anything is
decided or written, and a refusal names the field.

:func:`read_body` reads a JSON body under ``limits.max_body_bytes`` (413 above it; 415 for
a content type that is not JSON; 400 for bytes that are not UTF-8 or JSON). Numbers JSON
cannot hold (``NaN``, ``Infinity``, ``1e400``, integers of more than 30 digits) and every
string (keys too) are checked where they stand, so the error names their place
(``messages[2].content``): no NUL, no unpaired surrogate (neither can be stored or even
encoded for PostgreSQL), nesting at most ``limits.max_json_depth``. A body is parsed by
orjson first (a third of the standard library's time with the hooks that catch those
numbers); any body it refuses or might read otherwise (a run of 19 or more digits: orjson
reads an integer past 64 bits as a float) and any body the checks fault goes the standard
library's way, so the value and every error are the same as that way's alone.

:func:`validate_chat` checks a chat (or route explain) body's fields and
:func:`check_label` the short identifying strings (``metadata.tenant``, ``task``, a
feedback ``source``): printable, no control characters, at most
``limits.max_label_chars``. Limits are :class:`controlplane.config.RequestLimits`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson
from fastapi import Request

from controlplane.config import RequestLimits
from controlplane.gateway_core import BadRequest

MAX_INT_DIGITS = 30
# a body with such a run of digits is parsed by the standard library: orjson reads an
# integer outside 64 bits (-9223372036854775809, 18446744073709551616) as a float
_LONG_DIGITS = re.compile(rb"\d{19}")
ROLES_MAX_CHARS = 32


class _NotANumber:
    """Stands in for a number JSON cannot carry, so that its place can be named."""

    def __init__(self, text: str) -> None:
        self.text = text


def _parse_constant(text: str) -> _NotANumber:
    return _NotANumber(text)  # NaN, Infinity, -Infinity


def _parse_float(text: str) -> float | _NotANumber:
    value = float(text)
    return value if math.isfinite(value) else _NotANumber(text[:40])


def _parse_int(text: str) -> int | _NotANumber:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        return _NotANumber(text[:40] + "...")
    return int(text)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("", "application/json") or media.endswith("+json")


async def read_body(request: Request, limits: RequestLimits) -> Any:
    """The request's JSON body, read under the size limit and checked (see the module)."""
    content_type = request.headers.get("content-type")
    if content_type is not None and not _is_json(content_type):
        raise BadRequest("content-type", "must be application/json", 415)
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isascii() or not declared.isdigit():
            raise BadRequest("content-length", "must be a number of bytes", 400)
        if int(declared) > limits.max_body_bytes:
            raise BadRequest("body", f"larger than {limits.max_body_bytes} bytes", 413)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise BadRequest("body", f"larger than {limits.max_body_bytes} bytes", 413)
        chunks.append(chunk)
    raw = b"".join(chunks)
    value = _fast_parse(raw, limits.max_json_depth)
    if value is not _SLOW:
        return value
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body", "not valid UTF-8", 400) from None
    try:
        value = json.loads(
            text,
            parse_constant=_parse_constant,
            parse_float=_parse_float,
            parse_int=_parse_int,
        )
    except RecursionError:
        raise BadRequest("body", "nested too deeply", 400) from None
    except ValueError as exc:  # json.JSONDecodeError is one
        raise BadRequest("body", f"not valid JSON ({_reason(exc)})", 400) from None
    check_tree(value, limits.max_json_depth)
    return value


_SLOW = object()


def _fast_parse(raw: bytes, max_depth: int) -> Any:
    """``raw`` parsed by orjson and checked, or ``_SLOW`` where the standard library's
    way must answer: orjson refused it (invalid UTF-8 or JSON, an unpaired surrogate,
    ``NaN``, a float past the double range, more than 1,024 levels), it has a run of 19
    or more digits, or the checks fault it (the other way names the place). Otherwise
    both ways give the same value: JSON's grammar alike, the same correctly rounded
    floats, integers within 64 bits exact, the last of duplicate keys."""
    if _LONG_DIGITS.search(raw) is not None:
        return _SLOW
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _SLOW
    return value if _sound(value, max_depth) else _SLOW


def _reason(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return "malformed"


def check_tree(value: Any, max_depth: int, root: str = "body") -> None:
    """Depth, numbers and strings of a parsed JSON value (iterative: no recursion)."""
    if not _sound(value, max_depth):
        _walk(value, max_depth, root)  # raises, naming the place of the first fault


def _walk(value: Any, max_depth: int, root: str) -> None:
    """:func:`check_tree` with the path of every node, for the error message."""
    stack: list[tuple[Any, str, int]] = [(value, root, 1)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > max_depth:
                raise BadRequest(path, f"nested deeper than {max_depth} levels", 400)
            if isinstance(node, dict):
                for k, v in node.items():
                    where = f"{path}.{_key(k)}" if path != root else _key(k)
                    check_text(where, k, what="key")
                    stack.append((v, where, depth + 1))
            else:
                for i, v in enumerate(node):
                    stack.append((v, f"{path}[{i}]", depth + 1))
        elif isinstance(node, str):
            check_text(path, node)
        elif isinstance(node, _NotANumber):
            raise BadRequest(path, f"{node.text} is not a finite number JSON can hold", 400)


def _sound(value: Any, max_depth: int) -> bool:
    """Whether :func:`check_tree` finds nothing in ``value``: the same checks, without
    building the path of every node (which only an error message needs)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if not _clean_text(node):
                return False
        elif isinstance(node, dict):
            if depth > max_depth:
                return False
            for k, v in node.items():
                if not _clean_text(k):
                    return False
                stack.append((v, depth + 1))
        elif isinstance(node, list):
            if depth > max_depth:
                return False
            stack.extend((v, depth + 1) for v in node)
        elif isinstance(node, _NotANumber):
            return False
    return True


def _clean_text(value: str) -> bool:
    """What :func:`check_text` accepts: no NUL, no unpaired surrogate."""
    if "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _key(k: str) -> str:
    return _printable(k)[:64]


def _printable(s: str) -> str:
    """``s`` safe to echo in an error message (no surrogates, no controls)."""
    return "".join(c if c.isprintable() and not _surrogate(c) else "?" for c in s)


def _surrogate(c: str) -> bool:
    return 0xD800 <= ord(c) <= 0xDFFF


def check_text(field: str, value: str, *, what: str = "text") -> None:
    """No NUL and no unpaired surrogate: PostgreSQL cannot store either."""
    if "\x00" in value:
        raise BadRequest(field, f"{what} contains a NUL character", 400)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(field, f"{what} contains an unpaired surrogate", 400) from None


def check_label(field: str, value: Any, max_chars: int) -> str:
    """A short identifying string: printable (no control characters), 1..max_chars."""
    if not isinstance(value, str):
        raise BadRequest(field, "must be a string", 422)
    check_text(field, value)
    if not value or len(value) > max_chars:
        raise BadRequest(field, f"must be 1 to {max_chars} characters", 422)
    if not value.isprintable():
        raise BadRequest(field, "must not contain control characters", 400)
    return value


def check_free_text(field: str, value: Any, max_chars: int) -> str:
    """Free text (a comment): newlines and tabs allowed, no other control character."""
    if not isinstance(value, str):
        raise BadRequest(field, "must be a string", 422)
    check_text(field, value)
    if len(value) > max_chars:
        raise BadRequest(field, f"longer than {max_chars} characters", 422)
    if any(not c.isprintable() and c not in "\n\r\t" for c in value):
        raise BadRequest(field, "must not contain control characters", 400)
    return value


def _int_in(field: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(field, f"must be an integer from {low} to {high}", 422)


def validate_chat(body: Any, limits: RequestLimits) -> dict[str, Any]:
    """A chat completions (or route explain) body's fields, before anything is decided.
    A bad field is a 400 naming it, as OpenAI's API answers (the openai SDK raises
    ``BadRequestError``); elsewhere the same checks answer 422."""
    try:
        return _validate_chat(body, limits)
    except BadRequest as exc:
        if exc.status != 422:
            raise
        raise BadRequest(exc.field, exc.message, 400) from None


def _validate_chat(body: Any, limits: RequestLimits) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("body", "must be a JSON object", 422)
    if body.get("model") is not None:
        check_label("model", body["model"], limits.max_label_chars)
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("messages", "must be a non-empty list", 422)
    if len(msgs) > limits.max_messages:
        raise BadRequest("messages", f"more than {limits.max_messages} messages", 422)
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise BadRequest(f"messages[{i}]", "must be an object", 422)
        check_label(f"messages[{i}].role", m.get("role"), ROLES_MAX_CHARS)
        content = m.get("content")
        if content is not None and not isinstance(content, str | list):
            raise BadRequest(f"messages[{i}].content", "must be a string or a list", 422)
    for name in ("max_tokens", "max_completion_tokens"):
        if body.get(name) is not None:
            _int_in(name, body[name], 1, limits.max_tokens)
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise BadRequest("stream", "must be true or false", 422)
    for name in ("task", "user"):
        if body.get(name) is not None:
            check_label(name, body[name], limits.max_label_chars)
    meta = body.get("metadata")
    if meta is not None:
        _validate_metadata(meta, limits)
    return body


def _validate_metadata(meta: Any, limits: RequestLimits) -> None:
    if not isinstance(meta, dict):
        raise BadRequest("metadata", "must be an object", 422)
    if len(meta) > limits.max_metadata_keys:
        raise BadRequest("metadata", f"more than {limits.max_metadata_keys} keys", 422)
    for k, v in meta.items():
        field = f"metadata.{_key(k)}"
        if not k or len(k) > limits.max_metadata_key_chars:
            raise BadRequest(field, f"keys are 1 to {limits.max_metadata_key_chars} chars", 422)
        if k in ("tenant", "task"):
            if v is not None:
                check_label(field, v, limits.max_label_chars)
        elif isinstance(v, str):
            if len(v) > limits.max_metadata_value_chars:
                raise BadRequest(
                    field, f"longer than {limits.max_metadata_value_chars} characters", 422
                )
        elif v is not None and not isinstance(v, int | float | bool):
            raise BadRequest(field, "must be a string, a number, a boolean or null", 422)


def client_request_id(request: Request, limits: RequestLimits) -> str | None:
    """The client's ``x-request-id``, kept only to correlate: printable ASCII, bounded."""
    value = request.headers.get("x-request-id")
    if value is None or value == "":
        return None
    if (
        len(value) > limits.max_client_request_id_chars
        or not value.isascii()
        or not value.isprintable()
    ):
        raise BadRequest(
            "x-request-id",
            f"must be 1 to {limits.max_client_request_id_chars} printable ASCII characters",
            400,
        )
    return value
