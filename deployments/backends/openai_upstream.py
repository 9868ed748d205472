"""The openai backend: forwards to any OpenAI-compatible upstream (vLLM, a provider).

It talks through ``openai.AsyncOpenAI`` (the arm's ``timeout_s`` per request,
``max_retries`` retries of connection errors, 408, 409, 429 and 5xx answers, with the
SDK's backoff). The body goes upstream as the client sent it: only the gateway's own
fields (``metadata``, ``task``) are removed, ``model`` becomes the arm's upstream
model (or its adapter), and it is always sent with ``stream: true`` and
``stream_options.include_usage``, so deltas (text, tool calls, other delta fields)
pass through as the upstream sends them and a non-streaming answer is the same
stream collected. Latency and time to the first token are measured here; tokens
come from the upstream's ``usage``; cost from the arm's price table; energy from
the arm's joules per token. Closing the stream early closes the upstream
connection, which stops the upstream's generation.

An HTTP error from the upstream becomes :class:`UpstreamStatus` with its status,
message and ``param`` (a 400 for a field the upstream rejects reaches the client as
a 400 naming it); a timeout is a 504, a connection failure a 502.

Adapters are served by name (the request's ``model`` is the adapter). With the
arm's ``adapter_dir`` set, the upstream is a vLLM server with runtime LoRA updating
and the pool drives its adapter slots: a load is ``POST /v1/load_lora_adapter`` of
``<adapter_dir>/<adapter>`` (a path on the server), timed, an unload
``/v1/unload_lora_adapter`` (:mod:`deployments.backends.vllm_lora`). Without it the
server is assumed to hold every adapter already (``--lora-modules``): loads are
bookkeeping and take no time.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, Any, cast

import openai

from controlplane.completions import UpstreamStatus
from controlplane.config import ArmConfig
from deployments.backends import AdapterNotLoaded, Chunk, Pricing, Usage
from deployments.backends.vllm_lora import VLLMLoRA

if TYPE_CHECKING:
    from deployments.backends import BuildContext

GATEWAY_FIELDS = frozenset({"metadata", "task"})  # the gateway's own, never forwarded
DELTA_FIELDS = frozenset({"content", "tool_calls", "role"})


class OpenAIUpstream:
    def __init__(self, arm: ArmConfig, client: openai.AsyncOpenAI | None = None) -> None:
        assert arm.base_url
        self.arm = arm
        self.pricing = Pricing.of(arm)
        key = os.environ.get(arm.api_key_env) if arm.api_key_env else None
        self.client = client or openai.AsyncOpenAI(
            base_url=arm.base_url.rstrip("/"),
            api_key=key or "none",  # never OPENAI_API_KEY by accident: only the arm's
            timeout=arm.timeout_s,
            max_retries=arm.max_retries,
        )
        self._adapters: dict[str, None] = {}
        self.lora = (
            None
            if arm.adapter_dir is None
            else VLLMLoRA(
                arm.base_url,
                arm.adapter_dir,
                headers={"Authorization": f"Bearer {key}"} if key else None,
                timeout_s=arm.timeout_s,
            )
        )

    async def generate(
        self, body: dict[str, Any], adapter: str | None = None
    ) -> AsyncGenerator[Chunk, None]:
        if adapter and adapter not in self._adapters:
            raise AdapterNotLoaded(adapter)
        rest = {k: v for k, v in body.items() if k not in GATEWAY_FIELDS}
        model = adapter or self.arm.upstream_model or self.arm.model
        messages = rest.pop("messages")
        rest.pop("model", None)
        rest.pop("stream", None)
        options = {**(rest.pop("stream_options", None) or {}), "include_usage": True}
        start = time.perf_counter()
        ttft_ms: float | None = None
        usage: dict[str, Any] = {}
        finish: str | None = None
        try:
            stream = await self.client.chat.completions.create(
                model=model,
                messages=cast(Any, messages),
                stream=True,
                # merged into the JSON body untouched, with the usage the gateway needs
                extra_body={**rest, "stream_options": options},
            )
            async with stream:
                async for event in stream:
                    data = event.to_dict()
                    usage = _dict(data.get("usage")) or usage
                    for chunk in _chunks(data):
                        if chunk.index == 0 and chunk.finish_reason:
                            finish = chunk.finish_reason
                        if ttft_ms is None and chunk.first_token:
                            ttft_ms = (time.perf_counter() - start) * 1000.0
                        yield chunk
        except openai.APIStatusError as exc:
            raise _status_error(exc) from None
        except openai.APITimeoutError:
            raise UpstreamStatus(
                504, f"the upstream did not answer within {self.arm.timeout_s} s", kind="timeout"
            ) from None
        except openai.APIConnectionError as exc:
            raise UpstreamStatus(
                502, f"cannot reach the upstream: {exc}", kind="upstream_error"
            ) from None
        except openai.APIError as exc:  # an error event in the stream
            raise UpstreamStatus(
                502, f"the upstream failed: {exc.message}", kind="upstream_error"
            ) from None
        pt, ct = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        yield Chunk(
            usage=Usage(
                prompt_tokens=pt,
                completion_tokens=ct,
                latency_ms=(time.perf_counter() - start) * 1000.0,
                ttft_ms=ttft_ms,
                energy_j=self.pricing.energy_j(pt, ct),
                cost_usd=self.pricing.cost_usd(pt, ct),
                finish_reason=finish or "stop",
                model=model,
            )
        )

    # -- adapters: served by name upstream; loaded there through vLLM's LoRA API -----

    def load_adapter(self, name: str) -> float:
        seconds = 0.0 if self.lora is None else self.lora.load(name)
        self._adapters[name] = None
        return seconds

    def unload_adapter(self, name: str) -> None:
        if self.lora is not None:
            self.lora.unload(name)
        self._adapters.pop(name, None)

    def resident(self) -> tuple[str, ...]:
        return tuple(self._adapters)

    def adapter_bytes(self, name: str) -> int:
        del name  # every adapter is held by the upstream server, not by this replica
        return 0


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _chunks(data: dict[str, Any]) -> list[Chunk]:
    """The deltas of one upstream ``chat.completion.chunk`` (dict form)."""
    out = []
    for choice in data.get("choices") or ():
        delta = _dict(choice.get("delta"))
        calls = delta.get("tool_calls")
        extra = {k: v for k, v in delta.items() if k not in DELTA_FIELDS and v is not None}
        chunk = Chunk(
            text=delta.get("content") or "",
            index=int(choice.get("index") or 0),
            tool_calls=tuple(calls) if calls else None,
            finish_reason=choice.get("finish_reason"),
            extra=extra or None,
            logprobs=choice.get("logprobs") or None,
        )
        if chunk.first_token or chunk.finish_reason or chunk.extra or chunk.logprobs:
            out.append(chunk)
    return out


def _status_error(exc: openai.APIStatusError) -> UpstreamStatus:
    err = _dict(exc.body)
    err = _dict(err.get("error")) or err
    message = err.get("message") if isinstance(err.get("message"), str) else exc.message
    return UpstreamStatus(
        exc.status_code,
        f"upstream: {message}",
        param=err.get("param") if isinstance(err.get("param"), str) else None,
        code=err.get("code") if isinstance(err.get("code"), str) else None,
        kind=str(err["type"]) if isinstance(err.get("type"), str) else "upstream_error",
    )


def build(arms: Sequence[ArmConfig], context: BuildContext) -> dict[str, OpenAIUpstream]:
    del context  # an upstream needs nothing of the replica's
    return {arm.name: OpenAIUpstream(arm) for arm in arms}
