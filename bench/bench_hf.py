"""Measure the hf backend on SmolLM2-135M-Instruct: loads, memory, speed, adapter paging.

    .venv/bin/python bench/bench_hf.py --threads 1 --tokens 32 --repeats 5

Prints the GGUF load and conversion (into a fresh temporary data directory, so it
is really measured; ``--cached`` skips it), the load of the cached safetensors copy,
the resident memory the model adds (RSS delta, right after the load and after the
answers: the weights are memory-mapped), time to first token and decode
tokens/s of greedy answers through :class:`HFBackend` (after one warm-up answer),
and the load and unload times of LoRA adapters of each rank (made by
``banditctl adapters make`` unless ``--adapters DIR`` names existing ones).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import psutil

from controlplane.settings import get_settings
from deployments.backends import collect
from deployments.backends.hf import HFBackend
from deployments.backends.hf_models import load_causal_lm, require_hf, resolve_model

QUESTION = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=32, help="tokens per timed answer")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ranks", default="4,8,16")
    parser.add_argument("--steps", type=int, default=8, help="adapters make: steps")
    parser.add_argument("--adapters", default=None, help="a folder of existing adapters")
    parser.add_argument("--cached", action="store_true", help="skip the GGUF conversion")
    parser.add_argument("--json", default=None, help="write the measurements here")
    args = parser.parse_args()

    require_hf()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out: dict[str, object] = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    proc = psutil.Process()
    cache = get_settings().data_dir / "models"
    if not args.cached:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = resolve_model(None, Path(tmp))
            out["gguf_load_and_convert_s"] = fresh.converted_s
    files = resolve_model(None, cache)
    rss0 = proc.memory_info().rss
    start = time.perf_counter()
    model, tokenizer = load_causal_lm(files.folder)
    out["cached_load_s"] = time.perf_counter() - start
    out["rss_delta_mib"] = (proc.memory_info().rss - rss0) / 2**20
    out["parameters_m"] = sum(p.numel() for p in model.parameters()) / 1e6

    with tempfile.TemporaryDirectory() as tmp:
        adapter_dir = Path(args.adapters) if args.adapters else Path(tmp)
        if not args.adapters:
            from deployments.backends.hf_adapters import make_adapters

            ranks = [int(r) for r in args.ranks.split(",")]
            made = make_adapters(
                model, tokenizer, adapter_dir, n=len(ranks), ranks=ranks, steps=args.steps
            )
            out["adapters_make_s"] = {a.name: round(a.seconds, 2) for a in made}
        backend = HFBackend(
            model, tokenizer, name="smollm2", adapter_dir=adapter_dir, max_new_tokens=args.tokens
        )
        out.update(asyncio.run(_speed(backend, args.tokens, args.repeats)))
        # safetensors are memory-mapped: the weights count once a generation touched them
        out["rss_delta_after_generation_mib"] = (proc.memory_info().rss - rss0) / 2**20
        out["adapters"] = _paging(backend, adapter_dir, args.repeats)
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


async def _speed(backend: HFBackend, tokens: int, repeats: int) -> dict[str, float]:
    body = {"messages": QUESTION, "max_tokens": tokens}
    await collect(backend.generate(body))  # warm-up
    ttft, rate = [], []
    for _ in range(repeats):
        g = await collect(backend.generate(body))
        assert g.ttft_ms is not None
        ttft.append(g.ttft_ms)
        rate.append((g.completion_tokens - 1) / max((g.latency_ms - g.ttft_ms) / 1000.0, 1e-9))
    return {
        "ttft_ms_median": round(statistics.median(ttft), 1),
        "decode_tokens_per_s_median": round(statistics.median(rate), 2),
        "completion_tokens": tokens,
    }


def _paging(backend: HFBackend, adapter_dir: Path, repeats: int) -> dict[str, dict[str, float]]:
    found = {}
    for folder in sorted(p for p in adapter_dir.iterdir() if (p / "adapter_config.json").exists()):
        rank = json.loads((folder / "adapter_config.json").read_text())["r"]
        loads, unloads = [], []
        for _ in range(repeats + 1):  # the first round warms the page cache
            loads.append(backend.load_adapter(folder.name))
            size = backend.adapter_bytes(folder.name)
            start = time.perf_counter()
            backend.unload_adapter(folder.name)
            unloads.append(time.perf_counter() - start)
        found[folder.name] = {
            "rank": rank,
            "mib": round(size / 2**20, 3),
            "load_ms_median": round(statistics.median(loads[1:]) * 1000, 2),
            "unload_ms_median": round(statistics.median(unloads[1:]) * 1000, 2),
        }
    # with another adapter resident, the unload deletes one of two (no unwrap)
    names = list(found)
    if len(names) >= 2:
        backend.load_adapter(names[0])
        loads = [backend.load_adapter(names[1]) for _ in range(1)]
        start = time.perf_counter()
        backend.unload_adapter(names[1])
        found["second_of_two"] = {
            "load_ms": round(loads[0] * 1000, 2),
            "unload_ms": round((time.perf_counter() - start) * 1000, 2),
        }
        backend.unload_adapter(names[0])
    return found


if __name__ == "__main__":
    main()
