"""What the OpenAPI schema says of the request bodies the routes read themselves.

The routes read their JSON through :func:`.validation.read_body` (size, depth and number
limits, errors naming the field), so FastAPI cannot infer their bodies; these JSON
schemas describe them for ``/openapi.json`` (``openapi_extra``), with the default
``limits:`` of :class:`controlplane.config.RequestLimits`. They document; the checks are
:mod:`.validation`, :mod:`controlplane.completions` and :mod:`feedback.records`.
"""

from __future__ import annotations

from typing import Any

from controlplane.api.validation import ROLES_MAX_CHARS
from controlplane.completions import MAX_N, MAX_STOP, RESPONSE_FORMATS, TOOL_CHOICES
from controlplane.config import RequestLimits
from controlplane.tokens import MAX_TOKEN_CHARS
from feedback.records import MAX_SOURCE_LEN
from learners.base import REWARD_COMPONENTS

_DEFAULTS = RequestLimits()
MAX_FEEDBACK_BATCH = 1000

JSON = dict[str, Any]


def _label(description: str) -> JSON:
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": _DEFAULTS.max_label_chars,
        "description": description + " (printable characters)",
    }


def _tokens(description: str) -> JSON:
    return {
        "type": "integer",
        "minimum": 1,
        "maximum": _DEFAULTS.max_tokens,
        "description": description,
    }


_MESSAGE: JSON = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string", "minLength": 1, "maxLength": ROLES_MAX_CHARS},
        "content": {
            "anyOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"type": {"type": "string"}, "text": {"type": "string"}},
                    },
                },
                {"type": "null"},
            ]
        },
    },
}

_METADATA: JSON = {
    "type": "object",
    "maxProperties": _DEFAULTS.max_metadata_keys,
    "propertyNames": {"minLength": 1, "maxLength": _DEFAULTS.max_metadata_key_chars},
    "properties": {
        "tenant": _label("the tenant the request counts as (budgets, logs)"),
        "task": _label("a task label (a feature of the context)"),
    },
    "additionalProperties": {
        "anyOf": [
            {"type": "string", "maxLength": _DEFAULTS.max_metadata_value_chars},
            {"type": "number"},
            {"type": "boolean"},
            {"type": "null"},
        ]
    },
}

_TOOL: JSON = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"type": "string"},
        "function": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "description": {"type": "string"},
                "parameters": {"type": "object"},
            },
        },
    },
}

CHAT: JSON = {
    "type": "object",
    "required": ["messages"],
    "properties": {
        "model": _label('"auto", a route or an arm (default "auto")'),
        "messages": {
            "type": "array",
            "minItems": 1,
            "maxItems": _DEFAULTS.max_messages,
            "items": _MESSAGE,
        },
        "max_tokens": _tokens("most tokens to generate"),
        "max_completion_tokens": _tokens("most tokens to generate"),
        "n": {"type": "integer", "minimum": 1, "maximum": MAX_N},
        "stop": {
            "anyOf": [
                {"type": "string", "minLength": 1},
                {
                    "type": "array",
                    "maxItems": MAX_STOP,
                    "items": {"type": "string", "minLength": 1},
                },
            ]
        },
        "stream": {"type": "boolean"},
        "stream_options": {
            "type": "object",
            "properties": {"include_usage": {"type": "boolean"}},
            "description": "only with stream: true",
        },
        "temperature": {"type": "number"},
        "top_p": {"type": "number"},
        "tools": {"type": "array", "items": _TOOL},
        "tool_choice": {
            "anyOf": [
                {"type": "string", "enum": list(TOOL_CHOICES)},
                {
                    "type": "object",
                    "required": ["type"],
                    "properties": {
                        "type": {"type": "string"},
                        "function": {
                            "type": "object",
                            "properties": {"name": {"type": "string"}},
                        },
                    },
                },
            ]
        },
        "response_format": {
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"type": "string", "enum": list(RESPONSE_FORMATS)}},
        },
        "task": _label("a task label (a feature of the context)"),
        "user": _label("the end user, as OpenAI's API takes it"),
        "metadata": _METADATA,
    },
    "description": "OpenAI's chat completion request; fields not listed here travel to the"
    " backend untouched",
}

