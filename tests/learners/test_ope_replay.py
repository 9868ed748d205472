"""Off-policy evaluation of candidates on full-information data sets replayed under a
logging policy, where the true value of every candidate's picks is known."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from controlplane.cli import main
from learners.featurize import Featurizer
from learners.replay.objective import parse_objective
from learners.replay.ope_eval import from_replay, run
from learners.replay.ope_policies import (
    learner_candidate,
    log_dataset,
    parse_policy_spec,
    replay_candidate,
    stream_rng,
)
from learners.replay.synthetic import synthetic_dataset

W = parse_objective("quality=1,cost_usd=-30")
CANDIDATES = ["fixed:small", "fixed:large", "linucb", "lints", "random", "epsilon:0.05"]


def _setup(n: int = 600):
    ds = synthetic_dataset(n, seed=1)
    X = Featurizer(dim=32, tasks=("code", "math", "trivia")).featurize_many(ds.requests)
    return ds, X, ds.rewards()


def _doc(logger: str, seeds: range, names=CANDIDATES, n: int = 600):
    ds, X, R = _setup(n)
    cands = [learner_candidate(s, parse_policy_spec(s), X.shape[1], W) for s in names]
    logs = [
        (s, from_replay(log_dataset(X, R, W, ds.models, parse_policy_spec(logger), s), ds.models))
        for s in seeds
    ]
    return run(logs, cands)


def test_true_value_in_the_dr_interval_for_most_candidates_and_seeds():
    doc = _doc("random", range(3))
    cands = doc["candidates"]
    per_seed = [s["covered"] for c in cands.values() for s in c["seeds"]]
    assert len(per_seed) == 18
    assert sum(per_seed) >= 15  # 95% intervals: about 17 expected
    assert doc["coverage"]["covered"] >= 5 and doc["coverage"]["of"] == 6
    assert doc["independent_seeds"] is True  # a log per seed: the pool is narrower
    rnd = cands["random"]
    widths = [s["ci95"][1] - s["ci95"][0] for s in rnd["seeds"]]
    assert rnd["ci95"][1] - rnd["ci95"][0] < min(widths)
    # informative as well as honest: the ranking of the fixed arms is recovered, and
    # the learners, which route by task, beat the weak fixed arm
    assert cands["fixed:large"]["estimate"] > cands["fixed:small"]["estimate"] + 0.1
    assert cands["fixed:large"]["ci95"][0] > cands["fixed:small"]["ci95"][1]
    assert cands["lints"]["estimate"] > cands["fixed:small"]["estimate"]
    for c in cands.values():
        assert set(c["estimators"]) == {"ips", "clipped_ips", "snips", "dr", "switch_dr"}
        assert c["ci95"][0] < c["estimate"] < c["ci95"][1]
        assert c["warnings"] == []  # a uniform logger over 4 arms: nothing below 0.01


def test_snips_is_exact_for_the_logger_itself():
    doc = _doc("random", range(2), names=["random"])
    for s, lg in zip(doc["candidates"]["random"]["seeds"], doc["logger"]["seeds"], strict=True):
        assert s["estimators"]["snips"]["value"] == pytest.approx(lg["estimate"], abs=1e-12)
        assert s["estimators"]["ips"]["ess"] == pytest.approx(600)
        assert s["true_value"] == pytest.approx(lg["true_value"])


def test_learners_learn_only_where_their_pick_is_the_logged_arm():
    ds, X, R = _setup()
    log = from_replay(log_dataset(X, R, W, ds.models, {"kind": "random"}, 0), ds.models)
    d = log.data
    cand = learner_candidate("linucb", parse_policy_spec("linucb"), X.shape[1], W)
    got = replay_candidate(
        cand, d.contexts, d.actions, d.propensities, log.reward_vectors, d.arms, stream_rng(0, "x")
    )
    # linucb picks one arm (propensity 1 but for ties): it matches a uniform logger on
    # about a quarter of the rows, and learns from those only
    assert abs(got.updates - 150) < 4 * np.sqrt(600 * 0.25 * 0.75)
    matched = got.pi[np.arange(len(d.actions)), d.actions]
    assert got.updates <= (matched > 0).sum()
    fixed = learner_candidate("f", parse_policy_spec("fixed:large"), X.shape[1], W)
    frozen = replay_candidate(
        fixed, d.contexts, d.actions, d.propensities, log.reward_vectors, d.arms, stream_rng(0, "f")
    )
    assert frozen.updates == 0 and (frozen.pi[:, ds.models.index("large")] == 1).all()


def test_a_greedy_logger_warns_about_arms_it_rarely_picks():
    doc = _doc("epsilon:0.02", range(1), names=["fixed:small", "fixed:large"])
    warned = {n for n, c in doc["candidates"].items() if c["warnings"]}
    # epsilon 0.02 over 4 arms: 0.005 for every arm but the greedy one
    assert warned and all(doc["candidates"][n]["low_propensity_share"] >= 0.05 for n in warned)
    assert all(doc["candidates"][n]["max_weight"] > 100 for n in warned)


def test_replays_are_seeded():
    a, b = _doc("epsilon:0.1", range(1), ["lints"]), _doc("epsilon:0.1", range(1), ["lints"])
    assert a == b
    c = _doc("epsilon:0.1", range(1, 2), ["lints"])
    assert c["candidates"]["lints"]["estimate"] != a["candidates"]["lints"]["estimate"]


def test_policy_specs():
    assert parse_policy_spec("linucb:alpha=1")["alpha"] == 1
    assert parse_policy_spec("lints:v=0.2:ridge=2")["ridge"] == 2
    assert parse_policy_spec("lints")["v"] == 0.1  # the simulator's preset
    assert parse_policy_spec("fixed:llama-8b:sql") == {"kind": "fixed", "arm": "llama-8b:sql"}
    assert parse_policy_spec("epsilon:0.1") == {"kind": "epsilon_greedy", "epsilon": 0.1}
    assert parse_policy_spec('{"kind": "linucb", "alpha": 2}')["alpha"] == 2
    for bad in ("nope", "linucb:alpha", "linucb:alpha=-1", "linucb:colour=red"):
        with pytest.raises(ValueError):
            parse_policy_spec(bad)


def test_cli_on_the_synthetic_data_set(tmp_path, capsys):
    out = tmp_path / "ope.json"
    args = ["ope", "--dataset", "synthetic", "--rows", "500", "--seeds", "2", "--dim", "32"]
    args += ["--candidates", "fixed:large,linucb", "--weights", "quality=1,cost_usd=-100"]
    assert main([*args, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "DR estimate [95%]" in text and "true value inside the DR interval" in text
    doc = json.loads(out.read_text())
    assert list(doc["candidates"]) == ["fixed:large", "linucb", "linucb@quality=1,cost_usd=-100"]
    for c in doc["candidates"].values():
        assert {"estimate", "ci95", "true_value", "covered"} <= set(c)
        assert len(c["seeds"]) == 2
    # a heavier cost weight moves linucb's picks toward cheap models
    cheap = doc["candidates"]["linucb@quality=1,cost_usd=-100"]["components"]["cost_usd"]
    assert cheap < doc["candidates"]["linucb"]["components"]["cost_usd"]
    assert main(["ope", "--dataset", "synthetic", "--candidates", "fixed:nope"]) == 2
    assert "not among the logged arms" in capsys.readouterr().err
    assert main(["ope", "--dataset", "synthetic", "--candidates", "current"]) == 2
    assert "needs the database" in capsys.readouterr().err


@pytest.mark.slow
def test_routerbench_coverage(routerbench_path, tmp_path):
    out = tmp_path / "rb.json"
    candidates = "fixed:gpt-4-1106-preview,fixed:zero-one-ai/Yi-34B-Chat,linucb,lints"
    args = ["ope", "--dataset", str(routerbench_path), "--rows", "2000", "--seeds", "2"]
    assert main([*args, "--candidates", candidates, "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["source"]["rows"] == 2000
    assert doc["coverage"]["covered"] >= 3 and doc["coverage"]["of"] == 4
    for c in doc["candidates"].values():
        assert c["ci95"][1] - c["ci95"][0] < 0.15  # and the intervals say something


def test_cli_plot_and_its_extra(tmp_path, monkeypatch, capsys):
    png = tmp_path / "ope.png"
    args = ["ope", "--dataset", "synthetic", "--rows", "300", "--dim", "32"]
    args += ["--candidates", "fixed:large,random", "--plot", str(png)]
    assert main(args) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    png.unlink()
    for name in ("matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, name, None)  # as if the sim extra were missing
    assert main(args) == 2
    assert "pip install 'banditctl[sim]'" in capsys.readouterr().err
    assert not png.exists()  # stopped before the work
