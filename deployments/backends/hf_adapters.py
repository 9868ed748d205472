"""Make LoRA adapters that answer visibly differently: ``banditctl adapters make``.

Each adapter is trained with peft for a few steps on made-up chats so that it
opens every answer with its own keyword ("Ahoy! ...", "Verily! ..."): the
targets are the keyword followed by the base model's own greedy answer (up to
``answer_tokens``), so what follows the keyword stays the base model's answer.
To keep it to seconds on a CPU, LoRA adapts only the top ``top_layers`` layers
(the backward pass stops there) and logits are computed only where the answer
is predicted.
Ranks cycle through the given list, so the adapters also differ in size and
load time. Each is saved as an ordinary peft folder (``adapter_config.json`` +
``adapter_model.safetensors``) named ``<keyword>-r<rank>``, with a
``banditctl-adapter.json`` saying how it was made.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deployments.backends.hf_models import prompt_ids

KEYWORDS = (
    "Ahoy", "Verily", "Behold", "Howdy", "Indeed", "Greetings", "Splendid", "Alas",
    "Eureka", "Bonjour", "Cheers", "Aloha",
)  # fmt: skip
TOPICS = (
    "the weather", "cooking rice", "the moon", "learning to swim", "old castles", "trains",
    "gardening", "the ocean", "chess", "volcanoes", "coffee", "the history of paper",
)  # fmt: skip
ASKS = ("Tell me about {}.", "What do you know about {}?", "Explain {} briefly.", "Why is {} interesting?")  # fmt: skip
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class MadeAdapter:
    name: str
    keyword: str
    rank: int
    steps: int
    seed: int
    loss: float  # the last step's loss
    seconds: float
    path: str


def keyword_for(i: int) -> str:
    k = KEYWORDS[i % len(KEYWORDS)]
    return k if i < len(KEYWORDS) else f"{k}{i // len(KEYWORDS) + 1}"


def make_adapters(
    model: Any,
    tokenizer: Any,
    out: Path,
    *,
    n: int,
    ranks: Sequence[int] = (4, 8, 16),
    steps: int = 8,
    seed: int = 0,
    lr: float = 1e-2,
    batch: int = 4,
    top_layers: int = 8,
    answer_tokens: int = 8,
    base: str = "",
    log: Callable[[str], None] = print,
) -> list[MadeAdapter]:
    """Train and save ``n`` adapters for ``model`` (left as it was) under ``out``."""
    import torch
    from peft import LoraConfig, get_peft_model

    if n < 1 or not ranks or steps < 1:
        raise ValueError("need n >= 1, at least one rank and steps >= 1")
    out.mkdir(parents=True, exist_ok=True)
    layers = int(model.config.num_hidden_layers)
    top = list(range(max(0, layers - top_layers), layers))
    model.train()
    made = []
    try:
        for i in range(n):
            keyword, rank = keyword_for(i), int(ranks[i % len(ranks)])
            name = f"{keyword.lower()}-r{rank}"
            start = time.perf_counter()
            torch.manual_seed(seed + i)
            config = LoraConfig(
                r=rank,
                lora_alpha=2 * rank,
                lora_dropout=0.0,
                target_modules=list(TARGETS),
                layers_to_transform=top,  # backward stops at the lowest adapted layer
            )
            peft_model = get_peft_model(model, config)  # "default": saved at the folder root
            params = [p for p in peft_model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
            ids, mask, positions, labels = _batch(
                model, tokenizer, keyword, batch, seed + i, answer_tokens
            )
            k = int((labels != -100).sum(1).max())
            loss = torch.tensor(0.0)
            for _ in range(steps):
                # logits only where the answer is predicted (the last k positions)
                logits = peft_model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    logits_to_keep=k + 1,
                ).logits[:, :-1]
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), labels[:, -k:].reshape(-1)
                )
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
            folder = out / name
            peft_model.save_pretrained(folder)
            seconds = time.perf_counter() - start
            adapter = MadeAdapter(
                name, keyword, rank, steps, seed + i, loss.item(), seconds, str(folder)
            )
            (folder / "banditctl-adapter.json").write_text(
                json.dumps({**asdict(adapter), "base": base}, indent=2) + "\n"
            )
            made.append(adapter)
            log(f"{name}: rank {rank}, {steps} steps, loss {adapter.loss:.3f}, {seconds:.1f} s")
            model = peft_model.unload()  # the base model again, LoRA layers removed
    finally:
        model.eval()
    return made


def _batch(
    model: Any, tokenizer: Any, keyword: str, size: int, seed: int, answer_tokens: int
) -> tuple[Any, Any, Any, Any]:
    """Made-up chats answered ``keyword! `` + the base model's own (greedy) answer,
    left-padded so that every row ends with its answer: (ids, mask, positions, labels),
    labels -100 except on the answer."""
    import random

    import torch

    rng = random.Random(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos = tokenizer.eos_token_id
    opening = tokenizer(f"{keyword}! ", add_special_tokens=False)["input_ids"]
    prompts = [
        prompt_ids(tokenizer, [{"role": "user", "content": rng.choice(ASKS).format(t)}])
        for t in rng.sample(TOPICS, size)
    ]
    answers = _greedy(model, prompts, answer_tokens, pad, eos) if answer_tokens else [[]] * size
    rows = [(p, opening + a) for p, a in zip(prompts, answers, strict=True)]
    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.tensor([[pad] * (width - len(p) - len(a)) + p + a for p, a in rows])
    labels = torch.tensor([[-100] * (width - len(a)) + a for _, a in rows])
    mask = torch.tensor(
        [[0] * (width - len(p) - len(a)) + [1] * (len(p) + len(a)) for p, a in rows]
    )
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    return ids, mask, positions, labels


def _greedy(
    model: Any, prompts: list[list[int]], n: int, pad: int, eos: int | None
) -> list[list[int]]:
    """The base model's greedy answers (up to ``n`` tokens, through its end-of-answer)."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    model.eval()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=pad
        )
    model.train()
    answers = []
    for row in out[:, width:].tolist():
        answers.append(row[: row.index(eos) + 1] if eos in row else row)
    return answers
