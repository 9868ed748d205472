"""The chat route below FastAPI: the gateway app serves ``POST /v1/chat/completions`` from
its ASGI call, without FastAPI's middleware stack, router and route handler.

Chat completions is the route every request takes, and FastAPI's handling of it (six
middlewares, the router, the route's request handler and its dependency solving, for an
endpoint that has none) costs about 30 us of CPU for an endpoint that answers at once,
and more on the gateway's request path, whose task suspends at every await and resumes
each of the stack's frames when it goes on (0.03-0.19 ms a request in process,
``bench/profile_gateway.py --fastapi-chat``).

:class:`GatewayApp` is the FastAPI app :func:`controlplane.api.create_app` builds: its
middleware stack has one layer more, outermost, :class:`ChatFront`, which hands a chat
request to the route's own endpoint (:func:`controlplane.api.chat.chat`, the one
implementation both ways take) under Starlette's two error middlewares, the same classes
with the same handlers as the app's stack has, so that every error answers as it would
through FastAPI (and a 500 is re-raised to the server after its answer, as FastAPI does).
Every other request, and a chat request FastAPI would treat otherwise, takes the whole
stack unchanged:

- where FastAPI's own OpenTelemetry instrumentation is on for the request (a global
  tracer, meter or logger provider is set: its server span, metrics and logs), or a body
  limit of Starlette's applies, the request takes the stack, which does what they need;
- a root path (the app mounted under a prefix) leaves the matching to the router;
- a middleware added to the app (``add_middleware``) turns the front off, so that it
  sees chat requests as it expects, unless its class says it passes them by
  (``passes_chat = True``: the feedback-rejection counter of :mod:`controlplane.metrics`,
  the one the app has).

The route stays in the app's router: the OpenAPI schema lists it, and ``create_app(...,
chat_front=False)`` serves it through FastAPI (the tests compare both ways).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from controlplane.api import chat

CHAT_PATH = "/v1/chat/completions"
# what Starlette's body limit puts in the scope (starlette.middleware.body_limit)
BODY_LIMIT_KEY = "starlette.max_body_size"


class GatewayApp(FastAPI):
    """FastAPI with :class:`ChatFront` outermost in its middleware stack (built, as
    FastAPI builds it, on the first call, with the handlers and middlewares it has then)."""

    chat_front = True

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        passes_chat = all(getattr(m.cls, "passes_chat", False) for m in self.user_middleware)
        if not self.chat_front or not passes_chat or getattr(self, "max_body_size", None):
            return stack
        # the split FastAPI's own build makes: 500 and Exception to the server-error
        # middleware, every other handler to the exception middleware
        error_handler = None
        handlers: dict[Any, Any] = {}
        for key, value in self.exception_handlers.items():
            if key in (500, Exception):
                error_handler = value
            else:
                handlers[key] = value
        endpoint = ServerErrorMiddleware(
            ExceptionMiddleware(serve_chat, handlers=handlers, debug=self.debug),
            handler=error_handler,
            debug=self.debug,
        )
        return ChatFront(stack, endpoint)


class ChatFront:
    """ASGI: a chat completions request to ``chat``, anything else to ``app`` (the app's
    middleware stack as FastAPI builds it)."""

    def __init__(self, app: ASGIApp, chat: ASGIApp) -> None:
        self.app = app
        self.chat = chat

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == CHAT_PATH
            and scope["method"] == "POST"
            and not scope.get("root_path")
            and scope.get("fastapi.telemetry") is None
            and BODY_LIMIT_KEY not in scope
        ):
            await self.chat(scope, receive, send)
        else:
            await self.app(scope, receive, send)


async def serve_chat(scope: Scope, receive: Receive, send: Send) -> None:
    """The chat route's endpoint as its route handler calls it: the request in, the
    response it returns sent."""
    response: Response = await chat.chat(Request(scope, receive, send))
    await response(scope, receive, send)
