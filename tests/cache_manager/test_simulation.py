from __future__ import annotations

import json

import numpy as np

from cache_manager.config import parse_policy
from cache_manager.sim.engine import RunResult, run_policy
from cache_manager.sim.report import checkpoints, fit_exponent
from cache_manager.sim.scenarios import build_world, get_scenario
from controlplane.cli import main


def test_fit_exponent_recovers_power_laws() -> None:
    ts = checkpoints(100_000)
    assert abs(fit_exponent(ts, 3.0 * ts**0.5) - 0.5) < 1e-9
    assert abs(fit_exponent(ts, 0.1 * ts) - 1.0) < 1e-9


def test_polar_pages_less_than_lru_and_never_overfills() -> None:
    scenario = get_scenario("drift", horizon=8_000)
    polar: list[RunResult] = []
    plus: list[RunResult] = []
    lru: list[RunResult] = []
    oracle: list[RunResult] = []
    for seed in range(3):
        world = build_world(scenario, seed)
        for name, out in (("polar", polar), ("polar+", plus), ("lru", lru), ("oracle", oracle)):
            result = run_policy(world, parse_policy(name), seed)
            assert result.max_resident <= result.capacity
            assert result.epochs_failed == 0
            out.append(result)
    assert np.mean([r.page_ins for r in polar]) < 0.8 * np.mean([r.page_ins for r in lru])
    assert np.mean([r.page_ins for r in plus]) < 0.8 * np.mean([r.page_ins for r in lru])
    assert np.mean([r.mean_reward for r in oracle]) > np.mean([r.mean_reward for r in lru])


def test_simulate_cache_command_writes_the_summary(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out.json"
    png = tmp_path / "out.png"
    rc = main(
        [
            "simulate-cache",
            "--scenario",
            "shift",
            "--policies",
            "polar+,lru,oracle",
            "--seeds",
            "2",
            "--horizon",
            "1500",
            "--workers",
            "1",
            "--json",
            str(out),
            "--plot",
            str(png),
        ]
    )
    assert rc == 0 and png.stat().st_size > 0
    doc = json.loads(out.read_text())
    assert set(doc["policies"]) == {"polar+", "lru", "oracle"}
    for stats in doc["policies"].values():
        assert set(stats) == {
            "mean_reward",
            "page_ins",
            "paging_s",
            "hit_rate",
            "regret",
            "regret_exponent",
        }
    assert doc["policies"]["oracle"]["regret"] == 0
