"""Deterministic context vectors from OpenAI chat completion requests.

The layout of a vector of dimension ``dim`` is fixed and documented, so that
learners (GreenServ's task-only baseline) can read named slices of it:

========================  ====================================================
slice                     content
========================  ====================================================
``[0]``                   intercept (1.0)
``task_slice``            one-hot task or domain (``task_slots`` positions,
                          8 by default): ``request["task"]`` or
                          ``metadata.task`` if present, else a keyword guess
``stats_slice``           prompt statistics: log length, word count, turn
                          count, choice options, code and digit signals
``meta_slice``            signed hashes of request metadata (route, tenant)
``[text_start:dim]``      signed hashed words and bigrams of the last user
                          turn (its last paragraph by default), L2-normalised
========================  ====================================================

The slices are properties of a :class:`Featurizer`, derived from its
``task_slots``; read them from the instance that made the vectors.
Each name in ``tasks`` has its own task slot; any other task name is placed
by hash in the slots left over (all of them when ``tasks`` fills them), where
it may share one with another name: the featurizer logs that once per name
and counts it (:meth:`Featurizer.task_sharing`).

Hashing uses :func:`zlib.crc32`, never Python's salted ``hash()``, so a
request maps to the same vector in every process.
"""

from __future__ import annotations

import logging
import math
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from learners._kernels import CRC_TABLE, hash_words

N_TASK_SLOTS = 8  # the default task_slots
N_STATS = 7
N_META = 4
MIN_TEXT = 8  # the fewest positions of the text block
_TAIL_CHARS_PER_WORD = 16  # a long text's tail searched for its last words first
MAX_SHARING_NAMES = 10_000  # task names placed by hash that are remembered one by one

log = logging.getLogger(__name__)

# a word of the text block, in the lowered text (what hash_words reads from its bytes; the
# tests' plain computation of the block uses this pattern)
_WORD = re.compile(r"[a-z0-9_]+")
_CHOICE = re.compile(r"(?m)^\s*[A-H][).:]\s")
# a code signal: ```, def, function, python, code, class as words, or a line ending in ";"
# (r"```|\bdef |\bfunction\b|\bpython\b|\bcode\b|\bclass |;\s*$"), each word written
# as its first letter and then the boundary before it, looked behind: every alternative
# starts with a literal, so the regex engine skips to the characters that can start a match
# (nine times faster over a long prompt; the same matches)
_CODE = re.compile(
    r"```|d(?<=\bd)ef |f(?<=\bf)unction\b|p(?<=\bp)ython\b|c(?<=\bc)ode\b|c(?<=\bc)lass |;\s*$",
    re.M,
)
_DIGIT = re.compile(r"\d")
_MATH = re.compile(r"\d+\s*[-+*/^=]\s*\d+|\bsolve\b|\bequation\b|\bcalculate\b")


class TaskSharing:
    """Which task names the featurizer placed by hash, and which share a slot.

    Accounting, not configuration: two featurizers with the same fields are equal
    whatever traffic each has seen.
    """

    def __init__(self) -> None:
        self.slot_of: dict[str, int] = {}  # name placed by hash -> its slot
        self.holders: dict[int, list[str]] = {}  # slot -> names in it (listed first)
        self.shared_names: set[str] = set()
        self.shared_requests = 0
        self.untracked_requests = 0  # with a name past MAX_SHARING_NAMES, not remembered

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskSharing)

    __hash__ = None  # type: ignore[assignment]


