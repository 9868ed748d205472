"""The body check's fast pass against the walk that names a fault's place, and the body
read's orjson parse against the standard library's."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from controlplane.api import validation
from controlplane.api.validation import _NotANumber, _sound, _walk, check_tree, read_body
from controlplane.config import RequestLimits
from controlplane.gateway_core import BadRequest
from tests.controlplane.json_values import typed

TEXT = st.text(
    alphabet=st.sampled_from(["a", "é", "\x00", "\ud800", "\udfff", "😀", " "]), max_size=6
)
LEAF = st.one_of(TEXT, st.integers(), st.floats(allow_nan=False), st.booleans(), st.none(),
                 st.builds(_NotANumber, st.just("NaN")))  # fmt: skip
TREE = st.recursive(
    LEAF,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=30,
)


def _walk_finds(value: Any, depth: int) -> bool:
    try:
        _walk(value, depth, "body")
    except BadRequest:
        return True
    return False


@settings(max_examples=300, deadline=None)
@given(TREE, st.integers(1, 5))
def test_fast_pass_agrees_with_the_walk(value: Any, depth: int) -> None:
    """A body the fast pass finds sound is one the walk finds nothing in, and the other
    way round: ``check_tree`` raises exactly when the walk does, with its message."""
    assert _sound(value, depth) is not _walk_finds(value, depth)


def test_a_fault_is_named_by_the_walk() -> None:
    body = {"messages": [{"role": "user", "content": "ok"}, {"role": "user", "content": "a\x00"}]}
    with pytest.raises(BadRequest) as err:
        check_tree(body, 8)
    assert err.value.field == "messages[1].content" and "NUL" in err.value.message
    check_tree({"messages": [{"role": "user", "content": "fine é"}]}, 8)


# -- the body read: orjson first, the standard library's way where it must answer --------

EDGES = [2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**18, 10**19, 10**29, 10**30, 10**31]
NUMBER = st.one_of(
    st.sampled_from(EDGES + [-n for n in EDGES] + [-(2**63) - 1]),
    st.integers(-(10**40), 10**40),
    st.integers(-(2**64) - 2, 2**64 + 2),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(width=32),
)
RAW_TEXT = st.text(
    alphabet=st.sampled_from(["a", "é", "\x00", "\x01", "\ud800", "\udfff", "😀", '"', "\\"]),
    max_size=6,
)
BODY = st.recursive(
    st.one_of(RAW_TEXT, NUMBER, st.booleans(), st.none()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(RAW_TEXT, inner, max_size=4)
    ),
    max_leaves=20,
)


def _raw(value: Any, ascii_only: bool, form: int) -> bytes:
    """``value`` as request bytes: escaped or raw UTF-8 (an unpaired surrogate raw is
    invalid UTF-8), floats in another notation, or a body that is not JSON at all."""
    text = json.dumps(value, ensure_ascii=ascii_only)  # NaN and Infinity as JS writes them
    if form == 1:  # exponents and long mantissas
        text = re.sub(r"(?<![\w.\"])(\d+)\.(\d+)(?![\w\"])", r"\1.\g<2>000e0", text)
    elif form == 2:
        text = "\ufeff" + text
    elif form == 3:
        text = text + " x"
    elif form == 4:
        text = "[" * 1100 + text + "]" * 1100
    return text.encode("utf-8", "surrogatepass")


def _read(raw: bytes, depth: int) -> Any:
    """What ``read_body`` gives for ``raw``: its value with every number's type (1 and
    1.0, 0.0 and -0.0 apart), or the refusal's status, field and message."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    headers = [(b"content-type", b"application/json")]
    request = Request({"type": "http", "method": "POST", "headers": headers}, receive)
    limits = RequestLimits(max_json_depth=depth)
    try:
        value = asyncio.run(read_body(request, limits))
    except BadRequest as exc:
        return ("refused", exc.status, exc.field, exc.message)
    return typed(value)


@settings(max_examples=400, deadline=None)
@given(BODY, st.booleans(), st.integers(0, 4), st.integers(4, 7))
def test_a_body_reads_the_same_as_the_standard_librarys_way(
    value: Any, ascii_only: bool, form: int, depth: int
) -> None:
    """orjson's parse (where it answers) gives the value, the number types and every
    refusal that the standard library's way alone gives."""
    raw = _raw(value, ascii_only, form)
    fast = _read(raw, depth)
    with patch.object(validation, "_fast_parse", lambda *_: validation._SLOW):
        slow = _read(raw, depth)
    assert fast == slow


def test_orjson_answers_a_plain_body_and_not_a_long_integer() -> None:
    """The fast way is taken for a chat body (else the test above compares one way with
    itself), and not for an integer orjson would read as a float."""
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "hi é"}]})
    assert validation._fast_parse(body.encode(), 8) == json.loads(body)
    for n in (2**64, -(2**63) - 1, 10**29):
        assert validation._fast_parse(f'{{"seed": {n}}}'.encode(), 8) is validation._SLOW
        assert _read(f'{{"seed": {n}}}'.encode(), 8) == {"seed": ("int", n)}
    assert validation._fast_parse(b'{"a": "\\u0000"}', 8) is validation._SLOW  # NUL: named
