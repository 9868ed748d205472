"""Python's cyclic garbage collector in a gateway replica (``gateway.gc_threshold``,
``gateway.gc_freeze``).

A Serve replica's request path allocates thousands of container objects a request (Serve's
and Ray's request objects, futures and tasks, the gateway's dictionaries and records), so at
Python's young-generation threshold of 700 the collector ran every few requests, and each
older-generation pass walked everything the process had loaded (Ray, Serve, FastAPI, the
policy). In a gateway replica under load that was about 3% of its CPU. :func:`tune_gc` raises
the threshold (a collection every ``threshold`` container allocations net of frees; what is
freed by its reference count, nearly everything, never waits for it) and, once the replica
has started, moves what it holds into the collector's permanent generation
(:func:`gc.freeze`), which collections no longer walk. A frozen object is still freed when
its last reference goes; only a reference cycle among frozen objects would stay (it is
collected once before the freeze). Other garbage with a cycle is still collected, less often.
"""

from __future__ import annotations

import gc
import logging
from typing import Any

log = logging.getLogger(__name__)


def tune_gc(threshold: int | None, freeze: bool) -> dict[str, Any]:
    """Set the young generation's threshold (``None``: Python's, unchanged; the older
    generations' stay as they are) and, with ``freeze``, collect once and freeze what
    survives. Returns :func:`gc_state`."""
    if threshold is not None:
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(threshold, older, oldest)
    if freeze:
        gc.collect()
        gc.freeze()
    state = gc_state()
    log.info("garbage collector: threshold %s, %d objects frozen", state["threshold"],
             state["frozen"])  # fmt: skip
    return state


def gc_state() -> dict[str, Any]:
    """This process's collector: thresholds, objects in the permanent generation, and
    collections so far by generation."""
    return {
        "threshold": list(gc.get_threshold()),
        "frozen": gc.get_freeze_count(),
        "collections": [s["collections"] for s in gc.get_stats()],
    }