FEEDBACK: JSON = {
    "type": "object",
    "required": ["request_id"],
    "properties": {
        "request_id": {
            "type": "string",
            "description": "the answer's x-banditctl-request-id (a UUID) or its id"
            " (chatcmpl-<hex>)",
        },
        "feedback_token": {
            "type": "string",
            "maxLength": MAX_TOKEN_CHARS,
            "description": "the answer's signed token (x-banditctl-feedback-token); or show"
            " an API key with the feedback scope",
        },
        "quality": {"type": "number", "minimum": 0, "maximum": 1},
        "rating": {
            "anyOf": [
                {"type": "string", "enum": ["up", "down", "thumbs_up", "thumbs_down"]},
                {"type": "integer", "minimum": 1, "maximum": 5},
            ],
            "description": "instead of quality: thumbs or 1-5 stars",
        },
        "comment": {"type": "string", "maxLength": _DEFAULTS.max_comment_chars},
        "source": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_SOURCE_LEN,
            "description": 'who rated (default "user"; printable characters)',
        },
    },
}

FEEDBACK_BATCH: JSON = {
    "type": "object",
    "required": ["items"],
    "properties": {
        "items": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_FEEDBACK_BATCH,
            "items": FEEDBACK,
        }
    },
}

CANDIDATE: JSON = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "learner": {
            "anyOf": [
                {"type": "string", "description": 'a learner spec, e.g. "linucb:alpha=0.1"'},
                {"type": "object", "description": "a learner config (its kind and fields)"},
            ]
        },
        "objective": {
            "type": "object",
            "required": ["weights"],
            "properties": {
                "weights": {
                    "type": "object",
                    "minProperties": 1,
                    "propertyNames": {"enum": list(REWARD_COMPONENTS)},
                    "additionalProperties": {"type": "number"},
                }
            },
        },
        "prior_weight": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "description": "start from the live learner's data, each event counted as this "
            "much of one (linear learners with the live one's context view)",
        },
    },
    "description": "a learner, objective weights or both",
}

PROMOTE: JSON = {
    "type": "object",
    "properties": {
        "force": {"type": "boolean", "description": "promote even where the gate refuses"},
        "reason": {"type": "string"},
    },
}


CHAT_EXAMPLE: JSON = {
    "model": "auto",
    "messages": [{"role": "user", "content": "Write a haiku about routers."}],
    "max_tokens": 64,
    "metadata": {"tenant": "team-a"},
}
FEEDBACK_EXAMPLE: JSON = {
    "request_id": "0b8e7f3c-5a1d-4c6e-9f2a-3d4b5c6d7e8f",
    "feedback_token": "v2.default.0b8e7f3c-5a1d-4c6e-9f2a-3d4b5c6d7e8f.1767225600.sig",
    "rating": "up",
    "comment": "short and right",
    "source": "user",
}


def body(schema: JSON, example: JSON, *, required: bool = True) -> JSON:
    """``openapi_extra`` for a route that reads a JSON body of ``schema``."""
    content = {"schema": schema, "example": example}
    return {"requestBody": {"required": required, "content": {"application/json": content}}}


REQUEST_ID_HEADER: JSON = {
    "name": "x-request-id",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "maxLength": _DEFAULTS.max_client_request_id_chars},
    "description": "the client's id, kept for correlation and echoed back (printable ASCII)",
}


CHAT_BODY = {**body(CHAT, CHAT_EXAMPLE), "parameters": [REQUEST_ID_HEADER]}
EXPLAIN_BODY = body(CHAT, CHAT_EXAMPLE)
FEEDBACK_BODY = body(FEEDBACK, FEEDBACK_EXAMPLE)
FEEDBACK_BATCH_BODY = body(FEEDBACK_BATCH, {"items": [FEEDBACK_EXAMPLE]})
CANDIDATE_BODY = body(
    CANDIDATE,
    {
        "name": "linucb-wider",
        "learner": "linucb:alpha=0.5",
        "objective": {"weights": {"quality": 1.0, "cost_usd": -20.0}},
    },
)
PROMOTE_BODY = body(PROMOTE, {"force": False}, required=False)
