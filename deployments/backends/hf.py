"""The hf backend: a causal LM in the replica (transformers), LoRA adapters with peft.

One model per pool (the arms of a base model share it); CPU here, the GPU where
torch sees one. A request goes through the tokenizer's chat template and is
decoded greedily unless it sets ``temperature`` > 0; ``max_completion_tokens``
/ ``max_tokens`` (at most the arm's ``max_new_tokens``) and ``stop`` are
honoured. ``model.generate`` runs in a worker thread and hands each new token
to the stream as it is produced; when the consumer stops iterating (a client
that went away closes or cancels the stream) a stopping criterion sees the flag
and the generation ends at the next token.

Adapters are peft LoRA folders (``adapter_config.json`` +
``adapter_model.safetensors``) named by their folder under the arm's
``adapter_dir``. The first one wraps the model in a ``PeftModel``; removing the
last one unwraps it again (peft cannot run with zero adapters). Base-model
requests run with the adapters disabled.

Concurrency: which adapter is active is state of the whole model (peft's
``set_adapter``), and loads and unloads rewrite its modules, so one lock
serializes generations, loads and unloads on a model: requests to one replica
run one at a time (queued on the backend's own one-thread executor; the pool's
``max_ongoing_requests`` bounds the queue). Batching is the next step. Load
times are measured once the lock is held, so they are the page-in cost and not
the wait behind a generation.

Usage: tokens from the tokenizer (prompt) and the generated ids (completion);
energy from the arm's ``joules_per_token``; cost from its price table.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, nullcontext, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deployments.backends import (
    AdapterNotLoaded,
    Chunk,
    Pricing,
    Usage,
    adapter_file_bytes,
    choice_count,
    completion_budget,
    peft_adapter_path,
    refuse_unsupported,
    stop_sequences,
)
from deployments.backends.hf_models import prompt_ids

if TYPE_CHECKING:
    from controlplane.config import ArmConfig
    from deployments.backends import BuildContext


@dataclass
class RunStats:
    """The last finished generation, as the worker thread saw it."""

    generated_tokens: int = 0
    stopped_early: bool = False  # the stream was closed (or hit a stop sequence) before the end


class _TokenQueue:
    """A ``generate`` streamer: hands each new token's ids to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> None:
        self.loop, self.queue, self.prompt_seen = loop, queue, False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() first pushes the prompt
            self.prompt_seen = True
            return
        self.loop.call_soon_threadsafe(self.queue.put_nowait, value.reshape(-1).tolist())

    def end(self) -> None:  # the worker signals the end itself (also on errors)
        pass


class _StopFlag:
    """A ``generate`` stopping criterion: true once the consumer is gone."""

    def __init__(self, flag: threading.Event) -> None:
        self.flag = flag

    def __call__(self, input_ids: Any, _scores: Any, **_kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.flag.is_set(), dtype=torch.bool)


