"""Plain records that cross the repositories' boundary (no SQL here)."""

from __future__ import annotations

import math
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from feedback.errors import InvalidInput

MAX_SOURCE_LEN = 64


class _RandomBlocks:
    """Bytes from ``os.urandom``, read in blocks of 4 KiB: each ``os.urandom`` call lets
    the GIL go, and on a gateway replica another thread then holds it for up to the
    interpreter's switch interval (5 ms) before the request goes on. A forked child
    starts with an empty block of its own."""

    BLOCK = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._block = b""
        self._at = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._block, self._at = b"", 0

    def take(self, n: int) -> bytes:
        with self._lock:
            if self._at + n > len(self._block):
                self._block, self._at = os.urandom(max(self.BLOCK, n)), 0
            at = self._at
            self._at = at + n
            return self._block[at : at + n]


_random = _RandomBlocks()


def new_request_id() -> uuid.UUID:
    """A new decision's id: a UUIDv7 (RFC 9562), 48 bits of Unix time in milliseconds
    and then 74 random bits (``os.urandom``). Ids made later sort later, so the log's
    primary key takes each new id at its right edge, as the time indexes do, instead of
    on a random page of an index larger than memory (each such page read, dirtied and,
    the first time after a checkpoint, written whole to the WAL). Unguessable still;
    a client proves a decision is its own with the signed feedback token, not the id.
    The random bits come from the OS in blocks (:class:`_RandomBlocks`)."""
    rand = int.from_bytes(_random.take(10), "big")  # 80 bits: 12 for rand_a, 62 for rand_b
    ms = time.time_ns() // 1_000_000 & (1 << 48) - 1
    value = ms << 80 | 0x7 << 76 | (rand >> 62 & 0xFFF) << 64 | 0b10 << 62 | rand & (1 << 62) - 1
    return uuid.UUID(int=value)


@dataclass(frozen=True)
class ArmRecord:
    id: str
    model: str
    backend: str
    adapter: str | None = None
    active: bool = True
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DecisionRecord:
    request_id: uuid.UUID
    created_at: datetime
    route: str
    arm_id: str
    context: np.ndarray  # float32, shape (d,)
    propensity: float
    policy_version: int
    learner: str
    tenant: str | None = None
    task: str | None = None
    key_id: str | None = None  # the API key's name, never the key
    attempt: int = 1  # a fallback's attempt number (2, 3, ...)
    fallback_of: uuid.UUID | None = None  # a fallback's first attempt: the request's id
    client_request_id: str | None = None  # the client's x-request-id (correlation only)


@dataclass(frozen=True)
class OutcomeRecord:
    request_id: uuid.UUID
    created_at: datetime
    status: str  # ok | error | timeout
    latency_ms: float
    ttft_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    energy_j: float = 0.0
    cost_usd: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class FeedbackInput:
    request_id: uuid.UUID
    quality: float
    source: str = "user"
    raw_rating: str | None = None
    comment: str | None = None

    @classmethod
    def validated(
        cls,
        request_id: object,
        quality: object,
        source: object = "user",
        raw_rating: str | None = None,
        comment: str | None = None,
    ) -> FeedbackInput:
        return cls(
            request_id=parse_request_id(request_id),
            quality=_parse_quality(quality),
            source=_parse_source(source),
            raw_rating=raw_rating,
            comment=comment,
        )


@dataclass(frozen=True)
class FeedbackResult:
    request_id: uuid.UUID
    source: str
    duplicate: bool
    feedback_id: int | None


@dataclass(frozen=True)
class RewardRow:
    """A claimed reward event: decision + outcome + resolved quality."""

    credit_seq: int
    request_id: uuid.UUID
    created_at: datetime
    arm_id: str
    context: np.ndarray
    propensity: float
    policy_version: int
    credit_kind: str
    quality: float | None
    latency_ms: float
    energy_j: float
    cost_usd: float
    # a feedback credit: seconds from its rating's row to the claim (the database's clock)
    feedback_wait_s: float | None = None


COMPLETION_ID_PREFIX = "chatcmpl-"  # the gateway's completion id: this prefix + the id's hex


def clean_text(value: str) -> str:
    """``value`` as PostgreSQL can store it: NUL dropped, unpaired surrogates replaced
    (for text the server makes up from what it got, such as an upstream's error)."""
    return value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def parse_request_id(value: object) -> uuid.UUID:
    """A request id: the UUID (``x-request-id``, ``banditctl.request_id``) or the
    completion's own id (``chatcmpl-<hex>``, the ``id`` an OpenAI client reads)."""
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str):
        raise InvalidInput("request_id", "must be a UUID string")
    try:
        return uuid.UUID(value.removeprefix(COMPLETION_ID_PREFIX))
    except ValueError:
        raise InvalidInput("request_id", f"malformed request id {value[:64]!r}") from None


def _parse_quality(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput("quality", "must be a number in [0, 1]")
    q = float(value)
    if not math.isfinite(q) or not 0.0 <= q <= 1.0:
        raise InvalidInput("quality", f"{value!r} is outside [0, 1]")
    return q


def _parse_source(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("source", "must be a non-empty string")
    if len(value) > MAX_SOURCE_LEN:
        raise InvalidInput("source", f"longer than {MAX_SOURCE_LEN} characters")
    return value.strip()
