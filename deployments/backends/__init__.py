"""Model backends behind a pool: plain classes, testable without Ray.

A backend streams an OpenAI chat body as :class:`Chunk` s: deltas as the model
produces them (text, tool calls, each choice's finish reason; ``index`` names
the choice when the body asks for ``n`` > 1), then one last chunk carrying the
:class:`Usage` (tokens, time to first token, latency, energy, cost, finish
reason). A backend that cannot serve a field of the body raises
:class:`controlplane.completions.UnsupportedField` naming it (the gateway
routes such requests elsewhere first: :func:`controlplane.completions.unsupported`),
and an upstream's HTTP error is a :class:`controlplane.completions.UpstreamStatus`. It also holds the
LoRA adapters of its base model: ``load_adapter`` returns the seconds the load
really took (the page-in cost the cache planner prices), ``unload_adapter``
frees it, ``resident`` lists what it holds and ``adapter_bytes`` says what one
costs in memory. The pool decides what is held (its slots); a backend only
obeys, and refuses to generate with an adapter it does not hold.

:func:`collect` turns a stream into the :class:`Generation` the non-streaming
path returns. Registry: :data:`BACKENDS` names, per ``backend:`` kind, the
module whose ``build(arms, context)`` makes the backends of one pool's arms
(arms of one base model may share one backend, as the ``hf`` kind does: one
model in memory, adapters loaded into it). Adding a backend is one module and
one entry.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from controlplane.completions import Assembler, UnsupportedField, unsupported

if TYPE_CHECKING:
    from controlplane.config import ArmConfig, BanditConfig


class AdapterNotLoaded(KeyError):
    """A generation asked for an adapter its backend does not hold."""


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    ttft_ms: float | None
    energy_j: float
    cost_usd: float
    # the first choice's: "stop" (end of answer or a stop sequence), "length" (max tokens),
    # "tool_calls" (the model called tools)
    finish_reason: str
    model: str


@dataclass(frozen=True)
class Chunk:
    """A delta of choice ``index``: text, tool call deltas (OpenAI's streamed
    ``tool_calls`` items: ``index``, ``id``, ``type``, ``function {name, arguments}``),
    the choice's ``finish_reason`` once it ended, and ``extra`` delta fields an upstream
    sent (``refusal``, ``reasoning_content``) and its ``logprobs``. The stream's last
    chunk carries ``usage``
    (its ``text`` may be empty)."""

    text: str = ""
    usage: Usage | None = None
    index: int = 0
    tool_calls: tuple[dict[str, Any], ...] | None = None
    finish_reason: str | None = None
    extra: dict[str, Any] | None = None
    logprobs: dict[str, Any] | None = None  # the choice's log probabilities, when asked

    @property
    def first_token(self) -> bool:
        """Whether this delta carries output (text or a tool call): the first such one
        is the time to the first token."""
        return bool(self.text or self.tool_calls)

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "text": self.text,
            "tool_calls": None if self.tool_calls is None else list(self.tool_calls),
            "finish_reason": self.finish_reason,
            "extra": self.extra,
            "logprobs": self.logprobs,
            "usage": None if self.usage is None else dict(self.usage.__dict__),
        }


@dataclass
class Generation:
    """A whole answer: ``text`` and ``finish_reason`` are the first choice's; ``choices``
    holds every choice as a completion's ``choices`` items (message with content and
    tool calls, finish reason)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    ttft_ms: float | None
    energy_j: float
    cost_usd: float
    model: str
    finish_reason: str = "stop"
    choices: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Pricing:
    """An arm's price table: dollars per 1k tokens and joules per token."""

    usd_per_1k_prompt_tokens: float = 0.0
    usd_per_1k_completion_tokens: float = 0.0
    joules_per_token: float = 0.0

    @classmethod
    def of(cls, arm: ArmConfig) -> Pricing:
        return cls(
            arm.usd_per_1k_prompt_tokens, arm.usd_per_1k_completion_tokens, arm.joules_per_token
        )

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.usd_per_1k_prompt_tokens
            + completion_tokens * self.usd_per_1k_completion_tokens
        ) / 1000.0

    def energy_j(self, prompt_tokens: int, completion_tokens: int) -> float:
        return self.joules_per_token * (prompt_tokens + completion_tokens)


