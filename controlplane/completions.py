"""The OpenAI chat completion format, apart from HTTP and Ray.

- :func:`check_request`: the fields the gateway understands, checked before routing
  (``n``, ``stop``, ``max_tokens``/``max_completion_tokens``, ``stream``,
  ``stream_options``, ``tools``, ``tool_choice``, ``response_format``); a bad one is a
  :class:`FieldError` naming it. Every other field travels to the backend untouched.
- :func:`unsupported`: what a backend kind cannot serve (``replay`` and ``hf`` call no
  tools, guarantee no JSON and give no log probabilities; ``openai`` forwards anything),
  so the gateway routes a request only to arms that can serve it.
- :class:`Assembler`: a generation's deltas (dicts of :class:`deployments.backends.Chunk`:
  ``index``, ``text``, ``tool_calls``, ``finish_reason``, ``extra``, ``usage``) joined into
  a completion's ``choices``; :func:`chunk_event` turns one delta into an SSE chunk.
- :class:`UpstreamStatus`: an upstream (or a backend) refused the request with an HTTP
  status; a 4xx reaches the client as such, with the field the upstream named.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MAX_N = 128
MAX_STOP = 4
FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter", "function_call")
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
TOOL_CHOICES = ("none", "auto", "required")
# backend kinds that run (or replay) the model themselves: what they cannot do is refused
LOCAL_KINDS = ("replay", "hf", "vllm")
# an upstream's statuses that refuse the request itself: passed on to the client
CLIENT_STATUSES = (400, 413, 415, 422)


class FieldError(ValueError):
    """A request field the gateway refuses (HTTP 400, the field as ``param``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class UpstreamStatus(RuntimeError):
    """An upstream answered with an HTTP error (a backend refusing a field is a 400)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind

    def __reduce__(self) -> Any:  # picklable across Ray with its keyword fields
        return (_upstream_status, (self.status, self.message, self.param, self.code, self.kind))

    @property
    def client_error(self) -> bool:
        """Whether the request itself was refused (a field, its size): the client's to fix.
        Other 4xx (401, 403, 404: the arm's key or model; 408, 429) are the upstream's."""
        return self.status in CLIENT_STATUSES


def _upstream_status(
    status: int, message: str, param: str | None, code: str | None, kind: str
) -> UpstreamStatus:
    return UpstreamStatus(status, message, param=param, code=code, kind=kind)


class UnsupportedField(UpstreamStatus):
    """A backend cannot serve a field of the request (HTTP 400 naming it)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(400, f"{field}: {message}", param=field, code="unsupported_parameter")
        self.field = field

    def __reduce__(self) -> Any:
        return (UnsupportedField, (self.field, self.message.removeprefix(f"{self.field}: ")))


# -- the request --------------------------------------------------------------


def _positive_int(body: Mapping[str, Any], field: str, upper: int | None = None) -> None:
    v = body.get(field)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise FieldError(field, "must be a positive integer")
    if upper is not None and v > upper:
        raise FieldError(field, f"must be at most {upper}")


def check_request(body: Mapping[str, Any]) -> None:
    """Raise :class:`FieldError` for the first malformed field the gateway understands."""
    _positive_int(body, "n", MAX_N)
    _positive_int(body, "max_tokens")
    _positive_int(body, "max_completion_tokens")
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise FieldError("stop", "must be a non-empty string or a list of them")
        if len(stops) > MAX_STOP:
            raise FieldError("stop", f"at most {MAX_STOP} sequences")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise FieldError("stream", "must be a boolean")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise FieldError("stream_options", "must be an object")
        if not stream:
            raise FieldError("stream_options", "only allowed when stream is true")
        usage = options.get("include_usage")
        if usage is not None and not isinstance(usage, bool):
            raise FieldError("stream_options.include_usage", "must be a boolean")
    names = _check_tools(body.get("tools"))
    _check_tool_choice(body.get("tool_choice"), names)
    _check_response_format(body.get("response_format"))


def _check_tools(tools: Any) -> set[str] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise FieldError("tools", "must be a list")
    names: set[str] = set()
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise FieldError(f"tools[{i}]", "each tool is an object with a string 'type'")
        if tool["type"] == "function":
            fn = tool.get("function")
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
                raise FieldError(f"tools[{i}].function.name", "a function tool needs a name")
            params = fn.get("parameters")
            if params is not None and not isinstance(params, dict):
                raise FieldError(f"tools[{i}].function.parameters", "must be a JSON schema object")
            names.add(fn["name"])
    return names


def _check_tool_choice(choice: Any, names: set[str] | None) -> None:
    if choice is None:
        return
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            raise FieldError(
                "tool_choice", f"must be one of {', '.join(TOOL_CHOICES)} or an object"
            )
        if choice != "none" and not names:
            raise FieldError("tool_choice", "only allowed when tools are specified")
        return
    if not isinstance(choice, dict) or not isinstance(choice.get("type"), str):
        raise FieldError("tool_choice", "must be a string or an object with a 'type'")
    if choice["type"] == "function":
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str):
            raise FieldError("tool_choice.function.name", "must name a function")
        if names is None or name not in names:
            raise FieldError("tool_choice.function.name", f"no tool named {name!r} in tools")


def _check_response_format(fmt: Any) -> None:
    if fmt is None:
        return
    if not isinstance(fmt, dict) or fmt.get("type") not in RESPONSE_FORMATS:
        raise FieldError("response_format.type", f"must be one of {', '.join(RESPONSE_FORMATS)}")
    if fmt["type"] == "json_schema":
        schema = fmt.get("json_schema")
        if not isinstance(schema, dict) or not isinstance(schema.get("name"), str):
            raise FieldError("response_format.json_schema.name", "a json_schema needs a name")


def wants_tools(body: Mapping[str, Any]) -> bool:
    return bool(body.get("tools")) and body.get("tool_choice") != "none"


def unsupported(body: Mapping[str, Any], kind: str) -> tuple[str, str] | None:
    """The first field of ``body`` that a backend of ``kind`` cannot serve, and why
    (``None``: it can serve all of it)."""
    if kind not in LOCAL_KINDS:
        return None  # an upstream: forwarded untouched, it answers for itself
    if wants_tools(body):
        return "tools", f"the {kind} backend cannot call tools"
    if body.get("functions") or body.get("function_call"):
        return "functions", f"the {kind} backend cannot call functions"
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type", "text") != "text":
        return "response_format", f"the {kind} backend cannot guarantee {fmt['type']} output"
    if body.get("logprobs") or body.get("top_logprobs"):
        return "logprobs", f"the {kind} backend gives no log probabilities"
    if body.get("audio") or "audio" in (body.get("modalities") or ()):
        return "modalities", f"the {kind} backend answers in text only"
    return None


def include_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


# -- the answer -------------------------------------------------------------------


class _Choice:
    __slots__ = ("extra", "finish_reason", "logprobs", "text", "tools")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.tools: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.extra: dict[str, Any] = {}
        self.logprobs: dict[str, list[Any]] | None = None


class Assembler:
    """Joins deltas into the ``choices`` of a completion: text concatenated, tool
    calls merged by their index (the name once, the arguments appended), the last
    finish reason of each choice kept."""

    def __init__(self) -> None:
        self._choices: dict[int, _Choice] = {}
        self.usage: dict[str, Any] | None = None

    def add(self, delta: Mapping[str, Any]) -> None:
        if delta.get("usage") is not None:
            self.usage = dict(delta["usage"])
        index = int(delta.get("index") or 0)
        text = delta.get("text") or ""
        tools = delta.get("tool_calls")
        finish = delta.get("finish_reason")
        extra = delta.get("extra")
        logprobs = delta.get("logprobs")
        if not (text or tools or finish or extra or logprobs):
            return  # a usage-only delta opens no choice
        choice = self._choices.setdefault(index, _Choice())
        if text:
            choice.text.append(text)
        for call in tools or ():
            merge_tool_call(choice.tools, call)
        if finish:
            choice.finish_reason = finish
        if logprobs:  # token lists (content, refusal) are concatenated
            joined = choice.logprobs = choice.logprobs or {}
            for k, v in logprobs.items():
                if isinstance(v, list):
                    joined[k] = [*joined.get(k, []), *v]
        for k, v in (extra or {}).items():
            if isinstance(v, str) and isinstance(choice.extra.get(k), str):
                choice.extra[k] += v
            else:
                choice.extra[k] = v

    def choices(self) -> list[dict[str, Any]]:
        """The completion's choices, by index; a choice that stated no finish reason
        takes the usage's (the backend's), else ``stop`` (``tool_calls`` with calls)."""
        default = (self.usage or {}).get("finish_reason")
        out = []
        for index in sorted(self._choices) or [0]:
            c = self._choices.get(index) or _Choice()
            calls = [c.tools[i] for i in sorted(c.tools)]
            message: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(c.text) if (c.text or not calls) else None,
            }
            if calls:
                message["tool_calls"] = calls
            message.update(c.extra)
            finish = c.finish_reason or default or ("tool_calls" if calls else "stop")
            out.append(
                {
                    "index": index,
                    "message": message,
                    "finish_reason": finish,
                    "logprobs": c.logprobs,
                }
            )
        return out


