"""The pool replica's adapter registry: capacity, hits, one-off loads, plan operations."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cache_manager.executor import CapacityError
from deployments.adapters import AdapterRegistry


def _registry(k: int) -> tuple[AdapterRegistry, list[str]]:
    loads: list[str] = []

    def load(a: str) -> tuple[str, float]:
        loads.append(a)
        return f"w-{a}", 0.01

    return AdapterRegistry(k, load), loads


def test_requests_fill_free_slots_then_load_one_off():
    reg, loads = _registry(2)
    assert [reg.acquire(a) for a in "aab"] == [False, True, False]
    assert reg.resident() == ("a", "b")
    assert reg.acquire("c") is False  # full: served by a one-off load, not kept
    assert reg.resident() == ("a", "b") and loads == ["a", "b", "c"]
    assert (reg.stats.hits, reg.stats.misses, reg.stats.page_ins) == (1, 3, 3)


def test_plan_operations():
    reg, loads = _registry(2)
    assert reg.prefetch("x") == pytest.approx(0.01)
    assert reg.prefetch("x") == 0.0  # already there: no load
    reg.prefetch("y")
    with pytest.raises(CapacityError):
        reg.prefetch("z")
    reg.evict("x")
    reg.evict("never-loaded")
    reg.prefetch("z")
    assert set(reg.resident()) == {"y", "z"} and loads == ["x", "y", "z"]


@given(
    st.integers(0, 4),
    st.lists(
        st.tuples(st.sampled_from(["acq", "pre", "evict"]), st.sampled_from("abcdef")), max_size=60
    ),
)
def test_residency_never_exceeds_capacity(k, ops):
    reg, _ = _registry(k)
    for op, a in ops:
        if op == "acq":
            reg.acquire(a)
        elif op == "pre":
            try:
                reg.prefetch(a)
            except CapacityError:
                assert len(reg.resident()) == k
        else:
            reg.evict(a)
        assert len(reg.resident()) <= k
        assert len(set(reg.resident())) == len(reg.resident())
