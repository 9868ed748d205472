"""A gateway app over a stub pool with a learner and a cache controller to ask, for the
``/metrics`` tests, and helpers to read the exposition text."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from controlplane.api import create_app
from controlplane.gateway_core import GatewayCore
from controlplane.learner_loop import LearnerLoop
from controlplane.tokens import FeedbackTokens
from tests.controlplane.learning import learning_config, write_traffic

SECRET = "unit-secret-0123456789"


async def stub_pool(arm: str, body: dict) -> dict:
    if body.get("metadata", {}).get("fail"):
        raise RuntimeError("upstream down")
    return {"text": f"[{arm}] ok", "prompt_tokens": 5, "completion_tokens": 7,
            "energy_j": 2.0, "cost_usd": 0.001, "ttft_ms": 40.0}  # fmt: skip


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def families(text: str) -> set[str]:
    """Every sample name a family may expose, with or without samples yet."""
    names = set()
    for fam in text_string_to_metric_families(text):
        names.add(fam.name)
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
        names.update(fam.name + s for s in suffixes.get(fam.type, ()))
        names.update(s.name for s in fam.samples)
    return names


def learned(engine, cfg) -> LearnerLoop:
    write_traffic(engine, cfg, 11)
    loop = LearnerLoop(engine, cfg, clock=lambda: datetime.now(UTC))
    loop.start()
    loop.run_until_idle()
    loop.stop()
    return loop


async def cache_status() -> dict:
    return {"epoch": 1, "totals": {"pool-a#0": {"page_ins": 3, "hits": 7, "misses": 2}}}


class Stack:
    """A gateway app over a stub pool, asking ``learner`` and ``cache`` for their figures."""

    def __init__(self, engine, learner, cache=cache_status, loop=None) -> None:
        self.cfg = learning_config()
        self.loop = loop
        self.core = GatewayCore(self.cfg, engine, stub_pool, FeedbackTokens(SECRET, 60))
        self.app = create_app(
            self.core, start_background=False, learner_metrics=learner, cache_status=cache
        )
        self.http = TestClient(self.app)


def learned_stack(engine) -> Stack:
    """A learned policy, and a gateway that asks that learner for its figures."""
    loop = learned(engine, learning_config())

    async def learner_metrics() -> dict:
        return loop.metrics()

    return Stack(engine, learner_metrics, loop=loop)


def chat(http, model="auto", **meta):
    body = {"model": model, "messages": [{"role": "user", "content": "Write a sort in Python"}]}
    if meta:
        body["metadata"] = meta
    return http.post("/v1/chat/completions", json=body)
