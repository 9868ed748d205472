"""The hashed featurizer: fixed layout, deterministic across processes, fast."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

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
