"""A tiny randomly initialised Llama and a character-level tokenizer, built in
memory in a fraction of a second: the hf backend's unit tests run a real
``generate`` (and real peft adapters) without any model files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHARS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,!?:;'\"-_<>|/\n")
SPECIAL = ["<pad>", "<s>", "</s>"]
TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def tiny_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL + CHARS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="?"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tok.chat_template = TEMPLATE
    return tok


def tiny_model(seed: int = 0, eos: bool = True) -> Any:
    """A 2-layer Llama (~24k parameters). ``eos=False``: it can never end its answer
    early (so a test sees exactly ``max_tokens``)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(SPECIAL) + len(CHARS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2 if eos else None,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config).eval()
    if not eos:  # the end-of-answer logit is 0, the largest other one far above it
        with torch.no_grad():
            model.lm_head.weight.mul_(100.0)
            model.lm_head.weight[2].fill_(0.0)
    return model


def make_adapter(base: Any, folder: Path, rank: int, seed: int) -> Path:
    """Save a peft LoRA adapter with random (non-zero) A and B factors for ``base``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    copy = LlamaForCausalLM(base.config)
    copy.load_state_dict(base.state_dict())
    torch.manual_seed(seed)
    peft_model = get_peft_model(
        copy,
        LoraConfig(
            r=rank,
            lora_alpha=4 * rank,
            target_modules=["q_proj", "v_proj", "o_proj"],
            init_lora_weights=False,
        ),
    )
    peft_model.save_pretrained(folder)
    return folder
