"""The backend interface on the replay and openai backends (no model, no Ray)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from controlplane.config import parse_config
from deployments.backends import (
    AdapterNotLoaded,
    BuildContext,
    Chunk,
    build_backends,
    collect,
    completion_budget,
)
from deployments.backends.openai_upstream import OpenAIUpstream
from deployments.backends.replay import ReplayBackend, pieces
from learners.replay.synthetic import synthetic_dataset

BODY = {"messages": [{"role": "user", "content": "sort a list in python"}]}


async def _chunks(stream: Any) -> list[Chunk]:
    return [c async for c in stream]


def _replay(**kw: Any) -> ReplayBackend:
    ds = synthetic_dataset(n=50, seed=0)
    return ReplayBackend(ds, ds.models[0], **kw)


def test_pieces_cut_at_words_and_join_back():
    text = "  The answer is\n42, of course.  "
    assert "".join(pieces(text, 3)) == text and len(pieces(text, 3)) == 3
    assert pieces("", 4) == [""] and pieces("one", 4) == ["one"]


def test_replay_streams_pieces_then_usage_and_spends_its_latency():
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    backend = _replay(latency_scale=0.5, sleep=sleep)
    body = {**BODY, "metadata": {"replay_row": 3}}
    chunks = asyncio.run(_chunks(backend.generate(body)))
    texts, last = [c.text for c in chunks[:-1]], chunks[-1]
    assert len(texts) >= 2 and all(texts) and all(c.usage is None for c in chunks[:-1])
    assert last.usage is not None and last.text == ""
    assert last.usage.finish_reason == "stop" and last.usage.ttft_ms is not None
    recorded = float(backend.ds.latency_ms[3, backend.k])
    assert sum(slept) == pytest.approx(recorded * 0.5 / 1000.0)
    gen = asyncio.run(collect(backend.generate(body)))
    assert gen.text == "".join(texts) and gen.cost_usd == last.usage.cost_usd
    assert set(gen.as_dict()) >= {"text", "prompt_tokens", "completion_tokens", "latency_ms",
                                  "ttft_ms", "energy_j", "cost_usd", "model", "finish_reason"}  # fmt: skip


def test_replay_adapters_load_for_real_and_are_required():
    backend = _replay(latency_scale=0.0, adapter_rank=2)
    with pytest.raises(AdapterNotLoaded):
        asyncio.run(collect(backend.generate(BODY, "a")))
    assert backend.load_adapter("a") >= 0.0 and backend.load_adapter("a") == 0.0  # held: no-op
    backend.load_adapter("b")
    assert backend.resident() == ("a", "b")
    assert backend.adapter_bytes("a") == 2 * 2 * 4096 * 32 * 4 * 2  # rank 2, fp16, 7B shape
    assert asyncio.run(collect(backend.generate(BODY, "a"))).text
    backend.unload_adapter("a")
    backend.unload_adapter("never-loaded")
    assert backend.resident() == ("b",)


def _sse(events: list[dict[str, Any]]) -> bytes:
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events).encode() + b"data: [DONE]\n\n"


def test_openai_streams_from_the_upstream_and_prices_its_usage():
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        events = [
            {"choices": [{"delta": {"role": "assistant"}}]},
            {"choices": [{"delta": {"content": "Hel"}}]},
            {"choices": [{"delta": {"content": "lo"}, "finish_reason": "length"}]},
            {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 2}},
        ]
        return httpx.Response(200, content=_sse(events), headers={"content-type": "text/event-stream"})  # fmt: skip

    arm = parse_config(
        {"arms": [{"name": "m:sql", "model": "m", "adapter": "sql", "backend": "openai",
                   "base_url": "http://upstream/v1", "usd_per_1k_prompt_tokens": 1.0,
                   "usd_per_1k_completion_tokens": 2.0, "joules_per_token": 0.5}]}
    ).arms[0]  # fmt: skip
    client = httpx.AsyncClient(
        base_url="http://upstream/v1", transport=httpx.MockTransport(handler)
    )
    backend = OpenAIUpstream(arm, client=client)
    with pytest.raises(AdapterNotLoaded):
        asyncio.run(collect(backend.generate(BODY, "sql")))
    assert backend.load_adapter("sql") == 0.0 and backend.resident() == ("sql",)
    chunks = asyncio.run(_chunks(backend.generate({**BODY, "max_tokens": 2}, "sql")))
    assert [c.text for c in chunks] == ["Hel", "lo", ""]
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (10, 2)
    assert usage.cost_usd == pytest.approx((10 * 1.0 + 2 * 2.0) / 1000)
    assert usage.energy_j == pytest.approx(6.0) and usage.finish_reason == "length"
    assert seen[0]["stream"] is True and seen[0]["model"] == "sql" and seen[0]["max_tokens"] == 2
    assert seen[0]["stream_options"] == {"include_usage": True}


def test_build_backends_by_kind_and_refuses_an_unbuilt_one(tmp_path):
    config = parse_config(
        {"arms": [{"name": "a", "model": "small"}, {"name": "b", "model": "small", "adapter": "x"}],
         "replay": {"synthetic_rows": 20}}
    )  # fmt: skip
    backends = build_backends(config.arms, BuildContext(config, 4, tmp_path))
    assert set(backends) == {"a", "b"} and isinstance(backends["b"], ReplayBackend)
    vllm = parse_config({"arms": [{"name": "v", "model": "m", "backend": "vllm"}]})
    with pytest.raises(ValueError, match="not built yet"):
        build_backends(vllm.arms, BuildContext(vllm, 4, tmp_path))


def test_completion_budget():
    assert completion_budget({}, 64) == 64 and completion_budget({}) is None
    assert completion_budget({"max_tokens": 10}, 64) == 10
    assert completion_budget({"max_completion_tokens": 500, "max_tokens": 5}, 64) == 64