class HFBackend:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        adapter_dir: Path | None = None,
        max_new_tokens: int = 128,
        pricing: Mapping[str | None, Pricing] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.model = model  # the base model; self._peft wraps it while adapters are loaded
        self.tokenizer = tokenizer
        self.name = name
        self.adapter_dir = adapter_dir
        self.max_new_tokens = max_new_tokens
        self.pricing = dict(pricing or {})
        self.clock = clock
        self.last_run = RunStats()
        self._peft: Any = None
        self._adapters: dict[str, int] = {}  # loaded adapter -> bytes of its weights
        self._lock = threading.Lock()  # one generation, load or unload at a time
        # generations queue here, not in the event loop's default executor (which adapter
        # loads and other blocking calls of the replica use)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"hf-{name}")

    # -- generation ------------------------------------------------------

    async def generate(
        self, body: dict[str, Any], adapter: str | None = None
    ) -> AsyncGenerator[Chunk, None]:
        """``n`` choices are generated one after the other (each ends with its finish
        reason); the usage counts the prompt once and every choice's tokens. Tools, JSON
        output and log probabilities are refused."""
        refuse_unsupported(body, "hf")
        start = self.clock()
        if adapter and adapter not in self._adapters:
            raise AdapterNotLoaded(adapter)
        first: Usage | None = None
        completion = 0
        for index in range(choice_count(body)):
            async with aclosing(self._generate_one(body, adapter)) as chunks:
                async for chunk in chunks:
                    if chunk.usage is None:
                        yield replace(chunk, index=index)
                        continue
                    first = first or chunk.usage
                    completion += chunk.usage.completion_tokens
                    yield Chunk(index=index, finish_reason=chunk.usage.finish_reason)
        assert first is not None
        price = self.pricing.get(adapter) or self.pricing.get(None) or Pricing()
        pt = first.prompt_tokens
        yield Chunk(
            usage=replace(
                first,
                completion_tokens=completion,
                latency_ms=(self.clock() - start) * 1000.0,
                energy_j=price.energy_j(pt, completion),
                cost_usd=price.cost_usd(pt, completion),
            )
        )

    async def _generate_one(
        self, body: dict[str, Any], adapter: str | None
    ) -> AsyncGenerator[Chunk, None]:
        start = self.clock()
        ids = prompt_ids(self.tokenizer, body.get("messages") or [])
        budget = completion_budget(body, self.max_new_tokens) or self.max_new_tokens
        stops = stop_sequences(body)
        hold = max((len(s) for s in stops), default=1) - 1  # chars a stop may still complete
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        flag = threading.Event()
        worker = loop.run_in_executor(
            self._worker, self._run, ids, adapter, body, budget, _TokenQueue(loop, queue), flag
        )
        tokens: list[int] = []
        sent = 0  # chars of the decoded answer already streamed
        ttft_ms: float | None = None
        finish = "stop"
        try:
            while True:
                item = await queue.get()
                if item is None:  # the worker is done (or failed: awaited below)
                    break
                tokens.extend(item)
                if ttft_ms is None:
                    ttft_ms = (self.clock() - start) * 1000.0
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                cut = _first_stop(text, stops)
                if cut is not None:
                    if cut > sent:
                        yield Chunk(text[sent:cut])
                    sent = cut
                    flag.set()
                    break
                ready = len(text) - hold
                while ready > sent and text[ready - 1] == "\ufffd":  # half a UTF-8 character
                    ready -= 1
                if ready > sent:
                    yield Chunk(text[sent:ready])
                    sent = ready
            generated = await worker
            if not flag.is_set():
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                if len(text) > sent:
                    yield Chunk(text[sent:])
                if generated >= budget and not self._ends_with_eos(tokens):
                    finish = "length"
            pt, ct = len(ids), len(tokens)
            price = self.pricing.get(adapter) or self.pricing.get(None) or Pricing()
            yield Chunk(
                usage=Usage(
                    prompt_tokens=pt,
                    completion_tokens=ct,
                    latency_ms=(self.clock() - start) * 1000.0,
                    ttft_ms=ttft_ms,
                    energy_j=price.energy_j(pt, ct),
                    cost_usd=price.cost_usd(pt, ct),
                    finish_reason=finish,
                    model=f"{self.name}:{adapter}" if adapter else self.name,
                )
            )
        finally:
            flag.set()  # the consumer left (or we are done): stop at the next token
            if not worker.done():
                await asyncio.wait([worker])

    def _ends_with_eos(self, tokens: list[int]) -> bool:
        eos = self.tokenizer.eos_token_id
        return bool(tokens) and eos is not None and tokens[-1] == eos

    def _run(
        self,
        ids: list[int],
        adapter: str | None,
        body: dict[str, Any],
        budget: int,
        streamer: _TokenQueue,
        flag: threading.Event,
    ) -> int:
        """The worker thread: one ``generate`` under the model lock; returns the
        number of tokens it generated."""
        import torch
        from transformers import GenerationConfig, StoppingCriteriaList

        generated = 0
        try:
            with self._lock:
                if adapter and adapter not in self._adapters:  # unloaded since the request came
                    raise AdapterNotLoaded(adapter)
                model = self._peft if self._peft is not None else self.model
                if adapter:
                    self._peft.set_adapter(adapter)
                scope = (
                    self._peft.disable_adapter() if (self._peft and not adapter) else nullcontext()
                )
                device = next(self.model.parameters()).device
                input_ids = torch.tensor([ids], dtype=torch.long, device=device)
                temperature = float(body.get("temperature") or 0.0)
                sample = temperature > 0
                if sample and body.get("seed") is not None:
                    torch.manual_seed(int(body["seed"]))
                eos = self.tokenizer.eos_token_id
                config = GenerationConfig(
                    max_new_tokens=budget,
                    do_sample=sample,
                    temperature=temperature if sample else None,
                    top_p=float(body["top_p"]) if sample and body.get("top_p") else None,
                    top_k=None,
                    eos_token_id=eos,
                    pad_token_id=self.tokenizer.pad_token_id
                    if self.tokenizer.pad_token_id is not None
                    else eos,
                )
                with scope, torch.inference_mode():
                    out = model.generate(
                        input_ids=input_ids,
                        attention_mask=torch.ones_like(input_ids),
                        generation_config=config,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_StopFlag(flag)]),
                    )
                generated = int(out.shape[1] - input_ids.shape[1])
                self.last_run = RunStats(generated, flag.is_set() and generated < budget)
        finally:
            with suppress(RuntimeError):  # RuntimeError: the event loop is gone
                streamer.loop.call_soon_threadsafe(streamer.queue.put_nowait, None)
        return generated

    # -- adapters ----------------------------------------------------------

    def adapter_path(self, name: str) -> Path:
        return peft_adapter_path(self.adapter_dir, name)

    def load_adapter(self, name: str) -> float:
        path = self.adapter_path(name)
        with self._lock:
            if name in self._adapters:
                return 0.0
            start = self.clock()
            if self._peft is None:
                from peft import PeftModel

                self._peft = PeftModel.from_pretrained(self.model, path, adapter_name=name)
                self._peft.eval()
            else:
                self._peft.load_adapter(path, adapter_name=name)
            seconds = self.clock() - start
            self._adapters[name] = _lora_bytes(self._peft, name)
            return seconds

    def unload_adapter(self, name: str) -> None:
        with self._lock:
            if name not in self._adapters:
                return
            if len(self._adapters) == 1:
                self.model = self._peft.unload()  # the base model, LoRA layers removed
                self._peft = None
            else:
                self._peft.delete_adapter(name)
            del self._adapters[name]

    def resident(self) -> tuple[str, ...]:
        return tuple(self._adapters)

    def adapter_bytes(self, name: str) -> int:
        """Bytes of the adapter's weights in memory; not loaded: its weights file's size."""
        if name in self._adapters:
            return self._adapters[name]
        return adapter_file_bytes(self.adapter_path(name))


