"""The hf demo's pieces without a model: its config, its users' rating, its summary."""

from __future__ import annotations

import json

import pytest

from controlplane.cli.demo_hf import (
    Answer,
    HfTraffic,
    find_adapters,
    hf_demo_config,
    opens_with,
    summarize_hf,
)


def test_the_config_serves_the_base_model_and_each_adapter(tmp_path):
    for name, keyword in (("ahoy-r4", "Ahoy"), ("verily-r8", "Verily"), ("behold-r16", "Behold")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "banditctl-adapter.json").write_text(
            json.dumps({"name": name, "keyword": keyword})
        )
    found = find_adapters(tmp_path, 2)
    assert found == [("ahoy-r4", "Ahoy"), ("behold-r16", "Behold")]  # sorted by folder
    cfg = hf_demo_config(tmp_path, found)
    assert [a.name for a in cfg.arms] == ["smol", "smol:ahoy-r4", "smol:behold-r16"]
    assert {a.backend for a in cfg.arms} == {"hf"} and cfg.arms[1].adapter == "ahoy-r4"
    assert list(cfg.featurizer.tasks) == ["ahoy", "behold"]
    assert cfg.cache.slots_per_replica == 2  # every adapter fits: the demo is about routing


def test_users_rate_the_opening_keyword_and_the_summary_splits_halves():
    assert opens_with(" Ahoy! The sea is wide.", "ahoy")
    assert not opens_with("The sea, ahoy.", "Ahoy")

    def answer(task: str, arm: str, q: float, version: int) -> Answer:
        return Answer(task, arm, version, f"{task} text" if q else "text", 100.0 + version, 9, 0.5, q)  # fmt: skip

    traffic = HfTraffic(
        [answer("ahoy", "smol", 0.0, 1), answer("ahoy", "smol:verily-r8", 0.0, 1)]
        + [answer("ahoy", "smol:ahoy-r4", 1.0, 3), answer("verily", "smol:verily-r8", 1.0, 4)]
    )
    s = summarize_hf(traffic)
    assert (s["quality_first_half"], s["quality_second_half"]) == (0.0, 1.0)
    assert s["policy_versions_seen"] == [1, 3, 4]
    assert s["arms_by_task_second_half"] == {
        "ahoy": {"smol:ahoy-r4": 1.0},
        "verily": {"smol:verily-r8": 1.0},
    }
    assert s["tokens_per_s"] == pytest.approx(4 * 8 / 2.0)
    assert s["sample"] == {
        "task": "ahoy",
        "arm": "smol:ahoy-r4",
        "text": "ahoy text",
        "ttft_ms": 103.0,
    }