class Featurizer(BaseModel):
    """Maps an OpenAI chat completion body to a vector of ``dim`` floats.

    ``task_slots`` positions hold the task one-hot. ``tasks`` lists known task
    names, each given its own task slot in order; other task names share the
    remaining slots by hash (see the module's notes).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["hashed"] = "hashed"
    dim: int = Field(default=64, ge=1, le=1 << 20)
    task_slots: int = Field(
        default=N_TASK_SLOTS,
        ge=1,
        le=1 << 16,
        description="positions of the task one-hot; at least as many as tasks",
    )
    tasks: tuple[str, ...] = ()
    bigrams: bool = True
    segment: Literal["last_paragraph", "full"] = "last_paragraph"
    text_scale: float = Field(default=0.1, gt=0)  # tuned on routerbench_zs *_train
    seed: int = 0
    max_text_words: int | None = Field(
        default=2048,
        ge=1,
        description="the text block hashes at most the last this many words of its segment "
        "(and their bigrams): a long prompt costs a bounded time on the request path; "
        "None hashes every word",
    )

    _sharing: TaskSharing = PrivateAttr(default_factory=TaskSharing)

    @model_validator(mode="after")
    def _check_layout(self) -> Featurizer:
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError("tasks must be unique")
        if len(self.tasks) > self.task_slots:
            raise ValueError(
                f"tasks lists {len(self.tasks)} names but task_slots is {self.task_slots}: "
                f"set task_slots to at least {len(self.tasks)}"
            )
        if self.dim < self.min_dim:
            raise ValueError(
                f"dim {self.dim} is too small for task_slots {self.task_slots}: the layout "
                f"has {self.text_start} positions before the text block and at least "
                f"{MIN_TEXT} in it, so dim must be at least {self.min_dim}"
            )
        return self

    @classmethod
    def for_tasks(cls, tasks: Iterable[str], **fields: Any) -> Featurizer:
        """A featurizer that gives each of ``tasks`` (sorted, unique, '' dropped) its own
        slot: ``task_slots`` is their number, at least the default."""
        names = tuple(sorted(set(tasks) - {""}))
        return cls(tasks=names, task_slots=max(N_TASK_SLOTS, len(names)), **fields)

    # -- layout ---------------------------------------------------------

    @property
    def task_slice(self) -> slice:
        return slice(1, 1 + self.task_slots)

    @property
    def stats_slice(self) -> slice:
        start = 1 + self.task_slots
        return slice(start, start + N_STATS)

    @property
    def meta_slice(self) -> slice:
        start = 1 + self.task_slots + N_STATS
        return slice(start, start + N_META)

    @property
    def text_start(self) -> int:
        return 1 + self.task_slots + N_STATS + N_META

    @property
    def min_dim(self) -> int:
        return self.text_start + MIN_TEXT

    @property
    def n_text(self) -> int:
        return self.dim - self.text_start

    @property
    def task_view(self) -> tuple[int, ...]:
        """Positions of the intercept and the task one-hot (GreenServ's view)."""
        return (0, *range(1, 1 + self.task_slots))

    # -- public ---------------------------------------------------------

    def featurize(self, request: Mapping[str, Any]) -> np.ndarray:
        x = np.zeros(self.dim, dtype=np.float64)
        x[0] = 1.0
        messages = request.get("messages") or []
        text = last_user_text(messages)
        meta = request.get("metadata") or {}
        code = _has_code(text)
        choices = len(_CHOICE.findall(text))  # one scan, for the guess and the statistics
        task = request.get("task") or meta.get("task") or _guess_task(text, code, choices)
        x[1 + self._task_slot(str(task))] = 1.0
        self._stats(x, text, messages, code, choices)
        for key in ("route", "tenant"):
            value = request.get(key) or meta.get(key)
            if value:
                idx, sign = self._hash(f"{key}={value}", N_META)
                x[self.meta_slice.start + idx] += sign
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
        sharing = self._sharing
        slot = sharing.slot_of.get(task)
        if slot is None:
            slot = self._hashed_slot(task)
            if not self._place(task, slot):  # too many names to remember: counted apart
                sharing.untracked_requests += 1
                return slot
        if len(sharing.holders[slot]) > 1:
            sharing.shared_requests += 1
        return slot

    def _hashed_slot(self, task: str) -> int:
        free = self.task_slots - len(self.tasks)
        if free == 0:
            return self._hash(task, self.task_slots)[0]
        return len(self.tasks) + self._hash(task, free)[0]

    def _place(self, task: str, slot: int) -> bool:
        """Remember where a name not in ``tasks`` went (False: too many names to remember);
        warn once when it shares the slot."""
        sharing = self._sharing
        if len(sharing.slot_of) >= MAX_SHARING_NAMES:
            if sharing.untracked_requests == 0:
                log.warning(
                    "more than %d task names outside the featurizer's tasks: the others are "
                    "no longer tracked one by one (task_slots %d)",
                    MAX_SHARING_NAMES,
                    self.task_slots,
                )
            return False
        sharing.slot_of[task] = slot
        holders = sharing.holders.setdefault(
            slot, [self.tasks[slot]] if slot < len(self.tasks) else []
        )
        holders.append(task)
        if len(holders) > 1:
            sharing.shared_names.update(holders)
            log.warning(
                "task %r is not in the featurizer's tasks and shares task slot %d with %s: "
                "list it in featurizer.tasks and raise featurizer.task_slots (now %d)",
                task,
                slot,
                ", ".join(repr(h) for h in holders[:-1]),
                self.task_slots,
            )
        return True

    def task_sharing(self) -> dict[str, Any]:
        """What this featurizer has seen of task names outside ``tasks``: how many were
        placed by hash, which slots hold more than one name (``shared_slots``: slot ->
        names, listed task first), how many requests carried a name in such a slot, and
        how many carried a name past the ``MAX_SHARING_NAMES`` remembered."""
        sharing = self._sharing
        return {
            "task_slots": self.task_slots,
            "hashed_names": len(sharing.slot_of),
            "shared_names": len(sharing.shared_names),
            "shared_requests": sharing.shared_requests,
            "untracked_requests": sharing.untracked_requests,
            "shared_slots": {
                slot: list(names)
                for slot, names in sorted(sharing.holders.items())
                if len(names) > 1
            },
        }

    def __setstate__(self, state: dict[Any, Any]) -> None:
        """Pickles made before a field existed (``task_slots``, ``max_text_words``) load
        with its default."""
        fields = state.get("__dict__", {})
        model_fields = type(self).model_fields
        if any(k not in fields for k in model_fields):  # a field added since: its default
            state["__dict__"] = {
                k: fields[k] if k in fields else info.get_default(call_default_factory=True)
                for k, info in model_fields.items()
            }
        if not state.get("__pydantic_private__"):
            state["__pydantic_private__"] = {"_sharing": TaskSharing()}
        super().__setstate__(state)

    def _stats(
        self,
        x: np.ndarray,
        text: str,
        messages: Sequence[Mapping[str, Any]],
        code: bool,
        choices: int,
    ) -> None:
        """``code``: whether ``text`` has a code signal; ``choices``: how many
        multiple-choice options it has (``_CHOICE`` matches)."""
        n_words = text.count(" ") + 1 if text else 0
        x[self.stats_slice] = (
            math.log1p(len(text)) / 10.0,
            math.log1p(n_words) / 8.0,
            math.log1p(len(messages)) / 3.0,
            min(choices, 10) / 10.0,
            1.0 if code else 0.0,
            min(sum(map(str.isdigit, text[-2000:])) / 50.0, 1.0),
            1.0 if text.rstrip().endswith("?") else 0.0,
        )

    def _text(self, x: np.ndarray, text: str) -> None:
        if self.segment == "last_paragraph":
            parts = [p for p in text.split("\n\n") if p.strip()]
            text = parts[-1] if parts else ""
        cap = self.max_text_words
        if not text:
            return
        # the words, bigrams and their hashes in one compiled pass (hash_words)
        args = (CRC_TABLE, self.seed & 0xFFFFFFFF, self.n_text, self.bigrams)
        out = x[self.text_start :]
        if cap is not None and len(text) > _TAIL_CHARS_PER_WORD * cap:
            # the last words of a long text from its tail alone: the same words when the
            # tail holds more than ``cap`` (only its first can be cut short; lower() maps
            # a character alike wherever the text is cut); else the whole text, below
            tail = _utf8(text[-_TAIL_CHARS_PER_WORD * cap :])
            block = np.zeros(self.n_text)
            if hash_words(tail, *args, cap, self.text_scale, block) > cap:
                out[:] = block
                return
        hash_words(_utf8(text), *args, -1 if cap is None else cap, self.text_scale, out)


def _utf8(text: str) -> np.ndarray:
    """The UTF-8 bytes of ``text`` lowered, for :func:`hash_words` (a lone surrogate, which
    JSON can carry, as its three bytes: not a word's)."""
    return np.frombuffer(text.lower().encode("utf-8", "surrogatepass"), dtype=np.uint8)


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
    # a digit of _MATH's ``\d`` (a Unicode decimal digit): a character that str.isdigit
    # takes and ``\d`` does not (a superscript) cannot start a match either
    maybe = any(s in text for s in _MATH_WORDS) or _has_digit(text)
    return maybe and _MATH.search(text) is not None


def _has_digit(text: str) -> bool:
    """Whether ``text`` holds a digit of ``\\d`` (a Unicode decimal digit): in ASCII text
    those are 0-9, each found by a substring search, faster than the regex engine's scan."""
    if text.isascii():
        return any(d in text for d in "0123456789")
    return _DIGIT.search(text) is not None


def _guess_task(text: str, code: bool | None = None, choices: int | None = None) -> str:
    """``code``: :func:`_has_code` of ``text``, and ``choices``, the number of ``_CHOICE``
    matches in it, when the caller knows them already."""
    if _has_code(text) if code is None else code:
        return "code"
    if _has_math(text):
        return "math"
    if _CHOICE.search(text) if choices is None else choices > 0:
        return "multiple_choice"
    return "chat"
