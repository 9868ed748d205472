"""Data readers, the replay simulator and the ``banditctl simulate`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from controlplane.cli import main
from learners.datasets import read_jsonl, read_routerbench
from learners.replay.objective import parse_objective
from learners.replay.simulator import run_replay, summarize
from learners.replay.synthetic import synthetic_dataset


def test_jsonl_reader_drops_incomplete_rows_and_profiles_missing_components(tmp_path):
    rows = [
        {"prompt": "2+2?", "task": "math", "models": {"s": {"quality": 1, "cost_usd": 0.001}, "l": {"quality": 1, "cost_usd": 0.01}}},
        {"prompt": "hi", "models": {"s": {"quality": 0, "cost_usd": 0.001}, "l": {"cost_usd": 0.01}}},
        {"prompt": [{"role": "user", "content": "sum"}], "models": {"s": {"quality": 0.5, "cost_usd": 0.002, "response": "ok"}, "l": {"quality": 1, "cost_usd": 0.02}}},
    ]  # fmt: skip
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    ds = read_jsonl(path)
    assert len(ds) == 2 and ds.models == ("s", "l")
    assert ds.profiled == ("latency_ms", "energy_j") and ds.notes
    assert ds.rewards().shape == (2, 2, 4)
    assert np.all(ds.latency_ms > 0) and np.all(ds.energy_j > 0)


def test_objective_parsing():
    assert parse_objective("quality=1,cost_usd=-30").tolist() == [1, 0, 0, -30]
    assert parse_objective("quality=1, cost=-2").tolist() == [1, 0, 0, -2]
    with pytest.raises(ValueError):
        parse_objective("speed=1")


def test_replay_on_synthetic_learns_and_references_are_consistent():
    ds = synthetic_dataset(n=600, seed=1)
    w = parse_objective("quality=1,cost_usd=-30")
    res = run_replay(
        ds, {"linucb": {"kind": "linucb", "alpha": 0.3}, "random": {"kind": "random"}}, w, [0, 1]
    )
    s = summarize(res)
    refs = s["references"]
    assert (
        refs["oracle"]["mean_reward"]
        >= refs["per_task_best"]["mean_reward"]
        >= refs["best_fixed"]["mean_reward"]
    )
    lin, rnd = s["learners"]["linucb"], s["learners"]["random"]
    assert lin["mean_reward"] > rnd["mean_reward"] + 0.05
    assert lin["regret_vs_oracle"] < rnd["regret_vs_oracle"]
    lo, hi = lin["reward_ci95"]
    assert lo <= lin["mean_reward"] <= hi


def test_simulate_command_writes_json_and_plot(tmp_path, capsys):
    out, png = tmp_path / "out.json", tmp_path / "out.png"
    rc = main(["simulate", "--dataset", "synthetic", "--learners", "linucb,random,fixed:large",
               "--seeds", "2", "--json", str(out), "--plot", str(png), "--no-progress"])  # fmt: skip
    assert rc == 0
    doc = json.loads(out.read_text())
    for name in ("linucb", "random", "fixed:large"):
        entry = doc["learners"][name]
        for key in (
            "mean_reward",
            "reward_ci95",
            "mean_quality",
            "mean_cost",
            "regret_vs_best_fixed",
            "regret_vs_oracle",
        ):
            assert key in entry
    assert set(doc["references"]) >= {"best_fixed", "oracle", "per_task_best"}
    assert png.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "regret vs oracle" in printed and "per-model profile" in printed


def test_simulate_rejects_unknown_learner():
    assert main(["simulate", "--dataset", "synthetic", "--learners", "nope"]) == 2


def test_routerbench_reader(routerbench_path):
    ds = read_routerbench(routerbench_path)
    assert len(ds) == 3150 and len(ds.models) == 11
    assert set(ds.tasks.tolist()) == {"arc-challenge", "mbpp", "winogrande"}
    assert np.all((ds.quality >= 0) & (ds.quality <= 1)) and np.all(ds.cost_usd > 0)


@pytest.mark.slow
def test_routerbench_learners_learn(routerbench_path):
    """3 seeds on the full stream: LinUCB is far above random and near the best fixed
    model; LinTS (the preset) is above the best fixed model and GreenServ.

    (The 10-seed figures with intervals are in the README section "Learners and
    offline replay".)
    """
    ds = read_routerbench(routerbench_path)
    from learners.replay.presets import resolve

    w = parse_objective("quality=1,cost_usd=-30")
    s = summarize(run_replay(ds, resolve(["linucb", "lints", "greenserv", "random"]), w, [0, 1, 2]))
    lin = s["learners"]["linucb"]["mean_reward"]
    ts = s["learners"]["lints"]["mean_reward"]
    assert ts > s["references"]["best_fixed"]["mean_reward"] + 0.005
    assert ts > s["learners"]["greenserv"]["mean_reward"]
    assert lin > s["learners"]["random"]["mean_reward"] + 0.08
    assert lin > 0.95 * s["references"]["best_fixed"]["mean_reward"]
    assert s["references"]["per_task_best"]["mean_reward"] == pytest.approx(0.8019, abs=1e-3)


def test_comparisons_are_paired_by_seed_and_name_the_best_learner():
    ds = synthetic_dataset(n=600, seed=2)
    w = parse_objective("quality=1,cost_usd=-30")
    res = run_replay(
        ds, {"linucb": {"kind": "linucb", "alpha": 0.3}, "random": {"kind": "random"}}, w, [0, 1, 2]
    )
    comp = summarize(res)["comparisons"]
    assert comp["best"] == "linucb"
    vs = comp["against"]["random"]
    per_seed = [
        a.rewards.mean() - b.rewards.mean()
        for a, b in zip(res.traces["linucb"], res.traces["random"], strict=True)
    ]
    assert vs["diff"] == pytest.approx(float(np.mean(per_seed)))
    lo, hi = vs["diff_ci95"]
    assert lo <= vs["diff"] <= hi and vs["beats"] == (lo > 0)
    fixed = comp["against"]["best_fixed"]
    best_fixed = res.references["best_fixed"]["mean_reward"]
    assert fixed["diff"] == pytest.approx(
        summarize(res)["learners"]["linucb"]["mean_reward"] - best_fixed
    )
    assert set(comp["against"]) == {"random", "best_fixed", "per_task_best"}
