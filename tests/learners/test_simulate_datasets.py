"""``banditctl simulate`` on data sets a new user brings: made-up ones written in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from controlplane.cli import build_parser, main
from learners.datasets import DatasetError, detect_format, load_dataset, read_jsonl

TASKS = [f"task{i:02d}" for i in range(12)]


def quality_only_rows(n: int = 240, seed: int = 0, cost: bool = False) -> list[dict]:
    """12 tasks, 3 models; model ``m{t % 3}`` is the best on task ``t``."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        t = i % len(TASKS)
        models = {}
        for m in range(3):
            p = 0.9 if m == t % 3 else 0.3
            entry: dict = {"quality": float(rng.random() < p)}
            if cost:
                entry["cost_usd"] = 0.0
            models[f"m{m}"] = entry
        rows.append(
            {"prompt": f"question {i} about {TASKS[t]}", "task": TASKS[t], "models": models}
        )
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def simulate(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["simulate", "--no-progress", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_a_quality_only_jsonl_data_set_with_12_tasks_runs_cleanly(tmp_path, capsys):
    data = write_jsonl(tmp_path / "bench.jsonl", quality_only_rows())
    out_json, png = tmp_path / "out.json", tmp_path / "out.png"
    rc, out, err = simulate(
        capsys, "--dataset", str(data), "--objective", "quality=1", "--seeds", "3",
        "--learners", "lints,random", "--json", str(out_json), "--plot", str(png),
    )  # fmt: skip
    assert rc == 0, err
    assert "Traceback" not in out + err
    assert "12 tasks" in out and "every cost is 0" in out
    assert "task slots: 12, one per task (12 tasks); no slot is shared" in out
    assert "share by hash" not in out and "names share" not in out
    assert "cost USD" not in out and "%cost" not in out  # constant: left out
    doc = json.loads(out_json.read_text())
    assert doc["constant_cost"] is True
    lints = doc["learners"]["lints"]
    assert lints["pct_best_model_cost"] is None
    assert lints["per_seed"]["seed"] == [0, 1, 2]
    assert len(lints["per_seed"]["mean_reward"]) == 3
    assert np.mean(lints["per_seed"]["mean_reward"]) == pytest.approx(lints["mean_reward"])
    assert lints["mean_reward"] > doc["learners"]["random"]["mean_reward"]
    assert png.stat().st_size > 10_000


def test_fewer_task_slots_than_tasks_are_reported_with_what_shares(tmp_path, capsys):
    data = write_jsonl(tmp_path / "bench.jsonl", quality_only_rows(120))
    rc, out, err = simulate(
        capsys, "--dataset", str(data), "--objective", "quality=1", "--seeds", "1",
        "--learners", "greenserv", "--task-slots", "5",
    )  # fmt: skip
    assert rc == 0, err
    note = next(line for line in out.splitlines() if "task slots:" in line)
    assert "task slots: 5 for 12 tasks: the first 5 (alphabetically) have their own" in note
    # the 5 slots are all listed tasks' own: each of the other 7 shares with one of them
    for task in TASKS[5:]:
        assert task in note
    assert "names share" in note
    assert "raise --task-slots" in note


def test_task_slots_validation_reaches_the_user_as_one_line(tmp_path, capsys):
    data = write_jsonl(tmp_path / "bench.jsonl", quality_only_rows(24))
    rc, _, err = simulate(capsys, "--dataset", str(data), "--seeds", "1", "--task-slots", "0")
    assert rc == 2 and "--task-slots must be at least 1" in err
    rc, _, err = simulate(
        capsys, "--dataset", str(data), "--seeds", "1", "--dim", "30", "--learners", "random"
    )
    assert rc == 2 and "Traceback" not in err
    assert "dim 30 is too small for task_slots 12" in err and "at least 32" in err
    rc, _, err = simulate(
        capsys, "--dataset", str(data), "--seeds", "1", "--task-slots", "4",
        "--task-clusters", "6", "--hide-tasks",
    )  # fmt: skip
    assert rc == 2 and "--task-clusters 6 exceeds the 4 task slots" in err


def test_greenserv_on_12_tasks_reads_12_task_slots(tmp_path):
    """GreenServ sees only the intercept and the task one-hot: with one slot per task it
    learns each task's best model; squeezed into 8 slots, tasks with different best
    models share a slot and it does worse, on every seed."""
    from learners.config import for_layout
    from learners.featurize import Featurizer
    from learners.replay.objective import parse_objective
    from learners.replay.presets import resolve
    from learners.replay.simulator import run_replay

    ds = read_jsonl(write_jsonl(tmp_path / "d.jsonl", quality_only_rows(1200)))
    wide = Featurizer.for_tasks(ds.tasks.tolist())
    assert wide.task_slots == 12
    assert for_layout({"kind": "greenserv"}, wide).context_indices == tuple(range(13))
    assert resolve(["greenserv"], wide)["greenserv"]["context_indices"] == tuple(range(13))
    lints = resolve(["lints"], wide)["lints"]
    assert lints["context_indices"] == tuple(range(13)) and len(lints["ridge_scale"]) == 13
    narrow = Featurizer(tasks=tuple(TASKS[:8]))
    w = parse_objective("quality=1")
    spec = {"greenserv": {"kind": "greenserv"}}  # context_indices fitted by run_replay
    got = {
        f.task_slots: [r.rewards.mean() for r in run_replay(ds, spec, w, [0, 1, 2], f).traces["greenserv"]]
        for f in (wide, narrow)
    }  # fmt: skip
    assert all(a > b for a, b in zip(got[12], got[8], strict=True)), got


def test_all_zero_costs_given_explicitly_do_not_crash(tmp_path, capsys):
    data = write_jsonl(tmp_path / "zero.jsonl", quality_only_rows(60, cost=True))
    rc, out, err = simulate(capsys, "--dataset", str(data), "--seeds", "2", "--learners", "linucb")
    assert rc == 0, err
    assert "cost USD" not in out


def test_format_is_judged_by_content_not_suffix(tmp_path, capsys):
    data = write_jsonl(tmp_path / "named.json", quality_only_rows(36))
    assert detect_format(data) == "jsonl"
    assert len(load_dataset(data)) == 36
    odd = tmp_path / "notes.txt"
    odd.write_text("hello\nworld\n")
    with pytest.raises(DatasetError, match="neither JSONL .* nor a RouterBench CSV"):
        detect_format(odd)
    rc, _, err = simulate(capsys, "--dataset", str(odd), "--seeds", "1")
    assert rc == 2 and "neither JSONL" in err and "Traceback" not in err


def test_routerbench_csv_detected_whatever_its_name(tmp_path):
    path = tmp_path / "data.dat"
    path.write_text("prompt,eval_name,a,a|total_cost,b,b|total_cost\n\"['hi']\",t,1,0.1,0,0.2\n")
    assert detect_format(path) == "csv"
    ds = load_dataset(path)
    assert ds.models == ("a", "b") and len(ds) == 1


@pytest.mark.parametrize(
    ("line", "field", "message"),
    [
        ("{not json", None, "not JSON"),
        ('{"models": {"a": {"quality": 1}}}', "prompt", "required"),
        ('{"prompt": "x"}', "models", "required"),
        ('{"prompt": "x", "models": {"a": {"quality": 1.5}}}', "models.a.quality", r"\[0, 1\]"),
        ('{"prompt": "x", "models": {"a": {"quality": -0.1}}}', "models.a.quality", r"\[0, 1\]"),
        ('{"prompt": "x", "models": {"a": {"quality": "high"}}}', "models.a.quality", "number"),
        ('{"prompt": "x", "models": {"a": {"quality": 1, "cost_usd": -1}}}', "models.a.cost_usd", "negative"),
    ],
)  # fmt: skip
def test_schema_errors_name_line_and_field(tmp_path, line, field, message):
    good = json.dumps({"prompt": "ok", "models": {"a": {"quality": 1}}})
    path = write_jsonl(tmp_path / "bad.jsonl", [good, "", line])
    with pytest.raises(DatasetError, match=message) as info:
        read_jsonl(path)
    assert info.value.line == 3
    assert info.value.field == field
    assert "line 3" in str(info.value)


def test_schema_error_reaches_the_user_as_one_line(tmp_path, capsys):
    good = json.dumps({"prompt": "ok", "models": {"a": {"quality": 1}}})
    bad = json.dumps({"prompt": "x", "models": {"a": {"quality": 2}}})
    path = write_jsonl(tmp_path / "bad.jsonl", [good, bad])
    rc, _, err = simulate(capsys, "--dataset", str(path), "--seeds", "1")
    assert rc == 2
    assert "line 2" in err and "models.a.quality" in err and "Traceback" not in err


def test_incomplete_rows_and_the_model_set_are_counted_and_reported(tmp_path, capsys):
    rows = quality_only_rows(30, cost=True)
    del rows[4]["models"]["m1"]["quality"]  # incomplete
    del rows[9]["models"]["m2"]  # incomplete
    rows[11]["models"]["m9"] = {"quality": 1, "cost_usd": 0}  # outside the set
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    ds = read_jsonl(path)
    assert len(ds) == 28 and ds.models == ("m0", "m1", "m2")
    text = " ".join(ds.notes)
    assert "3 models (those of the first row): m0, m1, m2" in text
    assert "2 of 30 rows dropped as incomplete" in text and "line 5" in text
    assert "m9 (1 rows)" in text
    rc, out, _ = simulate(capsys, "--dataset", str(path), "--seeds", "1", "--learners", "random")
    assert rc == 0 and "2 of 30 rows dropped as incomplete" in out


def test_rows_missing_a_cost_when_others_have_one_are_incomplete(tmp_path):
    rows = quality_only_rows(12, cost=True)
    del rows[3]["models"]["m0"]["cost_usd"]
    ds = read_jsonl(write_jsonl(tmp_path / "d.jsonl", rows))
    assert len(ds) == 11
    assert any("1 of 12 rows dropped" in n and "line 4" in n for n in ds.notes)


def test_csv_quality_outside_unit_interval_is_refused(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("prompt,a,a|total_cost\n\"['x']\",1,0.1\n\"['y']\",7,0.1\n")
    with pytest.raises(DatasetError, match=r"line 3: field 'a': quality must lie in \[0, 1\]"):
        load_dataset(path)


def test_help_documents_every_option_with_its_default(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["simulate", "--help"])
    text = capsys.readouterr().out
    assert "%%" not in text and "95% intervals" in text
    sub = parser._subparsers._group_actions[0].choices["simulate"]  # type: ignore[union-attr]
    for action in sub._actions:
        if action.dest in ("help",):
            continue
        assert action.help, action.dest
        if action.default not in (None, False) or action.dest in ("dataset", "plot", "json_out"):
            assert "default" in action.help, action.dest
    assert "NAME=WEIGHT" in text and "quality=1,cost_usd=-30" in text
    assert "learners/datasets.py" in text


def test_default_data_set_missing_gives_a_clear_message(tmp_path, monkeypatch, capsys):
    from controlplane.cli.commands import simulate as cmd

    monkeypatch.delenv("BANDITCTL_DATASET", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cmd, "default_dataset", lambda: None)
    rc, _, err = simulate(capsys, "--seeds", "1")
    assert rc == 2
    assert "no --dataset given" in err and "--dataset synthetic" in err


def test_default_data_set_from_the_environment(tmp_path, monkeypatch, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", quality_only_rows(24))
    monkeypatch.setenv("BANDITCTL_DATASET", str(path))
    rc, out, _ = simulate(capsys, "--seeds", "1", "--learners", "random")
    assert rc == 0 and str(path) in out


def test_progress_names_learner_and_seed_and_moves_within_a_run():
    from learners.replay.objective import parse_objective
    from learners.replay.simulator import TICK, run_replay
    from learners.replay.synthetic import synthetic_dataset

    ds = synthetic_dataset(n=350, seed=0)
    calls: list[tuple[int, str, int]] = []
    run_replay(
        ds, {"linucb": {"kind": "linucb"}, "random": {"kind": "random"}},
        parse_objective("quality=1"), [0, 1], progress=lambda k, name, seed: calls.append((k, name, seed)),
    )  # fmt: skip
    assert sum(k for k, _, _ in calls) == 350 * 4
    per_run = [c for c in calls if c[1:] == ("linucb", 1)]
    assert [k for k, *_ in per_run] == [TICK, TICK, TICK, 50]
    assert {(n, s) for _, n, s in calls} == {
        ("linucb", 0),
        ("linucb", 1),
        ("random", 0),
        ("random", 1),
    }


def test_models_replays_only_the_models_named(tmp_path, capsys):
    data = write_jsonl(tmp_path / "bench.jsonl", quality_only_rows(120))
    out_json = tmp_path / "out.json"
    rc, out, err = simulate(
        capsys, "--dataset", str(data), "--learners", "lints,random", "--seeds", "2",
        "--models", "m2,m0", "--json", str(out_json),
    )  # fmt: skip
    assert rc == 0, err
    assert "2 models" in out and "only 2 of its 3 models replayed (--models)" in out
    summary = json.loads(out_json.read_text())
    assert "m1" not in json.dumps(summary["references"])
    ds = load_dataset(data).only_models(["m2", "m0"])
    assert ds.models == ("m0", "m2") and ds.quality.shape == (120, 2)
    full = load_dataset(data)
    assert np.array_equal(ds.quality, full.quality[:, [0, 2]])


@pytest.mark.parametrize(
    ("models", "message"),
    [("m0,m9", "--models: m9 not among the data set's models (m0, m1, m2)"),
     ("m1", "--models: at least two models are needed")],
)  # fmt: skip
def test_models_outside_the_data_set_are_refused_in_one_line(tmp_path, capsys, models, message):
    data = write_jsonl(tmp_path / "bench.jsonl", quality_only_rows(24))
    rc, out, err = simulate(capsys, "--dataset", str(data), "--models", models)
    assert rc == 2 and message in err and "Traceback" not in err
