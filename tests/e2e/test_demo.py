"""The demo a newcomer runs first: each seed starts from a fresh policy and learns, as it
serves, the per-task routing its scenario implies (a subprocess, its own local Ray).

The demo sends its traffic in waves and waits for the policy between them, so a seed's run
makes the same decisions on any machine: ``bench/demo_waves.py`` replays them offline. A
single 300-request run is noisy across seeds (over 20 seeds, the second half 0.695-0.841,
29%-100% to each task's best arm); seeds 0-2 give 0.814, 0.800 and 0.764, and 100%, 66%
and 93% (the bound below is 0.4; chance is 0.25)."""

from __future__ import annotations

import json

import pytest

from tests.e2e.demo_run import run_demo

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_demo_learns_the_per_task_routing_from_a_fresh_policy_each_seed(pg_server, tmp_path):
    out = tmp_path / "demo.json"
    args = ["--requests", "300", "--seeds", "3"]
    done = run_demo(pg_server, tmp_path / "data", out, args, timeout_s=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert [r["seed"] for r in runs] == [0, 1, 2]
    for run in runs:
        s = run["summary"]
        print(f"\nseed {run['seed']}: first half {s['mean_reward_first_half']:.3f}, second half "
              f"{s['mean_reward_second_half']:.3f}, to the best arm "
              f"{s['best_arm_share_second_half']:.0%}, {s['traffic_share_by_task_second_half']}")  # fmt: skip
        # a fresh policy each seed: the run's own decisions are all the database holds
        assert run["database_totals"]["decisions"] == run["served"] == 300
        assert run["wave"] == 20 and run["errors"] == 0
        # code -> coder, math -> mathy, trivia -> large: each task's best arm in hindsight
        assert s["best_arm_by_task"] == {"code": "coder", "math": "mathy", "trivia": "large"}
        # the learner timed each rating it credited, read back from /metrics
        waits = run["feedback_waits"]
        assert 0 < waits["ratings"] <= run["feedback_rows"], waits
        assert 0 <= waits["within_s"]["0.5"] <= waits["within_s"]["5.0"] <= 1, waits
    # judged over the seeds (a single 300-request run is noisy): the second half earns more
    # than the first, and well above chance goes to each task's best arm (chance: a quarter)
    gain = [r["summary"]["mean_reward_second_half"] - r["summary"]["mean_reward_first_half"]
            for r in runs]  # fmt: skip
    assert sum(gain) / len(gain) > 0, gain
    best_share = [r["summary"]["best_arm_share_second_half"] for r in runs]
    assert sum(best_share) / len(best_share) > 0.4, best_share
    assert "over 3 seeds" in done.stdout
