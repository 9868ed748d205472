"""What the gateway builds a streamed answer from, apart from routing and logging.

:class:`StreamProgress` follows a streamed answer delta by delta (time to the first
token, the choices begun and ended, the pool's usage or, for a stream cut short, an
estimate); the functions shape the choices and chunks the gateway sends.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from controlplane.completions import UpstreamStatus
from controlplane.limits import CHARS_PER_TOKEN, estimate_prompt_tokens

if TYPE_CHECKING:
    from controlplane.config import ArmConfig


class StreamProgress:
    """What a streamed answer has produced so far."""

    def __init__(
        self, rid: uuid.UUID, arm: str, body: dict[str, Any], received: float, start: float
    ) -> None:
        self.rid, self.arm, self.body = rid, arm, body
        self.received, self.start = received, start
        self.ttft_ms: float | None = None
        self.deltas = 0
        self.chars = 0
        self.final: dict[str, Any] | None = None  # the pool's usage, once it came
        self.finished: dict[int, str] = {}
        self.indexes: set[int] = {0}

    def add(self, delta: dict[str, Any]) -> None:
        self.deltas += 1
        if delta.get("usage") is not None:
            self.final = dict(delta["usage"])
        index = int(delta.get("index") or 0)
        if delta.get("text") or delta.get("tool_calls"):
            self.indexes.add(index)
            if self.ttft_ms is None:
                self.ttft_ms = (time.perf_counter() - self.start) * 1000.0
            self.chars += len(delta.get("text") or "") + sum(
                len(json.dumps(c)) for c in delta.get("tool_calls") or ()
            )
        if delta.get("finish_reason"):
            self.finished[index] = delta["finish_reason"]

    def unfinished(self) -> list[int]:
        return sorted(self.indexes - set(self.finished))

    def finish_default(self) -> str:
        return str((self.final or {}).get("finish_reason") or "stop")

    def usage(self, arm: ArmConfig | None = None) -> dict[str, Any]:
        """The pool's usage; without it (the stream was cut short), tokens estimated as
        the rate limits do and priced by the arm's table."""
        if self.final is not None:
            return self.final
        pt = estimate_prompt_tokens(self.body)
        ct = int(self.chars / CHARS_PER_TOKEN)
        usd_in = arm.usd_per_1k_prompt_tokens if arm else 0.0
        usd_out = arm.usd_per_1k_completion_tokens if arm else 0.0
        joules = arm.joules_per_token if arm else 0.0
        return {
            "prompt_tokens": pt,
            "completion_tokens": ct,
            "cost_usd": (pt * usd_in + ct * usd_out) / 1000.0,
            "energy_j": joules * (pt + ct),
        }


def choices_of(gen: dict[str, Any]) -> list[dict[str, Any]]:
    """A generation's choices (a pool that gives only ``text``: one choice)."""
    choices = gen.get("choices")
    if choices:
        return list(choices)
    message = {"role": "assistant", "content": gen["text"]}
    finish = gen.get("finish_reason") or "stop"
    return [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}]


def opening_choice(index: int) -> dict[str, Any]:
    """A stream's first choice delta: the role."""
    return {
        "index": index,
        "delta": {"role": "assistant", "content": ""},
        "finish_reason": None,
        "logprobs": None,
    }


def finish_choice(index: int, reason: str) -> dict[str, Any]:
    """A choice's last delta, for a backend that stated its finish reason only in usage."""
    return {"index": index, "delta": {}, "finish_reason": reason, "logprobs": None}


def error_json(exc: BaseException) -> dict[str, Any]:
    """The ``error`` object of a stream that failed after its first token."""
    if isinstance(exc, UpstreamStatus):
        return {"message": exc.message, "type": exc.kind, "param": exc.param, "code": exc.code}
    return {
        "message": f"upstream failed: {exc}",
        "type": "upstream_error",
        "param": None,
        "code": None,
    }


async def aclose_quietly(deltas: AsyncIterator[Any]) -> None:
    """Close a pool stream (which stops its generation), whatever state it is in."""
    close = getattr(deltas, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()
