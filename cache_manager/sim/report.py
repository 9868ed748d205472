"""Runs across seeds and policies, regret against the oracle, its growth exponent, plots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cache_manager.config import parse_policy
from cache_manager.sim.engine import RunResult, run_policy
from cache_manager.sim.scenarios import ScenarioConfig, build_world
from learners.replay.report import require_pyplot

ORACLE = "oracle"


def checkpoints(horizon: int, start: int = 1_000, points: int = 21) -> np.ndarray:
    """Log-spaced request counts from ``start`` (or the horizon) to the horizon."""
    lo = min(start, horizon)
    return np.unique(np.geomspace(lo, horizon, points).round().astype(int))


def fit_exponent(ts: np.ndarray, regret: np.ndarray) -> float:
    """Slope of log(regret) on log(T) over the checkpoints where regret is positive."""
    keep = regret > 0
    if keep.sum() < 2:
        return float("nan")
    slope, _ = np.polyfit(np.log(ts[keep]), np.log(regret[keep]), 1)
    return float(slope)


@dataclass(frozen=True)
class Summary:
    policy: str
    mean_reward: float
    page_ins: float
    paging_s: float
    hit_rate: float
    regret: float
    regret_exponent: float
    regret_curve: np.ndarray  # mean cumulative regret at the checkpoints
    max_resident: int
    capacity: int
    epochs_failed: int

    def as_json(self) -> dict[str, float]:
        return {
            "mean_reward": round(self.mean_reward, 5),
            "page_ins": round(self.page_ins, 1),
            "paging_s": round(self.paging_s, 3),
            "hit_rate": round(self.hit_rate, 4),
            "regret": round(self.regret, 2),
            "regret_exponent": round(self.regret_exponent, 3),
        }


def _job(args: tuple[ScenarioConfig, str, int]) -> tuple[str, int, RunResult, np.ndarray]:
    scenario, policy, seed = args
    result = run_policy(build_world(scenario, seed), parse_policy(policy), seed)
    cumulative = np.cumsum(result.expected_reward)
    # keep the cumulative curve only; the per-request array is large
    slim = RunResult(**{**result.__dict__, "expected_reward": np.zeros(0)})
    return policy, seed, slim, cumulative


def run_all(
    scenario: ScenarioConfig, policies: Sequence[str], seeds: Sequence[int], workers: int = 1
) -> tuple[dict[str, Summary], np.ndarray]:
    names = list(dict.fromkeys([*policies, ORACLE]))
    jobs = [(scenario, p, s) for p in names for s in seeds]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            out = list(pool.map(_job, jobs))
    else:
        out = [_job(j) for j in jobs]
    runs = {(p, s): (r, c) for p, s, r, c in out}
    ts = checkpoints(scenario.horizon)
    summaries = {}
    for p in policies:
        regrets = np.array([runs[ORACLE, s][1][ts - 1] - runs[p, s][1][ts - 1] for s in seeds])
        curve = regrets.mean(axis=0)
        results = [runs[p, s][0] for s in seeds]
        summaries[p] = Summary(
            policy=p,
            mean_reward=float(np.mean([r.mean_reward for r in results])),
            page_ins=float(np.mean([r.page_ins for r in results])),
            paging_s=float(np.mean([r.paging_s for r in results])),
            hit_rate=float(np.mean([r.hit_rate for r in results])),
            regret=float(curve[-1]),
            regret_exponent=fit_exponent(ts, curve) if p != ORACLE else float("nan"),
            regret_curve=curve,
            max_resident=max(r.max_resident for r in results),
            capacity=results[0].capacity,
            epochs_failed=sum(r.epochs_failed for r in results),
        )
    return summaries, ts


def write_json(
    path: str | Path, scenario: ScenarioConfig, seeds: Sequence[int], summaries: dict[str, Summary]
) -> None:
    doc = {
        "scenario": scenario.name,
        "horizon": scenario.horizon,
        "seeds": list(seeds),
        "policies": {name: s.as_json() for name, s in summaries.items()},
    }
    Path(path).write_text(json.dumps(doc, indent=2, allow_nan=True) + "\n")


def plot(
    path: str | Path,
    scenario: ScenarioConfig,
    summaries: dict[str, Summary],
    ts: np.ndarray,
    seeds: int,
) -> None:
    plt = require_pyplot()

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=80)
    for name, s in summaries.items():
        if name == ORACLE:
            continue
        keep = s.regret_curve > 0
        left.plot(ts[keep], s.regret_curve[keep], label=f"{name} (exp {s.regret_exponent:.2f})")
    left.set(xscale="log", yscale="log", xlabel="requests T", ylabel="regret vs oracle")
    left.legend(fontsize=7)
    names = list(summaries)
    right.bar(names, [summaries[n].page_ins for n in names], color="tab:gray")
    right.set(ylabel="page-ins (mean over seeds)")
    right.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"scenario {scenario.name}: T={scenario.horizon}, {seeds} seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
