"""The hashed featurizer: fixed layout, deterministic across processes, fast."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learners.featurize import Featurizer

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
    assert x[f.task_slice].tolist() == [0, 1, 0, 0, 0, 0, 0, 0]
    assert np.count_nonzero(x[f.meta_slice]) >= 1
    assert np.linalg.norm(x[f.text_start :]) == pytest.approx(f.text_scale)
    guessed = f.featurize(REQ)  # no task given: a keyword guess (code)
    assert guessed[f.task_slice].sum() == 1.0 and guessed[f.task_slice][:2].sum() == 0
    bare = f.featurize({"messages": REQ["messages"]})
    assert not np.any(bare[f.meta_slice])
    assert np.array_equal(bare[f.text_start :], guessed[f.text_start :])


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
    with pytest.raises(ValueError, match="dim 4 is too small for task_slots 8.*at least 28"):
        Featurizer(dim=4)
    with pytest.raises(ValueError, match="unique"):
        Featurizer(tasks=("a", "a"))
    names = tuple(f"t{i}" for i in range(9))
    with pytest.raises(ValueError, match="tasks lists 9 names but task_slots is 8"):
        Featurizer(tasks=names)
    assert Featurizer(tasks=names, task_slots=9).task_slots == 9
    with pytest.raises(ValueError, match="dim 40 is too small for task_slots 30.*at least 50"):
        Featurizer(dim=40, task_slots=30)
    with pytest.raises(ValueError, match="task_slots"):
        Featurizer(task_slots=0)


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


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from([*PIECES, "\u00e9", "_", "x;", " \n", "pythons", "classic"]),
                max_size=40).map("".join))  # fmt: skip
def test_the_code_signal_matches_its_plain_pattern(text: str) -> None:
    """The code pattern, rewritten so that the regex engine skips ahead, finds what the
    plain one finds."""
    import re

    from learners import featurize as fz

    plain = re.compile(r"```|\bdef |\bfunction\b|\bpython\b|\bcode\b|\bclass |;\s*$", re.M)
    assert [m.span() for m in fz._CODE.finditer(text)] == [m.span() for m in plain.finditer(text)]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=40).map("".join))
def test_fast_paths_compute_the_documented_vector(text: str) -> None:
    """The featurizer skips a pattern that cannot match and counts in integers: the
    vector is the one the plain computation gives, to the bit."""
    from learners.featurize import _guess_task

    f = Featurizer(dim=48)
    guess, stats, block = _reference(f, text, 2)
    x = f.featurize(
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": text}]}
    )
    assert _guess_task(text) == guess
    assert x[f.stats_slice].tolist() == pytest.approx(stats, abs=0, rel=1e-15)
    assert np.array_equal(x[f.text_start :], block)


# -- task slots -----------------------------------------------------------------------

# the layout the module fixed before task_slots existed: 8 task slots, 7 statistics,
# 4 metadata hashes, the text block after them, at least 8 positions in it
OLD_SLOTS, OLD_STATS, OLD_META = 8, 7, 4


def _old_layout_vector(dim: int, tasks: tuple[str, ...], request: dict) -> np.ndarray:
    """The vector as the fixed layout defined it, computed from its rules: the task's slot
    (a listed task's index, else a hash into the slots left over), the statistics, the
    metadata hashes and the hashed words, each at the old fixed offsets."""
    import math
    import zlib

    from learners import featurize as fz

    f = Featurizer(dim=dim, tasks=tasks)  # for the keyword guess only (_reference)
    task_start = 1
    stats_start = task_start + OLD_SLOTS
    meta_start = stats_start + OLD_STATS
    text_start = meta_start + OLD_META
    messages = request.get("messages") or []
    text = fz.last_user_text(messages)
    meta = request.get("metadata") or {}
    guess, _, _ = _reference(f, text, len(messages))
    n_words = text.count(" ") + 1 if text else 0
    stats = [  # as the module computes them (math.log1p: numpy's may differ in the last bit)
        math.log1p(len(text)) / 10.0,
        math.log1p(n_words) / 8.0,
        math.log1p(len(messages)) / 3.0,
        min(len(fz._CHOICE.findall(text)), 10) / 10.0,
        1.0 if fz._CODE.search(text) else 0.0,
        min(sum(c.isdigit() for c in text[-2000:]) / 50.0, 1.0),
        1.0 if text.rstrip().endswith("?") else 0.0,
    ]
    x = np.zeros(dim)
    x[0] = 1.0
    task = str(request.get("task") or meta.get("task") or guess)
    if task in tasks:
        slot = tasks.index(task)
    else:
        free = OLD_SLOTS - len(tasks)
        n = free or OLD_SLOTS
        slot = (0 if free == 0 else len(tasks)) + (zlib.crc32(task.encode(), 0) >> 1) % n
    x[task_start + slot] = 1.0
    x[stats_start:meta_start] = stats
    for key in ("route", "tenant"):
        value = request.get(key) or meta.get(key)
        if value:
            h = zlib.crc32(f"{key}={value}".encode(), 0)
            x[meta_start + (h >> 1) % OLD_META] += 1.0 if h & 1 else -1.0
    # the text block: hashed words and bigrams of the last paragraph, L2-normalised
    parts = [p for p in text.split("\n\n") if p.strip()]
    words = fz._WORD.findall((parts[-1] if parts else "").lower())
    tokens = words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
    n_text = dim - text_start
    block = np.zeros(n_text)
    for tok in tokens:
        h = zlib.crc32(tok.encode(), 0)
        block[(h >> 1) % n_text] += 1.0 if h & 1 else -1.0
    norm = float(np.sqrt(block @ block))
    if norm > 0:
        x[text_start:] = block * (f.text_scale / norm)
    return x


FIXED_REQUESTS = [
    {**REQ, "task": "arc"},
    REQ,
    {"messages": REQ["messages"]},
    {"messages": [{"role": "user", "content": "Solve 12 + 30 = ? Show the equation."}]},
    {"messages": [{"role": "user", "content": "Which?\nA) one\nB) two\nC) three"}]},
    {"messages": [{"role": "user", "content": "tell me about rivers"}], "task": "geo"},
    {"messages": [], "metadata": {"task": "mbpp", "tenant": "t1"}},
    {"messages": [{"role": "user", "content": "hello there"}], "route": "r", "task": "x9"},
]


@pytest.mark.parametrize("tasks", [(), ("mbpp", "arc"), tuple(f"k{i}" for i in range(8))])
@pytest.mark.parametrize("dim", [28, 64, 200])
def test_default_layout_is_the_fixed_one_to_the_bit(tasks, dim):
    f = Featurizer(dim=dim, tasks=tasks)
    assert f.task_slots == OLD_SLOTS
    assert (f.task_slice, f.stats_slice, f.meta_slice) == (
        slice(1, 1 + OLD_SLOTS),
        slice(1 + OLD_SLOTS, 1 + OLD_SLOTS + OLD_STATS),
        slice(1 + OLD_SLOTS + OLD_STATS, 1 + OLD_SLOTS + OLD_STATS + OLD_META),
    )
    assert f.text_start == 1 + OLD_SLOTS + OLD_STATS + OLD_META
    assert f.min_dim == f.text_start + 8
    for request in FIXED_REQUESTS:
        assert np.array_equal(f.featurize(request), _old_layout_vector(dim, tasks, request))


def test_more_task_slots_give_every_task_its_own_and_shift_the_rest():
    names = tuple(f"task{i:02d}" for i in range(12))
    wide = Featurizer.for_tasks(reversed(names), dim=68)
    assert wide.tasks == names and wide.task_slots == 12
    assert wide.task_slice == slice(1, 13) and wide.text_start == 24
    assert wide.task_view == (0, *range(1, 13))
    narrow = Featurizer(dim=64)  # the same text width (44), 8 slots
    one_hot = []
    for i, name in enumerate(names):
        request = {**REQ, "task": name}
        x, y = wide.featurize(request), narrow.featurize(request)
        one_hot.append(x[wide.task_slice])
        assert x[1 + i] == 1.0
        for a, b in ((wide.stats_slice, narrow.stats_slice), (wide.meta_slice, narrow.meta_slice)):
            assert np.array_equal(x[a], y[b])
        assert np.array_equal(x[wide.text_start :], y[narrow.text_start :])
    assert np.array_equal(np.array(one_hot), np.eye(12))
    assert wide.task_sharing()["shared_slots"] == {}
    assert Featurizer.for_tasks(["a", "b", ""]).task_slots == 8  # at least the default


def test_names_past_the_slots_share_one_and_are_reported_once(caplog):
    f = Featurizer(dim=40, task_slots=4, tasks=("a", "b", "c", "d"))
    others = [f"extra{i}" for i in range(6)]
    with caplog.at_level("WARNING", logger="learners.featurize"):
        for _ in range(3):
            for name in [*others, "a"]:
                f.featurize({"messages": [], "task": name})
    report = f.task_sharing()
    assert report["task_slots"] == 4 and report["hashed_names"] == 6
    # the tasks fill every slot: each other name shares one with a listed task
    assert report["shared_names"] >= 6
    assert report["shared_requests"] == 3 * 6  # "a" is listed: not counted
    held = [n for names in report["shared_slots"].values() for n in names]
    assert sorted(n for n in held if n.startswith("extra")) == others
    for slot, names in report["shared_slots"].items():
        assert names[0] == f.tasks[slot]  # the listed task first
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 6  # once per name, not per request
    assert all("featurizer.task_slots (now 4)" in m for m in warned)
    assert f == Featurizer(dim=40, task_slots=4, tasks=("a", "b", "c", "d"))  # traffic aside


def test_a_name_alone_in_a_free_slot_shares_nothing():
    f = Featurizer(tasks=("a",))  # 7 slots free
    f.featurize({"messages": [], "task": "solo"})
    report = f.task_sharing()
    assert report["hashed_names"] == 1 and report["shared_names"] == 0
    assert report["shared_requests"] == 0 and report["shared_slots"] == {}


def test_pickles_made_before_task_slots_load_with_the_default():
    import pickle

    f = Featurizer(dim=48, tasks=("a", "b"))
    state = f.__getstate__()
    old = dict(state, __dict__={k: v for k, v in state["__dict__"].items() if k != "task_slots"})
    old["__pydantic_private__"] = None  # the model had no private attributes then
    g = Featurizer.__new__(Featurizer)
    g.__setstate__(old)
    assert g == f and g.task_slots == 8
    assert list(g.model_dump()) == list(f.model_dump())
    assert np.array_equal(g.featurize({**REQ, "task": "zz"}), f.featurize({**REQ, "task": "zz"}))
    assert pickle.loads(pickle.dumps(f)) == f


def test_pickles_made_before_the_text_cap_load_with_the_default():
    f = Featurizer(dim=48)
    state = f.__getstate__()
    fields = {k: v for k, v in state["__dict__"].items() if k != "max_text_words"}
    g = Featurizer.__new__(Featurizer)
    g.__setstate__(dict(state, __dict__=fields))
    assert g == f and g.max_text_words == 2048
    assert list(g.model_dump()) == list(f.model_dump())


def _text_block(f: Featurizer, text: str) -> np.ndarray:
    return f.featurize({"messages": [{"role": "user", "content": text}]})[f.text_start :]


def test_the_text_block_hashes_the_last_words_of_a_long_prompt_only():
    words = [f"w{i % 997}x{i % 13}" for i in range(5000)]
    long_text = " ".join(words)
    capped = Featurizer(max_text_words=300)
    # the last 300 words (and their 299 bigrams), whatever came before them
    assert np.array_equal(
        _text_block(capped, long_text), _text_block(capped, " ".join(words[-300:]))
    )
    uncapped = Featurizer(max_text_words=None)
    assert not np.array_equal(_text_block(capped, long_text), _text_block(uncapped, long_text))
    # under the cap, and uncapped, every word counts: the documented block, to the bit
    for f, text in ((capped, " ".join(words[:300])), (uncapped, long_text)):
        assert np.array_equal(_text_block(f, text), _reference(f, text, 1)[2])
    # words too long for the tail the featurizer reads first: the same block
    longer = [w * 9 for w in words]
    text = " ".join(longer)
    assert np.array_equal(_text_block(capped, text), _text_block(uncapped, " ".join(longer[-300:])))
    # the tail cut inside a word: that word is not one of the last 300
    assert np.array_equal(_text_block(capped, "x" * 6000 + long_text[-4900:]),
                          _text_block(uncapped, " ".join(long_text[-4900:].split()[-300:])))  # fmt: skip
    # the default caps at 2048 words
    default = Featurizer()
    assert np.array_equal(
        _text_block(default, long_text), _text_block(default, " ".join(words[-2048:]))
    )
    with pytest.raises(ValueError, match="max_text_words"):
        Featurizer(max_text_words=0)


def test_a_digit_is_found_in_ascii_text_and_in_any_other():
    import re

    from learners import featurize as fz

    chars = [chr(c) for c in range(128)] + ["\u00b2", "\u0663", "\u09e6", "\uff11", "\u2460", "é"]
    for c in chars:
        for text in (f"ab{c}cd", c, f"{c}é"):
            assert fz._has_digit(text) == (re.search(r"\d", text) is not None), repr(text)
    assert not fz._has_digit("") and not fz._has_digit("no digits here")
