"""Model backends behind a pool: plain classes, testable without Ray.

A backend turns an OpenAI chat body into a :class:`Generation`. Registry:
``BACKENDS[kind](arm, context)``; adding one is a module and an entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    ttft_ms: float | None
    energy_j: float
    cost_usd: float
    model: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Backend(Protocol):
    async def generate(self, body: dict[str, Any]) -> Generation: ...
