"""A small OpenAI-compatible upstream on a loopback port (FastAPI + uvicorn in a thread).

It answers deterministically, so tests can say what the gateway must return:

- text: ``"<model> heard: <last message's content>"``, one token a word; ``stop`` cuts
  it (finish ``stop``), ``max_tokens``/``max_completion_tokens`` too (finish
  ``length``); ``response_format: json_object`` wraps it as ``{"answer": ...}``;
- with ``tools`` (``tool_choice`` not ``none``) and a last message that is not a tool
  result: a call of the named tool (else the first), arguments ``{"query": <last user
  text>}``, finish ``tool_calls``;
- ``n`` choices; streamed word by word (tool arguments in two pieces), each choice's
  deltas interleaved, then a usage chunk when ``stream_options.include_usage``.

Knobs (set on the object, read per request): ``delay_s`` between streamed chunks,
``first_delay_s`` before the first, ``fail_times``/``fail_status`` (answer that many
requests with an error), ``reject`` (a 400 naming a param), ``fail_after`` (an error
event after that many content chunks). It records every body it got
(``requests``) and counts streams whose client left before the end (``closed_early``).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


def words_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def plan(body: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The choices the upstream answers ``body`` with, and the usage."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    prompt_tokens = sum(len(words_of(m.get("content")).split()) for m in messages) + 1
    tools = body.get("tools") or []
    choice = body.get("tool_choice")
    call_tool = bool(tools) and choice != "none" and last.get("role") != "tool"
    choices = []
    completion = 0
    for i in range(int(body.get("n") or 1)):
        if call_tool:
            name = tools[0]["function"]["name"]
            if isinstance(choice, dict):
                name = choice["function"]["name"]
            args = json.dumps({"query": words_of(last.get("content"))})
            call = {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": args}}  # fmt: skip
            choices.append({"tool_calls": [call], "words": [], "finish_reason": "tool_calls"})
            completion += 5
            continue
        text = f"{body.get('model')} heard: {words_of(last.get('content'))}"
        fmt = body.get("response_format") or {}
        if fmt.get("type") == "json_object":
            text = json.dumps({"answer": text})
        finish = "stop"
        stops = body.get("stop") or []
        for s in [stops] if isinstance(stops, str) else stops:
            if s in text:
                text = text[: text.index(s)]
        words = text.split(" ")
        budget = body.get("max_completion_tokens") or body.get("max_tokens")
        if budget is not None and len(words) > budget:
            words, finish = words[:budget], "length"
        pieces = [w if j == 0 else " " + w for j, w in enumerate(words)]
        choices.append({"tool_calls": None, "words": pieces, "finish_reason": finish})
        completion += len(words)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
             "total_tokens": prompt_tokens + completion}  # fmt: skip
    return choices, usage


class FakeUpstream:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.delay_s = 0.0
        self.first_delay_s = 0.0
        self.fail_times = 0
        self.fail_status = 500
        self.reject: dict[str, Any] | None = None
        self.fail_after: int | None = None
        self.closed_early = 0
        self.completed = 0
        self._asked_logprobs = False
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self._chat)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def reset(self) -> None:
        self.requests.clear()
        self.headers.clear()
        self.delay_s = self.first_delay_s = 0.0
        self.fail_times, self.fail_status, self.reject, self.fail_after = 0, 500, None, None
        self.closed_early = self.completed = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- the server --------------------------------------------------------

    def start(self) -> FakeUpstream:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "the fake upstream did not start"
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)

    # -- the API -------------------------------------------------------------

    async def _chat(self, request: Request) -> Any:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if self.fail_times > 0:
            self.fail_times -= 1
            return _error(self.fail_status, "the fake upstream is failing", "server_error")
        if self.reject is not None:
            return _error(400, self.reject["message"], "invalid_request_error",
                          param=self.reject.get("param"))  # fmt: skip
        choices, usage = plan(body)
        self._asked_logprobs = bool(body.get("logprobs"))
        cid = f"chatcmpl-fake{len(self.requests)}"
        model = body.get("model")
        if not body.get("stream"):
            return {
                "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [_message(i, c, self._asked_logprobs) for i, c in enumerate(choices)],
                "usage": usage,
            }  # fmt: skip
        include = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}  # fmt: skip
        return StreamingResponse(
            self._stream(base, choices, usage if include else None),
            media_type="text/event-stream",
        )

    async def _stream(
        self, base: dict[str, Any], choices: list[dict[str, Any]], usage: dict[str, int] | None
    ) -> AsyncIterator[bytes]:
        def event(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
            logprobs = _logprobs([delta["content"]]) if self._asked_logprobs and delta.get("content") else None  # fmt: skip
            choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
            return f"data: {json.dumps({**base, 'choices': [choice]})}\n\n".encode()

        done = False
        sent = 0
        try:
            if self.first_delay_s:
                await asyncio.sleep(self.first_delay_s)
            for i in range(len(choices)):
                yield event(i, {"role": "assistant", "content": ""})
            deltas: list[tuple[int, dict[str, Any]]] = []
            longest = max(len(c["words"]) for c in choices)
            for j in range(longest):
                deltas += [(i, {"content": c["words"][j]}) for i, c in enumerate(choices)
                           if j < len(c["words"])]  # fmt: skip
            for i, c in enumerate(choices):
                for k, call in enumerate(c["tool_calls"] or ()):
                    args = call["function"]["arguments"]
                    half = len(args) // 2
                    head = {"index": k, "id": call["id"], "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": ""}}  # fmt: skip
                    deltas.append((i, {"tool_calls": [head]}))
                    for part in (args[:half], args[half:]):
                        deltas.append((i, {"tool_calls": [{"index": k, "function": {"arguments": part}}]}))  # fmt: skip
            for i, delta in deltas:
                if self.fail_after is not None and sent >= self.fail_after:
                    err = {"message": "the fake upstream broke mid-stream", "type": "server_error"}
                    yield f"data: {json.dumps({'error': err})}\n\n".encode()
                    done = True
                    return
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                yield event(i, delta)
                sent += 1
            for i, c in enumerate(choices):
                yield event(i, {}, c["finish_reason"])
            if usage is not None:
                yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n".encode()
            yield b"data: [DONE]\n\n"
            done = True
        finally:
            if done:
                self.completed += 1
            else:
                self.closed_early += 1


def _message(index: int, choice: dict[str, Any], logprobs: bool) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": "".join(choice["words"]) or None}
    if choice["tool_calls"]:
        message["tool_calls"] = choice["tool_calls"]
    return {"index": index, "message": message, "finish_reason": choice["finish_reason"],
            "logprobs": _logprobs(choice["words"]) if logprobs else None}  # fmt: skip


def _logprobs(tokens: list[str]) -> dict[str, Any]:
    """Made-up log probabilities, one per token (-0.1 x its length)."""
    return {"content": [{"token": t, "logprob": -0.1 * len(t), "bytes": list(t.encode()),
                         "top_logprobs": []} for t in tokens]}  # fmt: skip


def _error(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return JSONResponse(body, status_code=status)
