"""The hashed featurizer: fixed layout, deterministic across processes, fast."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learners.featurize import META_SLICE, TASK_SLICE, TEXT_START, Featurizer

REQ = {
    "model": "auto",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {
            "role": "user",
            "content": "Context paragraph.\n\nWrite a python function that merges two sorted "
            "lists and returns the result. Keep it short, with tests?",
        },
    ],
    "metadata": {"route": "support", "tenant": "acme"},
}


def test_shape_layout_and_signals():
    f = Featurizer(dim=64, tasks=("mbpp", "arc"))
    x = f.featurize({**REQ, "task": "arc"})
    assert x.shape == (64,) and x.dtype == np.float64
    assert x[0] == 1.0
    assert x[TASK_SLICE].tolist() == [0, 1, 0, 0, 0, 0, 0, 0]
    assert np.count_nonzero(x[META_SLICE]) >= 1
    assert np.linalg.norm(x[TEXT_START:]) == pytest.approx(f.text_scale)
    guessed = f.featurize(REQ)  # no task given: a keyword guess (code)
    assert guessed[TASK_SLICE].sum() == 1.0 and guessed[TASK_SLICE][:2].sum() == 0
    bare = f.featurize({"messages": REQ["messages"]})
    assert not np.any(bare[META_SLICE])
    assert np.array_equal(bare[TEXT_START:], guessed[TEXT_START:])


def test_words_change_the_vector_and_empty_request_is_safe():
    f = Featurizer()
    a = f.featurize({"messages": [{"role": "user", "content": "sort a list"}]})
    b = f.featurize({"messages": [{"role": "user", "content": "capital of France"}]})
    assert not np.array_equal(a, b)
    empty = f.featurize({"messages": []})
    assert empty[0] == 1.0 and np.all(np.isfinite(empty))
    parts = f.featurize(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "sort a list"}]}]}
    )
    assert np.array_equal(parts, a)


def test_deterministic_across_processes():
    code = (
        "import json,sys; from learners.featurize import Featurizer;"
        "print(json.dumps(Featurizer(dim=64).featurize(json.loads(sys.argv[1])).tolist()))"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", code, json.dumps(REQ)],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": str(seed), "PATH": ""},
            cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]),
        ).stdout
        for seed in (1, 2)
    ]
    assert runs[0] == runs[1]
    assert json.loads(runs[0]) == Featurizer(dim=64).featurize(REQ).tolist()


def test_config_is_validated():
    with pytest.raises(ValueError):
        Featurizer(dim=4)
    with pytest.raises(ValueError):
        Featurizer(tasks=("a", "a"))


def _reference(f: Featurizer, text: str, n_messages: int) -> tuple[str, list[float], np.ndarray]:
    """The task guess, the stats block and the text block as the module defines them,
    computed the plain way (every pattern run, numbers added into a float array)."""
    from learners import featurize as fz

    guess = next(
        (n for n, p in (("code", fz._CODE), ("math", fz._MATH), ("multiple_choice", fz._CHOICE))
         if p.search(text)),
        "chat",
    )  # fmt: skip
    n_words = text.count(" ") + 1 if text else 0
    stats = [
        np.log1p(len(text)) / 10.0,
        np.log1p(n_words) / 8.0,
        np.log1p(n_messages) / 3.0,
        min(len(fz._CHOICE.findall(text)), 10) / 10.0,
        1.0 if fz._CODE.search(text) else 0.0,
        min(sum(c.isdigit() for c in text[-2000:]) / 50.0, 1.0),
        1.0 if text.rstrip().endswith("?") else 0.0,
    ]
    parts = [p for p in text.split("\n\n") if p.strip()]
    words = fz._WORD.findall((parts[-1] if parts else "").lower())
    tokens = words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
    block = np.zeros(f.n_text)
    for tok in tokens:
        h = fz.zlib.crc32(tok.encode(), f.seed)
        block[(h >> 1) % f.n_text] += 1.0 if h & 1 else -1.0
    norm = float(np.sqrt(block @ block))
    return guess, stats, block * (f.text_scale / norm) if norm > 0 else block


PIECES = [*"abcdefs ;`\n\t?=+*-/^0123456789ABC).:\u00b2\u0663", "def ", "class ", "python",
          "code", "function", "solve", "equation", "calculate", "```"]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=40).map("".join))
def test_fast_paths_compute_the_documented_vector(text: str) -> None:
    """The featurizer skips a pattern that cannot match and counts in integers: the
    vector is the one the plain computation gives, to the bit."""
    from learners.featurize import STATS_SLICE, _guess_task

    f = Featurizer(dim=48)
    guess, stats, block = _reference(f, text, 2)
    x = f.featurize(
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": text}]}
    )
    assert _guess_task(text) == guess
    assert x[STATS_SLICE].tolist() == pytest.approx(stats, abs=0, rel=1e-15)
    assert np.array_equal(x[TEXT_START:], block)