def merge_tool_call(calls: dict[int, dict[str, Any]], delta: Mapping[str, Any]) -> None:
    """Fold one streamed tool call delta (``index``, ``id``, ``type``, ``function``
    ``{name, arguments}``) into ``calls``, keyed by index."""
    index = int(delta.get("index") or 0)
    call = calls.setdefault(
        index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
    )
    if delta.get("id"):
        call["id"] = delta["id"]
    if delta.get("type"):
        call["type"] = delta["type"]
    fn = delta.get("function") or {}
    if fn.get("name"):
        call["function"]["name"] = call["function"]["name"] or fn["name"]
    if fn.get("arguments"):
        call["function"]["arguments"] += fn["arguments"]


def tool_call_deltas(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Whole tool calls (a non-streamed message's) as stream deltas, with their index."""
    return [{"index": i, **call} for i, call in enumerate(calls)]


def chunk_event(
    base: Mapping[str, Any], delta: Mapping[str, Any], *, first: bool
) -> dict[str, Any] | None:
    """One pool delta as a ``chat.completion.chunk`` (``None``: nothing to send).
    ``first``: the first delta of its choice, which carries the role."""
    out: dict[str, Any] = {}
    if first:
        out["role"] = "assistant"
    if delta.get("text"):
        out["content"] = delta["text"]
    if delta.get("tool_calls"):
        out["tool_calls"] = list(delta["tool_calls"])
    out.update(delta.get("extra") or {})
    finish = delta.get("finish_reason")
    logprobs = delta.get("logprobs")
    if not out and not finish and not logprobs:
        return None
    choice = {"index": int(delta.get("index") or 0), "delta": out, "finish_reason": finish}
    return {**base, "choices": [{**choice, "logprobs": logprobs}]}


def usage_json(usage: Mapping[str, Any]) -> dict[str, int]:
    pt, ct = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    return {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}
