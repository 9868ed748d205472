"""Deterministic context vectors from OpenAI chat completion requests.

The layout of a vector of dimension ``dim`` is fixed and documented, so that
learners (GreenServ's task-only baseline) can read named slices of it:

========================  ====================================================
slice                     content
========================  ====================================================
``[0]``                   intercept (1.0)
``TASK_SLICE``            one-hot task or domain: ``request["task"]`` or
                          ``metadata.task`` if present, else a keyword guess
``STATS_SLICE``           prompt statistics: log length, word count, turn
                          count, choice options, code and digit signals
``META_SLICE``            signed hashes of request metadata (route, tenant)
``[TEXT_START:dim]``      signed hashed words and bigrams of the last user
                          turn (its last paragraph by default), L2-normalised
========================  ====================================================

Hashing uses :func:`zlib.crc32`, never Python's salted ``hash()``, so a
request maps to the same vector in every process.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

N_TASK_SLOTS = 8
N_STATS = 7
N_META = 4
TASK_SLICE = slice(1, 1 + N_TASK_SLOTS)
STATS_SLICE = slice(TASK_SLICE.stop, TASK_SLICE.stop + N_STATS)
META_SLICE = slice(STATS_SLICE.stop, STATS_SLICE.stop + N_META)
TEXT_START = META_SLICE.stop
MIN_DIM = TEXT_START + 8

_WORD = re.compile(r"[a-z0-9_]+")
_CHOICE = re.compile(r"(?m)^\s*[A-H][).:]\s")
_CODE = re.compile(r"```|\bdef |\bfunction\b|\bpython\b|\bcode\b|\bclass |;\s*$", re.M)
_MATH = re.compile(r"\d+\s*[-+*/^=]\s*\d+|\bsolve\b|\bequation\b|\bcalculate\b")


class Featurizer(BaseModel):
    """Maps an OpenAI chat completion body to a vector of ``dim`` floats.

    ``tasks`` lists known task names, each given its own task slot in order;
    other task names share the remaining slots by hash.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["hashed"] = "hashed"
    dim: int = Field(default=64, ge=MIN_DIM, le=1 << 20)
    tasks: tuple[str, ...] = Field(default=(), max_length=N_TASK_SLOTS)
    bigrams: bool = True
    segment: Literal["last_paragraph", "full"] = "last_paragraph"
    text_scale: float = Field(default=0.1, gt=0)  # tuned on routerbench_zs *_train
    seed: int = 0

    @model_validator(mode="after")
    def _unique_tasks(self) -> Featurizer:
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError("tasks must be unique")
        return self

    @property
    def n_text(self) -> int:
        return self.dim - TEXT_START

    # -- public ---------------------------------------------------------

    def featurize(self, request: Mapping[str, Any]) -> np.ndarray:
        x = np.zeros(self.dim, dtype=np.float64)
        x[0] = 1.0
        messages = request.get("messages") or []
        text = last_user_text(messages)
        meta = request.get("metadata") or {}
        code = _has_code(text)
        task = request.get("task") or meta.get("task") or _guess_task(text, code)
        x[TASK_SLICE.start + self._task_slot(str(task))] = 1.0
        self._stats(x, text, messages, code)
        for key in ("route", "tenant"):
            value = request.get(key) or meta.get(key)
            if value:
                idx, sign = self._hash(f"{key}={value}", N_META)
                x[META_SLICE.start + idx] += sign
        self._text(x, text)
        return x

    def featurize_many(self, requests: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return (
            np.stack([self.featurize(r) for r in requests]) if requests else np.zeros((0, self.dim))
        )

    # -- internals ------------------------------------------------------

    def _hash(self, token: str, n: int) -> tuple[int, float]:
        h = zlib.crc32(token.encode(), self.seed)
        return (h >> 1) % n, 1.0 if h & 1 else -1.0

    def _task_slot(self, task: str) -> int:
        if task in self.tasks:
            return self.tasks.index(task)
        free = N_TASK_SLOTS - len(self.tasks)
        if free == 0:
            return self._hash(task, N_TASK_SLOTS)[0]
        return len(self.tasks) + self._hash(task, free)[0]

    def _stats(
        self,
        x: np.ndarray,
        text: str,
        messages: Sequence[Mapping[str, Any]],
        code: bool | None = None,
    ) -> None:
        """``code``: whether ``text`` has a code signal, when the caller knows already."""
        n_words = text.count(" ") + 1 if text else 0
        x[STATS_SLICE] = (
            math.log1p(len(text)) / 10.0,
            math.log1p(n_words) / 8.0,
            math.log1p(len(messages)) / 3.0,
            min(len(_CHOICE.findall(text)), 10) / 10.0,
            1.0 if (_has_code(text) if code is None else code) else 0.0,
            min(sum(map(str.isdigit, text[-2000:])) / 50.0, 1.0),
            1.0 if text.rstrip().endswith("?") else 0.0,
        )

    def _text(self, x: np.ndarray, text: str) -> None:
        if self.segment == "last_paragraph":
            parts = [p for p in text.split("\n\n") if p.strip()]
            text = parts[-1] if parts else ""
        words = _WORD.findall(text.lower())
        if not words:
            return
        tokens = (
            words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
            if self.bigrams
            else words
        )
        n = self.n_text
        seed = self.seed
        counts = [0] * n  # signed counts, summed as ints (exact, as the floats were)
        for tok in tokens:
            h = zlib.crc32(tok.encode(), seed)
            counts[(h >> 1) % n] += 1 if h & 1 else -1
        squares = sum(c * c for c in counts)  # exact, as the float dot product was
        if squares > 0:
            x[TEXT_START:] = counts
            x[TEXT_START:] *= self.text_scale / math.sqrt(squares)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "\n".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, Mapping) and p.get("type") == "text"
        )
    return ""


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The text of the last user message ('' when there is none)."""
    for m in reversed(messages):
        if m.get("role") == "user":
            return _content_text(m.get("content"))
    return ""


# the keyword guess when the request names no task (code, math, multiple choice, in that
# order) and what a match of _CODE / _MATH must contain: text with none of these cannot match, and
# is answered without running the (slower) pattern
_CODE_NEEDS = ("```", "def ", "function", "python", "code", "class ", ";")
_MATH_WORDS = ("solve", "equation", "calculate")


def _has_code(text: str) -> bool:
    return any(s in text for s in _CODE_NEEDS) and _CODE.search(text) is not None


def _has_math(text: str) -> bool:
    maybe = any(s in text for s in _MATH_WORDS) or any(map(str.isdigit, text))
    return maybe and _MATH.search(text) is not None


def _guess_task(text: str, code: bool | None = None) -> str:
    """``code``: :func:`_has_code` of ``text``, when the caller knows it already."""
    if _has_code(text) if code is None else code:
        return "code"
    if _has_math(text):
        return "math"
    if _CHOICE.search(text):
        return "multiple_choice"
    return "chat"
