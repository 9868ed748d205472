"""The vllm backend next to the hf backend on SmolLM2-135M-Instruct: start-up, speed,
adapter paging. Runs from a venv with vLLM (README, "The vllm backend"):

    .venv-vllm/bin/python bench/bench_vllm.py --adapters DIR --tokens 32 --repeats 5

Both backends serve the same converted safetensors copy and the same peft adapters
(``banditctl adapters make``; ``--adapters`` names existing ones, else two are made),
one after the other in this process: the hf backend first (model load, greedy
answers through :class:`HFBackend`), then vLLM's engine (start-up: config, weights,
KV cache, warm-up; float32, eager). For each: time to first token and decode
tokens/s of the base model and of an adapter (after one warm-up answer each), the
adapter's load and unload (``add_lora`` / ``remove_lora`` for vLLM), and, for vLLM,
``--concurrent`` answers at once (the engine batches them; hf runs one at a time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from controlplane.settings import get_settings
from deployments.backends import collect
from deployments.backends.hf_models import resolve_model

QUESTION = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32, help="tokens per timed answer")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--concurrent", type=int, default=4)
    parser.add_argument("--adapters", default=None, help="a folder of existing adapters")
    parser.add_argument("--memory", type=float, default=0.2, help="gpu_memory_utilization")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="hf: torch threads (vLLM's CPU worker binds one core here)",
    )
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--json", default=None, help="write the measurements here")
    args = parser.parse_args()

    files = resolve_model(None, get_settings().data_dir / "models")
    with tempfile.TemporaryDirectory() as tmp:
        adapter_dir = Path(args.adapters) if args.adapters else _make(files.folder, Path(tmp))
        names = sorted(
            p.name for p in adapter_dir.iterdir() if (p / "adapter_config.json").exists()
        )
        out: dict[str, Any] = {"adapters": names, "tokens": args.tokens, "cpus": os.cpu_count()}
        if not args.skip_hf:
            out["hf"] = _hf(files.folder, adapter_dir, names[0], args)
        out["vllm"] = _vllm(files.folder, adapter_dir, names, args)
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


def _make(folder: Path, out: Path) -> Path:
    from deployments.backends.hf_adapters import make_adapters
    from deployments.backends.hf_models import load_causal_lm

    model, tokenizer = load_causal_lm(folder, "cpu")
    make_adapters(model, tokenizer, out, n=2, ranks=[4, 8], steps=8)
    return out


def _hf(folder: Path, adapter_dir: Path, adapter: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from deployments.backends.hf import HFBackend
    from deployments.backends.hf_models import load_causal_lm

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, tokenizer = load_causal_lm(folder, "cpu")
    load_s = time.perf_counter() - start
    backend = HFBackend(
        model, tokenizer, name="smollm2", adapter_dir=adapter_dir, max_new_tokens=args.tokens
    )
    out: dict[str, Any] = {"threads": args.threads, "model_load_s": round(load_s, 2)}
    out["base"] = asyncio.run(_speed(backend, None, args))
    out["adapter_load_ms"] = round(backend.load_adapter(adapter) * 1000, 1)
    out["adapter"] = asyncio.run(_speed(backend, adapter, args))
    out["adapter_unload_ms"] = _timed_ms(lambda: backend.unload_adapter(adapter))
    return out


def _vllm(
    folder: Path, adapter_dir: Path, names: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    from deployments.backends.vllm_engine import VLLMBackend, start_engine

    fields = {
        "model": str(folder),
        "enable_lora": True,
        "max_loras": 2,
        "max_cpu_loras": 2,
        "max_lora_rank": 16,
        "max_model_len": 512,
        "gpu_memory_utilization": args.memory,
        "disable_log_stats": True,
        "dtype": "float32",
        "enforce_eager": True,
    }
    start = time.perf_counter()
    engine, runner = start_engine(fields, "smollm2")
    out: dict[str, Any] = {"engine_start_s": round(time.perf_counter() - start, 1)}
    backend = VLLMBackend(
        engine,
        runner,
        name="smollm2",
        adapter_dir=adapter_dir,
        max_new_tokens=args.tokens,
        max_loras=2,
    )
    try:
        out["base"] = asyncio.run(_speed(backend, None, args))
        loads, unloads = [], []
        for _ in range(args.repeats):
            loads.append(backend.load_adapter(names[0]) * 1000)
            unloads.append(_timed_ms(lambda: backend.unload_adapter(names[0])))
        out["adapter_load_ms_median"] = round(statistics.median(loads), 1)
        out["adapter_unload_ms_median"] = round(statistics.median(unloads), 1)
        backend.load_adapter(names[0])
        out["adapter"] = asyncio.run(_speed(backend, names[0], args))
        for name in names[1:2]:
            backend.load_adapter(name)
        out["concurrent"] = asyncio.run(_concurrent(backend, args))
    finally:
        backend.close()
    return out


async def _speed(backend: Any, adapter: str | None, args: argparse.Namespace) -> dict[str, Any]:
    body = {"messages": QUESTION, "max_tokens": args.tokens}
    first = await collect(backend.generate(body, adapter))  # warm-up
    ttft, rate = [], []
    for _ in range(args.repeats):
        g = await collect(backend.generate(body, adapter))
        assert g.ttft_ms is not None
        ttft.append(g.ttft_ms)
        rate.append((g.completion_tokens - 1) / max((g.latency_ms - g.ttft_ms) / 1000.0, 1e-9))
    return {
        "first_answer_ttft_ms": round(first.ttft_ms or 0.0, 1),
        "ttft_ms_median": round(statistics.median(ttft), 1),
        "decode_tokens_per_s_median": round(statistics.median(rate), 2),
        "answer": first.text[:60],
    }


async def _concurrent(backend: Any, args: argparse.Namespace) -> dict[str, Any]:
    """``--concurrent`` answers at once, adapters and base mixed."""
    body = {"messages": QUESTION, "max_tokens": args.tokens}
    held = list(backend.resident())
    mix = [held[i % len(held)] if i % 3 else None for i in range(args.concurrent)]
    start = time.perf_counter()
    done = await asyncio.gather(*(collect(backend.generate(body, a)) for a in mix))
    wall = time.perf_counter() - start
    tokens = sum(g.completion_tokens for g in done)
    return {
        "requests": len(done),
        "adapters": mix,
        "wall_s": round(wall, 2),
        "tokens_per_s_total": round(tokens / wall, 2),
        "ttft_ms_median": round(statistics.median(g.ttft_ms or 0.0 for g in done), 1),
    }


def _timed_ms(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return round((time.perf_counter() - start) * 1000, 2)


if __name__ == "__main__":
    main()
