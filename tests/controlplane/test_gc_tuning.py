"""``tune_gc`` in a process of its own (it changes the whole process's collector)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = """
import gc, json, sys
from controlplane.gc_tuning import tune_gc
before = list(gc.get_threshold())
keep = [[i] for i in range(1000)]  # objects alive at the freeze
state = tune_gc(*json.loads(sys.argv[1]))
print(json.dumps({"before": before, "state": state, "now": list(gc.get_threshold()),
                  "frozen": gc.get_freeze_count()}))
"""


def _run(threshold: int | None, freeze: bool) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps([threshold, freeze])],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return json.loads(out.stdout)


@pytest.mark.parametrize(("threshold", "freeze"), [(20_000, True), (5_000, False), (None, True),
                                                   (None, False)])  # fmt: skip
def test_tune_gc_sets_the_young_threshold_and_freezes(threshold, freeze) -> None:
    r = _run(threshold, freeze)
    young = r["before"][0] if threshold is None else threshold
    assert r["now"] == [young, *r["before"][1:]] == r["state"]["threshold"]
    if freeze:
        assert r["frozen"] == r["state"]["frozen"] > 1000  # the list above at least
    else:
        assert r["frozen"] == r["state"]["frozen"] == 0
    assert len(r["state"]["collections"]) == 3
