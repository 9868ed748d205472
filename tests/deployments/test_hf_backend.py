"""The hf backend on a tiny random Llama (built in memory) with real peft adapters."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from controlplane.completions import UnsupportedField
from controlplane.config import parse_config
from deployments.backends import AdapterNotLoaded, BuildContext, Chunk, build_backends, collect
from deployments.backends.hf import HFBackend
from deployments.pool import PoolCore
from tests.deployments.tiny_lm import make_adapter, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("torch_one_thread")
BODY = {"messages": [{"role": "user", "content": "hello there"}]}
RANKS = {"a0": 4, "a1": 8}


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("adapters")
    base = tiny_model()
    for i, (name, rank) in enumerate(RANKS.items()):
        make_adapter(base, d / name, rank, seed=100 + i)
    return d


def _backend(adapter_dir: Path, **kw: Any) -> HFBackend:
    return HFBackend(tiny_model(eos=False), tiny_tokenizer(), name="tiny", adapter_dir=adapter_dir, **kw)  # fmt: skip


async def _chunks(stream: Any) -> list[Chunk]:
    return [c async for c in stream]


def _text(backend: HFBackend, adapter: str | None = None, **body: Any) -> str:
    return asyncio.run(collect(backend.generate({**BODY, "max_tokens": 12, **body}, adapter))).text


def test_streams_text_as_it_is_generated_then_usage(adapter_dir):
    backend = _backend(adapter_dir)
    chunks = asyncio.run(_chunks(backend.generate({**BODY, "max_tokens": 8})))
    *texts, finish, last = chunks
    assert len(texts) >= 3 and all(c.text and c.usage is None for c in texts)
    assert finish.finish_reason == "length" and not finish.text and finish.usage is None
    u = last.usage
    assert u is not None and last.text == ""
    assert (u.completion_tokens, u.finish_reason, u.model) == (8, "length", "tiny")
    assert u.prompt_tokens == len(backend.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello there"}], add_generation_prompt=True, tokenize=True
    )["input_ids"])  # fmt: skip
    assert 0 < u.ttft_ms <= u.latency_ms


def test_max_tokens_is_honoured_and_capped(adapter_dir):
    backend = _backend(adapter_dir, max_new_tokens=6)

    def tokens(**body: Any) -> int:
        return asyncio.run(collect(backend.generate({**BODY, **body}))).completion_tokens

    assert tokens(max_tokens=3) == 3
    assert tokens(max_completion_tokens=2, max_tokens=5) == 2
    assert tokens(max_tokens=100) == 6 and tokens() == 6  # the arm's cap, and its default


def test_n_choices_one_after_the_other_and_refused_fields(adapter_dir):
    backend = _backend(adapter_dir)
    one = asyncio.run(collect(backend.generate({**BODY, "max_tokens": 4})))
    two = asyncio.run(collect(backend.generate({**BODY, "max_tokens": 4, "n": 2})))
    assert [c["message"]["content"] for c in two.choices] == [one.text, one.text]  # greedy
    assert [c["finish_reason"] for c in two.choices] == ["length", "length"]
    assert two.completion_tokens == 8 and two.prompt_tokens == one.prompt_tokens
    for body, param in [({"tools": [{"type": "function"}]}, "tools"),
                        ({"response_format": {"type": "json_object"}}, "response_format"),
                        ({"logprobs": True}, "logprobs")]:  # fmt: skip
        with pytest.raises(UnsupportedField) as refused:
            asyncio.run(collect(backend.generate({**BODY, **body})))
        assert refused.value.param == param


def test_stop_sequence_cuts_the_answer(adapter_dir):
    backend = _backend(adapter_dir)
    full = _text(backend)
    stop = full[4:6]
    cut = asyncio.run(collect(backend.generate({**BODY, "max_tokens": 12, "stop": [stop]})))
    assert cut.text == full[: full.index(stop)] and cut.finish_reason == "stop"


def test_adapters_load_unload_and_report_their_memory(adapter_dir):
    backend = _backend(adapter_dir)
    base = _text(backend)
    with pytest.raises(AdapterNotLoaded):
        _text(backend, "a0")
    seconds = {name: backend.load_adapter(name) for name in RANKS}
    assert all(s > 0 for s in seconds.values()) and backend.load_adapter("a0") == 0.0
    assert backend.resident() == ("a0", "a1")
    # LoRA on q (32->32), v (32->16), o (32->32) in 2 layers: r * (64 + 48 + 64) * 2 floats
    for name, rank in RANKS.items():
        assert backend.adapter_bytes(name) == rank * 176 * 2 * 4
    a0, a1 = _text(backend, "a0"), _text(backend, "a1")
    assert len({base, a0, a1}) == 3  # each adapter changes the answer
    assert _text(backend) == base  # base requests run with the adapters disabled
    backend.unload_adapter("a0")
    assert backend.resident() == ("a1",) and _text(backend, "a1") == a1
    backend.unload_adapter("a1")
    assert backend.resident() == ()
    assert not any("lora" in n for n, _ in backend.model.named_modules())  # plain model again
    assert _text(backend) == base
    with pytest.raises(FileNotFoundError):
        backend.load_adapter("missing")
    with pytest.raises(ValueError):
        backend.load_adapter("../a0")


def test_closing_the_stream_stops_the_generation(adapter_dir):
    backend = _backend(adapter_dir, max_new_tokens=400)
    # >= 5 ms a token, so 400 tokens take seconds: far longer than the two chunks we read
    backend.model.register_forward_pre_hook(lambda *_: time.sleep(0.005))

    async def run() -> None:
        stream = backend.generate({**BODY, "max_tokens": 400})
        await anext(stream)
        await anext(stream)
        await stream.aclose()  # the client went away

    asyncio.run(run())
    assert backend.last_run.stopped_early
    assert backend.last_run.generated_tokens < 400


def test_concurrent_requests_take_turns_on_the_model(adapter_dir):
    backend = _backend(adapter_dir)
    for name in RANKS:
        backend.load_adapter(name)
    alone = {a: _text(backend, a) for a in (None, "a0", "a1")}

    async def together() -> list[str]:
        gens = [collect(backend.generate({**BODY, "max_tokens": 12}, a)) for a in alone] * 2
        return [g.text for g in await asyncio.gather(*gens)]

    assert asyncio.run(together()) == list(alone.values()) * 2


def test_pool_pages_adapters_in_and_out_of_the_model(adapter_dir, tmp_path):
    tiny_model(eos=False).save_pretrained(tmp_path / "tiny")
    tiny_tokenizer().save_pretrained(tmp_path / "tiny")
    hf = {"model": "tiny", "backend": "hf", "model_path": str(tmp_path / "tiny"),
          "adapter_dir": str(adapter_dir), "max_new_tokens": 4}  # fmt: skip
    config = parse_config(
        {
            "arms": [
                {"name": "tiny", **hf, "joules_per_token": 1.0},
                {"name": "tiny:a0", "adapter": "a0", **hf, "usd_per_1k_completion_tokens": 1.0},
                {"name": "tiny:a1", "adapter": "a1", **hf},
            ],
            "cache": {"policy": "polar", "slots_per_replica": 1},
        }
    )
    backends = build_backends(config.arms, BuildContext(config, 8, tmp_path))
    assert len({id(b) for b in backends.values()}) == 1  # one model for the pool's arms
    core = PoolCore(config, "tiny", backends)
    model: Any = backends["tiny"]

    async def run() -> list[dict[str, Any]]:
        await core.slots.prefetch("a0")
        return [await core.generate(arm, BODY) for arm in ("tiny:a0", "tiny:a1", "tiny")]

    a0, a1, base = asyncio.run(run())
    assert len({a0["text"], a1["text"], base["text"]}) == 3
    assert model.resident() == ("a0",)  # a1 was a one-off page-in, dropped after its request
    assert a0["cost_usd"] == pytest.approx(4 / 1000) and a1["cost_usd"] == 0.0  # arm prices
    assert base["energy_j"] == base["prompt_tokens"] + 4
    stats = core.residency_stats()
    assert stats["page_ins"] == 2 and stats["load_s"] > 0
    assert stats["load_s"] == pytest.approx(sum(stats["adapter_load_ms"].values()) / 1000, rel=1e-3)
    assert stats["adapter_mib"] == {"a0": pytest.approx(4 * 176 * 2 * 4 / 2**20, abs=1e-3)}
