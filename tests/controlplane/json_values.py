"""A JSON value with every number's type and bits made visible, for comparing two parses
or a write and its read-back: 1 and 1.0, 0.0 and -0.0 compare unequal."""

from __future__ import annotations

from typing import Any


def typed(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        return ("float", value.hex())
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, list):
        return [typed(v) for v in value]
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    return value
