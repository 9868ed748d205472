"""The chat path's JSON out (orjson) against the standard library's."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.api.encode import JSONResponse, dumps
from tests.controlplane.json_values import typed

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')  # a JSON string, escapes and all
VALUE = st.recursive(
    st.one_of(
        st.text(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False,
        allow_infinity=False), st.booleans(), st.none(),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(), inner, max_size=4)),
    max_leaves=25,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(VALUE)
def test_it_writes_what_the_standard_library_reads_back_alike(value: Any) -> None:
    """Compact UTF-8 JSON that reads back to the same value, every float to the bit."""
    out = dumps(value)
    assert typed(json.loads(out.decode("utf-8"))) == typed(value)
    assert not re.search(rb"\s", _STRING.sub(b"", out))  # compact: no space outside strings


def test_what_orjson_does_not_take_goes_the_standard_librarys_way() -> None:
    assert dumps({1: "a"}) == b'{"1":"a"}'  # a key that is not a string
    assert dumps({"seed": 2**70}) == b'{"seed":1180591620717411303424}'
    assert dumps("é") == '"é"'.encode()  # UTF-8, not a \\u escape
    with pytest.raises(TypeError):
        dumps({"a": object()})  # neither writes it: as before, the caller's error


def test_a_number_json_cannot_hold_is_null_not_a_failed_answer() -> None:
    body = {"banditctl": {"cost_usd": math.nan, "energy_j": math.inf}}
    assert json.loads(dumps(body)) == {"banditctl": {"cost_usd": None, "energy_j": None}}
    with pytest.raises(ValueError):  # what the standard library's response did instead
        json.dumps(body, allow_nan=False)


def test_the_response_renders_with_it() -> None:
    response = JSONResponse({"a": [1, 2.5, "é"]}, headers={"x-a": "b"})
    assert response.body == b'{"a":[1,2.5,"\xc3\xa9"]}'
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(response.body))
