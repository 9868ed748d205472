"""The body check's fast pass against the walk that names a fault's place."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.api.validation import _NotANumber, _sound, _walk, check_tree
from controlplane.gateway_core import BadRequest

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
