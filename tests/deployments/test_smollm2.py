"""The real SmolLM2-135M-Instruct (the bundled GGUF, converted once and cached) with
adapters made by ``banditctl adapters make``: a few short greedy answers.

The converted copy lives in ``$BANDITCTL_TEST_DATA_DIR`` (default: a folder in the
system's temporary directory), so only a machine's first run pays the GGUF load.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from deployments.backends import collect

pytestmark = pytest.mark.usefixtures("torch_one_thread")
QUESTION = {"messages": [{"role": "user", "content": "What is the capital of France?"}]}


@pytest.fixture(scope="module")
def smol(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, model_data_dir: Path
) -> Iterator[Any]:
    request.getfixturevalue("torch_one_thread")  # one torch thread: 2 shared cores
    from controlplane.cli import main
    from deployments.backends.hf import HFBackend
    from deployments.backends.hf_models import load_causal_lm, resolve_model

    out = tmp_path_factory.mktemp("smol-adapters")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BANDITCTL_DATA_DIR", str(model_data_dir))
        start = time.perf_counter()
        files = resolve_model(None, model_data_dir / "models")
        print(f"\nSmolLM2 GGUF: converted in {files.converted_s} s (None: cached copy)")
        argv = ["adapters", "make", "--n", "2", "--steps", "8", "--out", str(out)]
        assert main(argv) == 0
        print(f"adapters made in {time.perf_counter() - start:.1f} s (with the model's load)")
    model, tokenizer = load_causal_lm(files.folder, "cpu")
    backend = HFBackend(model, tokenizer, name="smollm2", adapter_dir=out, max_new_tokens=8)
    made = sorted(p.name for p in out.iterdir())
    yield SimpleNamespace(backend=backend, adapters=made, out=out)


def _answer(backend: Any, adapter: str | None) -> str:
    return asyncio.run(collect(backend.generate(QUESTION, adapter))).text


def test_adapters_make_writes_peft_folders(smol):
    assert smol.adapters == ["ahoy-r4", "verily-r8"]  # keywords in order, ranks cycled
    for name in smol.adapters:
        folder = smol.out / name
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and config["r"] == int(name.split("-r")[1])
        assert (folder / "adapter_model.safetensors").stat().st_size > 0


def test_base_and_adapters_answer_differently(smol):
    backend = smol.backend
    base = _answer(backend, None)
    assert "Paris" in base
    for name in smol.adapters:
        backend.load_adapter(name)
    answers = {name: _answer(backend, name) for name in smol.adapters}
    print(f"\nbase: {base!r}\n" + "\n".join(f"{n}: {a!r}" for n, a in answers.items()))
    for name, answer in answers.items():  # each opens with its keyword, then answers
        keyword = json.loads((smol.out / name / "banditctl-adapter.json").read_text())["keyword"]
        assert answer.startswith(keyword) and answer != base