class Backend(Protocol):
    def generate(
        self, body: dict[str, Any], adapter: str | None = None
    ) -> AsyncGenerator[Chunk, None]:
        """Stream the answer; closing the iterator early stops the generation."""
        ...

    def load_adapter(self, name: str) -> float:
        """Load ``name`` (no-op if held); returns the seconds the load took."""
        ...

    def unload_adapter(self, name: str) -> None: ...

    def resident(self) -> tuple[str, ...]: ...

    def adapter_bytes(self, name: str) -> int:
        """Memory one copy of the adapter takes (bytes)."""
        ...


async def collect(stream: AsyncIterator[Chunk]) -> Generation:
    """Drain a stream into one :class:`Generation` (the non-streaming answer)."""
    joined = Assembler()
    usage: Usage | None = None
    async for chunk in stream:
        joined.add(chunk.as_dict())
        if chunk.usage is not None:
            usage = chunk.usage
    if usage is None:
        raise RuntimeError("the backend's stream ended without usage")
    choices = joined.choices()
    first = choices[0]
    fields = {**usage.__dict__, "finish_reason": first["finish_reason"]}
    return Generation(text=first["message"]["content"] or "", choices=choices, **fields)


def with_timing(usage: Usage, latency_ms: float, ttft_ms: float | None) -> Usage:
    """``usage`` measured from further out (the pool's clock includes adapter loads)."""
    return replace(
        usage,
        latency_ms=max(usage.latency_ms, latency_ms),
        ttft_ms=ttft_ms if ttft_ms is not None else usage.ttft_ms,
    )


def choice_count(body: dict[str, Any]) -> int:
    """The request's ``n`` (choices to generate), 1 by default."""
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1


def refuse_unsupported(body: dict[str, Any], kind: str) -> None:
    """Raise :class:`UnsupportedField` for the first field a ``kind`` backend cannot serve."""
    found = unsupported(body, kind)
    if found is not None:
        raise UnsupportedField(*found)


def completion_budget(body: dict[str, Any], cap: int | None = None) -> int | None:
    """The request's ``max_completion_tokens`` / ``max_tokens``, bounded by ``cap``."""
    asked = body.get("max_completion_tokens") or body.get("max_tokens")
    if asked is None:
        return cap
    n = max(1, int(asked))
    return n if cap is None else min(n, cap)


def stop_sequences(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if not stop:
        return ()
    return tuple(s for s in ([stop] if isinstance(stop, str) else stop) if s)


ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def peft_adapter_path(adapter_dir: Path | None, name: str) -> Path:
    """The peft folder of adapter ``name`` under ``adapter_dir`` (it must hold an
    ``adapter_config.json``); a name is a plain folder name."""
    if not ADAPTER_NAME.match(name):
        raise ValueError(f"adapter name {name!r}: use a folder name (letters, digits, _.+-)")
    if adapter_dir is None:
        raise FileNotFoundError(f"adapter {name!r}: the arm sets no adapter_dir")
    path = adapter_dir / name
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(f"adapter {name!r}: no peft adapter at {path}")
    return path


def adapter_file_bytes(path: Path) -> int:
    """Size of a peft folder's weights file(s)."""
    return sum(f.stat().st_size for f in path.glob("adapter_model.*"))


@dataclass(frozen=True)
class BuildContext:
    """What building a pool's backends needs beyond its arms."""

    config: BanditConfig
    adapter_rank: int  # the replay backend's fake adapters
    data_dir: Path  # the hf backend's converted model copies, default adapter folder


# backend kind -> module exposing build(arms, context) -> {arm name: backend}
BACKENDS: dict[str, str] = {
    "replay": "deployments.backends.replay",
    "openai": "deployments.backends.openai_upstream",
    "hf": "deployments.backends.hf",
    "vllm": "deployments.backends.vllm_engine",
}


def build_backends(arms: Sequence[ArmConfig], context: BuildContext) -> Mapping[str, Backend]:
    """Backends for one pool's arms, by arm name (built lazily: a kind's module is
    imported only when an arm uses it)."""
    by_kind: dict[str, list[ArmConfig]] = {}
    for arm in arms:
        by_kind.setdefault(arm.backend, []).append(arm)
    out: dict[str, Backend] = {}
    for kind, group in by_kind.items():
        if kind not in BACKENDS:
            raise ValueError(f"arm {group[0].name!r}: no backend of kind {kind!r}")
        out.update(importlib.import_module(BACKENDS[kind]).build(group, context))
    return out