def _lora_bytes(model: Any, name: str) -> int:
    mine = re.compile(rf"\.lora_\w+\.{re.escape(name)}(\.|$)")
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if mine.search(n))


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def build(arms: Sequence[ArmConfig], context: BuildContext) -> dict[str, HFBackend]:
    """One :class:`HFBackend` per distinct model (path, device) among the arms; each
    arm's adapter is priced by that arm's table."""
    from deployments.backends.hf_models import load_causal_lm, require_hf, resolve_model

    require_hf()
    groups: dict[tuple[Any, ...], list[ArmConfig]] = {}
    for arm in arms:
        key = (arm.model, arm.model_path, arm.adapter_dir, arm.device, arm.max_new_tokens)
        groups.setdefault(key, []).append(arm)
    out: dict[str, HFBackend] = {}
    for (model_name, model_path, adapter_dir, device, max_new), group in groups.items():
        files = resolve_model(model_path, context.data_dir / "models")
        model, tokenizer = load_causal_lm(files.folder, device)
        backend = HFBackend(
            model,
            tokenizer,
            name=model_name,
            adapter_dir=Path(adapter_dir).expanduser()
            if adapter_dir
            else context.data_dir / "adapters",
            max_new_tokens=max_new,
            pricing={arm.adapter: Pricing.of(arm) for arm in reversed(group)},
        )
        out.update({arm.name: backend for arm in group})
    return out
