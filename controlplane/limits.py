"""Per-key rate limits: requests and tokens per minute, as token buckets in this replica.

Each API key with ``requests_per_minute`` or ``tokens_per_minute`` gets a bucket per
limit, holding up to one minute's worth and refilled continuously. A request needs one
request and its estimated prompt tokens (:func:`estimate_prompt_tokens`, taken before the
call); once the answer is in, the difference to its real usage (prompt + completion
tokens) is settled, so a bucket may go below zero and later requests wait for it. A
request that would need more tokens than a full bucket holds waits for a full bucket.

Buckets live in the process (``limits_scope: replica``): N gateway replicas let a key
through N times its limit. The clock is passed in (monotonic seconds).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from controlplane.config import ApiKey

CHARS_PER_TOKEN = 4.0  # the estimate the replay backend counts with
TOKENS_PER_MESSAGE = 4  # role and separators


class LimitExceeded(Exception):
    """A request refused for a limit or a budget: HTTP 429 with ``Retry-After``."""

    def __init__(self, kind: str, code: str, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.kind = kind  # the error's type: rate_limit_exceeded | budget_exceeded
        self.code = code  # the limit's or the budget's name
        self.message = message
        self.retry_after_s = retry_after_s

    @property
    def retry_after(self) -> int:
        """Whole seconds for the ``Retry-After`` header (at least 1)."""
        return max(1, math.ceil(self.retry_after_s))


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """Prompt tokens of a chat body before it is served: characters / 4 plus a few per
    message (the replay backend's count; a real tokenizer differs by some percent)."""
    messages = body.get("messages") or []
    chars = sum(len(_text(m.get("content"))) for m in messages if isinstance(m, Mapping))
    return max(1, int(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(messages))


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return " ".join(
            str(p.get("text", "")) for p in content if isinstance(p, Mapping) and "text" in p
        )
    return ""


class TokenBucket:
    """``capacity`` units, refilled at ``per_s`` a second; the level may go negative."""

    def __init__(self, capacity: float, per_s: float, now: float) -> None:
        self.capacity = capacity
        self.per_s = per_s
        self.level = capacity
        self.at = now

    def _fill(self, now: float) -> None:
        if now > self.at:
            self.level = min(self.capacity, self.level + (now - self.at) * self.per_s)
            self.at = now

    def wait_s(self, need: float, now: float) -> float:
        """Seconds until ``need`` units are there (capped at a full bucket); 0: now."""
        self._fill(now)
        short = min(need, self.capacity) - self.level
        return max(0.0, short / self.per_s)

    def take(self, units: float, now: float) -> None:
        """Take ``units`` (a negative amount gives back, up to a full bucket)."""
        self._fill(now)
        self.level = min(self.capacity, self.level - units)

    def available(self, now: float) -> float:
        self._fill(now)
        return self.level


class RateLimiter:
    """The buckets of every limited key, by key id."""

    def __init__(self, keys: Sequence[ApiKey], clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        now = clock()
        self.requests: dict[str, TokenBucket] = {}
        self.tokens: dict[str, TokenBucket] = {}
        for k in keys:
            if k.requests_per_minute is not None:
                rpm = float(k.requests_per_minute)
                self.requests[k.name] = TokenBucket(rpm, rpm / 60.0, now)
            if k.tokens_per_minute is not None:
                tpm = float(k.tokens_per_minute)
                self.tokens[k.name] = TokenBucket(tpm, tpm / 60.0, now)

    def check(self, key: ApiKey, prompt_tokens: int) -> None:
        """Raise :class:`LimitExceeded` unless the key has room for this request now."""
        now = self.clock()
        req = self.requests.get(key.name)
        if req is not None:
            wait = req.wait_s(1.0, now)
            if wait > 0:
                raise _refused(key, "requests_per_minute", key.requests_per_minute, wait)
        tok = self.tokens.get(key.name)
        if tok is not None:
            wait = tok.wait_s(float(prompt_tokens), now)
            if wait > 0:
                raise _refused(key, "tokens_per_minute", key.tokens_per_minute, wait)

    def take(self, key: ApiKey, prompt_tokens: int) -> None:
        """Count an admitted request and its estimated prompt tokens."""
        now = self.clock()
        if key.name in self.requests:
            self.requests[key.name].take(1.0, now)
        if key.name in self.tokens:
            self.tokens[key.name].take(float(prompt_tokens), now)

    def settle(self, key: ApiKey, estimated: int, used: int) -> None:
        """Replace a request's estimate by the tokens it really used."""
        if key.name in self.tokens:
            self.tokens[key.name].take(float(used - estimated), self.clock())

    def remaining(self, key: ApiKey) -> dict[str, float]:
        """What each of the key's limits has left now (``requests``, ``tokens``)."""
        now = self.clock()
        out = {}
        if key.name in self.requests:
            out["requests"] = self.requests[key.name].available(now)
        if key.name in self.tokens:
            out["tokens"] = self.tokens[key.name].available(now)
        return out


def _refused(key: ApiKey, limit: str, value: int | None, wait_s: float) -> LimitExceeded:
    seconds = max(1, math.ceil(wait_s))
    return LimitExceeded(
        "rate_limit_exceeded",
        limit,
        f"API key {key.name!r} is over its {limit} limit ({value} per minute in this "
        f"gateway replica); retry in {seconds} s",
        wait_s,
    )
