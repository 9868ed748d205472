"""``banditctl adapters make``: LoRA adapters for the hf backend, trained in seconds."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("adapters", help="make LoRA adapters for the hf backend")
    sub = p.add_subparsers(dest="adapters_command", metavar="ACTION")
    sub.required = True
    make = sub.add_parser(
        "make",
        help="train N small LoRA adapters that answer in distinct styles",
        description="Train N LoRA adapters (peft) for a base model, a few steps each on "
        "made-up chats, so that each opens its answers with its own keyword; save them "
        "as peft folders named <keyword>-r<rank> under --out.",
    )
    make.add_argument(
        "--base",
        default=None,
        help="a GGUF file or Hugging Face model folder (default: the bundled SmolLM2-135M-Instruct)",
    )
    make.add_argument("--n", type=int, default=4, help="how many adapters (default 4)")
    make.add_argument("--ranks", default="4,8,16", help="LoRA ranks, cycled (default 4,8,16)")
    make.add_argument("--steps", type=int, default=8, help="training steps per adapter (default 8)")
    make.add_argument(
        "--out", default=None, help="folder for the adapters (default: <data dir>/adapters)"
    )
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    make.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's; 1 is faster on a busy machine)",
    )
    make.set_defaults(func=run_make)


def run_make(args: argparse.Namespace) -> int:
    from controlplane.settings import get_settings
    from deployments.backends.hf_models import require_hf

    try:
        require_hf()
        ranks = [int(r) for r in args.ranks.split(",") if r.strip()]
    except ModuleNotFoundError as exc:
        print(f"adapters make: {exc}", file=sys.stderr)
        return 2
    except ValueError:
        print(f"adapters make: --ranks must be integers, got {args.ranks!r}", file=sys.stderr)
        return 2
    from deployments.backends.hf_adapters import make_adapters
    from deployments.backends.hf_models import load_causal_lm, resolve_model

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    data_dir = get_settings().data_dir
    out = Path(args.out).expanduser() if args.out else data_dir / "adapters"
    try:
        files = resolve_model(args.base, data_dir / "models")
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        print(f"adapters make: {exc}", file=sys.stderr)
        return 2
    if files.converted_s is not None:
        print(f"converted {files.source.name} to safetensors in {files.converted_s:.1f} s")
    model, tokenizer = load_causal_lm(files.folder, args.device)
    made = make_adapters(
        model,
        tokenizer,
        out,
        n=args.n,
        ranks=ranks,
        steps=args.steps,
        seed=args.seed,
        base=str(files.source),
    )
    print(f"{len(made)} adapters in {out}; arms for the config file:")
    model_name = files.source.stem.split(".")[0]
    base_path = "" if args.base is None else f", model_path: {files.source}"
    adapter_dir = "" if args.out is None else f", adapter_dir: {out}"
    print(f"  - {{name: {model_name}, model: {model_name}, backend: hf{base_path}}}")
    for a in made:
        print(
            f"  - {{name: {model_name}:{a.name}, model: {model_name}, adapter: {a.name}, "
            f"backend: hf{base_path}{adapter_dir}}}"
        )
    return 0
