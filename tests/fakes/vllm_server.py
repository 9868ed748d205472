"""A small vLLM stand-in: the chat API (streamed or not) and vLLM's runtime LoRA API
(``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``, ``/v1/models`` with each
adapter's ``parent``), answering with vLLM's status codes and messages. Served by
uvicorn on a free loopback port in a thread (:class:`FakeVLLM`).

A load takes ``load_s`` seconds (a sleep: the server's own work) and fails with 404
when ``<path>`` is not one of ``available``; an adapter answers with its name in
the text, so a test sees which one served. ``history`` records every load and
unload; ``max_loaded`` the most adapters held at once.
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
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse


def _error(message: str, kind: str, code: int) -> JSONResponse:
    return JSONResponse({"object": "error", "message": message, "type": kind, "code": code}, code)


class FakeVLLM:
    def __init__(self, base_model: str, available: dict[str, str], load_s: float = 0.05) -> None:
        self.base_model = base_model
        self.available = dict(available)  # path -> adapter it holds
        self.load_s = load_s
        self.loaded: dict[str, str] = {}  # name -> path
        self.history: list[tuple[str, str]] = []  # ("load" | "unload", name)
        self.max_loaded = 0
        self.chats: list[dict[str, Any]] = []
        self.app = self._build()
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> FakeVLLM:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("fake vLLM did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/load_lora_adapter")
        async def load(request: Request) -> Any:
            body = await request.json()
            name, path = body.get("lora_name"), body.get("lora_path")
            if not name or not path:
                return _error(
                    "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput", 400
                )
            if name in self.loaded:
                return _error(
                    f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput", 400
                )
            # the load's work: at least load_s by the clock callers time it with (an event
            # loop's timer can fire a tick early, and a caller then timed 49.94 ms of 50)
            done_at = time.perf_counter() + self.load_s
            while (left := done_at - time.perf_counter()) > 0:
                await asyncio.sleep(left)
            if path not in self.available:
                return _error(f"No adapter found for {path}", "NotFoundError", 404)
            self.loaded[name] = path
            self.history.append(("load", name))
            self.max_loaded = max(self.max_loaded, len(self.loaded))
            return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

        @app.post("/v1/unload_lora_adapter")
        async def unload(request: Request) -> Any:
            name = (await request.json()).get("lora_name")
            if name not in self.loaded:
                return _error(f"The lora adapter '{name}' cannot be found.", "NotFoundError", 404)
            del self.loaded[name]
            self.history.append(("unload", name))
            return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

        @app.get("/v1/models")
        async def models() -> Any:
            cards = [{"id": self.base_model, "object": "model", "parent": None}]
            cards += [
                {"id": n, "object": "model", "root": p, "parent": self.base_model}
                for n, p in self.loaded.items()
            ]
            return {"object": "list", "data": cards}

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            body = await request.json()
            self.chats.append(body)
            model = body.get("model")
            if model != self.base_model and model not in self.loaded:
                return _error(f"The model `{model}` does not exist.", "NotFoundError", 404)
            words = [f"{model}", " says", " hello"]
            usage = {"prompt_tokens": 5, "completion_tokens": len(words), "total_tokens": 8}
            if not body.get("stream"):
                return {
                    "id": "chatcmpl-fake", "object": "chat.completion", "model": model,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "".join(words)}}],
                    "usage": usage,
                }  # fmt: skip

            async def events() -> AsyncIterator[str]:
                for i, w in enumerate(words):
                    last = i == len(words) - 1
                    chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                             "model": model, "choices": [{"index": 0, "delta": {"content": w},
                             "finish_reason": "stop" if last else None}]}  # fmt: skip
                    yield f"data: {json.dumps(chunk)}\n\n"
                if (body.get("stream_options") or {}).get("include_usage"):
                    tail = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                            "model": model, "choices": [], "usage": usage}  # fmt: skip
                    yield f"data: {json.dumps(tail)}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
