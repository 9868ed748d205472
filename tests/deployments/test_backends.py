"""The backend interface on the replay and openai backends (no model, no Ray)."""

from __future__ import annotations

import asyncio
import pickle
from typing import Any

import pytest

from controlplane.completions import UnsupportedField, UpstreamStatus
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
from tests.compat.fake_upstream import FakeUpstream

BODY = {"messages": [{"role": "user", "content": "sort a list in python"}]}


async def _chunks(stream: Any) -> list[Chunk]:
    return [c async for c in stream]


async def _error_of(awaitable: Any) -> BaseException | None:
    try:
        await awaitable
    except Exception as exc:
        return exc
    return None


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


@pytest.fixture
def upstream():
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


def _upstream_arm(url: str, **kw: Any) -> Any:
    return parse_config(
        {"arms": [{"name": "m:sql", "model": "m", "adapter": "sql", "backend": "openai",
                   "base_url": url, "usd_per_1k_prompt_tokens": 1.0,
                   "usd_per_1k_completion_tokens": 2.0, "joules_per_token": 0.5, **kw}]}
    ).arms[0]  # fmt: skip


def test_openai_streams_from_the_upstream_and_prices_its_usage(upstream):
    backend = OpenAIUpstream(_upstream_arm(upstream.base_url))
    with pytest.raises(AdapterNotLoaded):
        asyncio.run(collect(backend.generate(BODY, "sql")))
    assert backend.load_adapter("sql") == 0.0 and backend.resident() == ("sql",)
    chunks = asyncio.run(_chunks(backend.generate({**BODY, "max_tokens": 2}, "sql")))
    assert [c.text for c in chunks] == ["sql", " heard:", "", ""]
    assert chunks[1].finish_reason is None and chunks[2].finish_reason == "length"
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (6, 2)
    assert usage.cost_usd == pytest.approx((6 * 1.0 + 2 * 2.0) / 1000)
    assert usage.energy_j == pytest.approx(4.0) and usage.finish_reason == "length"
    [seen] = upstream.requests
    assert seen["stream"] is True and seen["model"] == "sql" and seen["max_tokens"] == 2
    assert seen["stream_options"] == {"include_usage": True}
    assert upstream.headers[0]["authorization"] == "Bearer none"  # never OPENAI_API_KEY


def test_openai_collects_tool_calls_and_choices(upstream, monkeypatch):
    monkeypatch.setenv("UPSTREAM_KEY", "sk-test")
    backend = OpenAIUpstream(_upstream_arm(upstream.base_url, api_key_env="UPSTREAM_KEY"))
    backend.load_adapter("sql")
    tool = {"type": "function", "function": {"name": "lookup"}}
    gen = asyncio.run(collect(backend.generate({**BODY, "tools": [tool], "n": 2}, "sql")))
    assert gen.finish_reason == "tool_calls" and gen.text == ""
    assert [c["index"] for c in gen.choices] == [0, 1]
    [call] = gen.choices[1]["message"]["tool_calls"]
    assert call["function"] == {"name": "lookup", "arguments": '{"query": "sort a list in python"}'}
    assert call["id"] == "call_1" and gen.choices[1]["message"]["content"] is None
    assert upstream.headers[0]["authorization"] == "Bearer sk-test"


def test_openai_maps_upstream_errors_to_statuses(upstream):
    backend = OpenAIUpstream(_upstream_arm(upstream.base_url, adapter=None, max_retries=0))

    async def both() -> tuple[BaseException | None, BaseException | None]:
        upstream.reject = {"message": "no tools here", "param": "tools"}
        rejected = await _error_of(collect(backend.generate(BODY)))
        upstream.reject, upstream.fail_times = None, 1
        return rejected, await _error_of(collect(backend.generate(BODY)))

    rejected, failed = asyncio.run(both())
    assert isinstance(rejected, UpstreamStatus) and isinstance(failed, UpstreamStatus)
    assert (rejected.status, rejected.param) == (400, "tools") and rejected.client_error
    assert failed.status == 500 and not failed.client_error
    assert not UpstreamStatus(401, "bad key").client_error  # the arm's key: not the client's
    # picklable (it crosses Ray from the pool to the gateway) with its fields
    again = pickle.loads(pickle.dumps(rejected))
    assert (again.status, again.param, again.message) == (400, "tools", rejected.message)


def test_replay_honours_n_stop_and_max_tokens_and_refuses_tools():
    backend = _replay(latency_scale=0.0)
    body = {**BODY, "metadata": {"replay_row": 3}}
    full = asyncio.run(collect(backend.generate(body)))
    two = asyncio.run(collect(backend.generate({**body, "n": 2, "max_tokens": 3})))
    assert [c["finish_reason"] for c in two.choices] == ["length", "length"]
    assert two.choices[1]["message"]["content"] == full.text[:12] and two.completion_tokens == 6
    assert two.cost_usd == pytest.approx(2 * full.cost_usd)
    word = full.text.split()[2]
    cut = asyncio.run(collect(backend.generate({**body, "stop": [word]})))
    assert cut.text == full.text[: full.text.index(word)] and cut.finish_reason == "stop"
    with pytest.raises(UnsupportedField) as refused:
        asyncio.run(collect(backend.generate({**body, "tools": [{"type": "function"}]})))
    assert refused.value.param == "tools" and refused.value.status == 400
    assert pickle.loads(pickle.dumps(refused.value)).field == "tools"


def test_build_backends_by_kind(tmp_path):
    config = parse_config(
        {"arms": [{"name": "a", "model": "small"}, {"name": "b", "model": "small", "adapter": "x"}],
         "replay": {"synthetic_rows": 20}}
    )  # fmt: skip
    backends = build_backends(config.arms, BuildContext(config, 4, tmp_path))
    assert set(backends) == {"a", "b"} and isinstance(backends["b"], ReplayBackend)


def test_completion_budget():
    assert completion_budget({}, 64) == 64 and completion_budget({}) is None
    assert completion_budget({"max_tokens": 10}, 64) == 10
    assert completion_budget({"max_completion_tokens": 500, "max_tokens": 5}, 64) == 64
