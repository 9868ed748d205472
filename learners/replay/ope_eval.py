"""Off-policy evaluation of candidates on a log, over seeds: the ``banditctl ope`` document.

One seed of a log gives every candidate the five estimates of :mod:`learners.ope`
(each with its 95% normal interval and effective sample size), the share of its picks
that go where the logger almost never goes, and, when the log was written from a
full-information data set, the true value of the same picks. The headline
``estimate`` and ``ci95`` are DR's, and ``covered`` says whether the true value lies in
that interval.

Pooled over seeds, an estimator's value is the mean of the per-seed values. When every
seed has a log of its own (independent replays of the same rows), its interval is
``mean +- 1.96 sqrt(sum se_s^2) / S``: the seeds' errors are independent, so this interval
is for the mean of the per-seed true values, which is the pooled ``true_value``. When the
seeds share one log (the database's: only the candidates' own draws differ), their errors
are not independent and the interval is ``mean +- 1.96 mean(se_s)``, no narrower than a
seed's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from learners.base import REWARD_COMPONENTS
from learners.ope import (
    DEFAULT_CLIP,
    DEFAULT_SWITCH_TAU,
    ESTIMATORS,
    Z95,
    Estimate,
    LoggedData,
    doubly_robust,
    evaluate,
    importance_weights,
    low_propensity_share,
    reward_model,
)
from learners.replay.ope_policies import Candidate, ReplayLog, replay_candidate, stream_rng

HEADLINE = "dr"
LOW_SHARE = 0.05  # warn when this share of a candidate's picks go to rarely logged arms


@dataclass(frozen=True)
class Settings:
    clip: float = DEFAULT_CLIP
    switch_tau: float = DEFAULT_SWITCH_TAU
    min_propensity: float = 0.01
    ridge: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "clip": self.clip,
            "switch_tau": self.switch_tau,
            "min_propensity": self.min_propensity,
            "low_propensity_share": LOW_SHARE,
            "ridge": self.ridge,
            "interval": "normal, mean +- 1.96 se of the per-row terms (delta method for snips)",
            "headline": HEADLINE,
        }


@dataclass(frozen=True)
class Log:
    """What the estimators read: a log in time order, and the truth where it is known."""

    data: LoggedData  # scalar rewards under the evaluation objective
    reward_vectors: np.ndarray  # (n, 4) the logged arm's reward vector, as learners learn it
    logger_probs: np.ndarray | None = None  # (n, K) where the logging policy is known
    full_rewards: np.ndarray | None = None  # (n, K) every arm's reward: the truth


def _estimate(e: Estimate) -> dict[str, Any]:
    return {"value": e.value, "ci95": [e.ci95[0], e.ci95[1]], "ess": e.ess}


def evaluate_seed(
    log: Log,
    candidates: Sequence[Candidate],
    seed: int,
    settings: Settings = Settings(),
) -> dict[str, dict[str, Any]]:
    """Every candidate on one log: a dict per candidate (see the module's docstring)."""
    data = log.data
    q = reward_model(data, settings.ridge)
    comp_models = []  # per reward component, for the breakdown
    for i, c in enumerate(REWARD_COMPONENTS):
        logs = _component_logs(log, i)
        comp_models.append((c, logs, reward_model(logs, settings.ridge)))
    out: dict[str, dict[str, Any]] = {}
    for cand in candidates:
        run = replay_candidate(
            cand,
            data.contexts,
            data.actions,
            data.propensities,
            log.reward_vectors,
            data.arms,
            stream_rng(seed, cand.name),
        )
        pi = run.pi
        est = evaluate(data, pi, clip=settings.clip, tau=settings.switch_tau, q=q)
        w = importance_weights(data, pi)
        share = low_propensity_share(data, pi, settings.min_propensity, log.logger_probs)
        row: dict[str, Any] = {
            "estimate": est[HEADLINE].value,
            "ci95": list(est[HEADLINE].ci95),
            "true_value": None,
            "covered": None,
            "estimators": {k: _estimate(v) for k, v in est.items()},
            "ess": est["ips"].ess,
            "max_weight": float(w.max()),
            "matched": int((w > 0).sum()),
            "updates": run.updates,
            "low_propensity_share": share,
            "components": {c: doubly_robust(logs, pi, q=cq).value for c, logs, cq in comp_models},
            "arm_share": dict(zip(data.arms, pi.mean(axis=0).tolist(), strict=True)),
        }
        if log.full_rewards is not None:
            truth = float((pi * log.full_rewards).sum(axis=1).mean())
            lo, hi = est[HEADLINE].ci95
            row["true_value"] = truth
            row["covered"] = bool(lo <= truth <= hi)
        out[cand.name] = row
    return out


def _component_logs(log: Log, i: int) -> LoggedData:
    d = log.data
    return LoggedData(d.contexts, d.actions, d.propensities, log.reward_vectors[:, i], d.arms)


def from_replay(replay: ReplayLog, models: Sequence[str]) -> Log:
    """The log of a data set replayed under a logging policy, with its truth."""
    data = LoggedData(
        replay.contexts, replay.actions, replay.propensities, replay.rewards, tuple(models)
    )
    return Log(data, replay.reward_vectors, replay.logger_probs, replay.full_rewards)


def logger_row(log: Log) -> dict[str, Any]:
    """The logging policy's own value: the mean logged reward (on-policy), 95% interval."""
    r = log.data.rewards
    e = Estimate.from_terms(r)
    row: dict[str, Any] = {"estimate": e.value, "ci95": list(e.ci95), "true_value": None}
    if log.logger_probs is not None and log.full_rewards is not None:
        row["true_value"] = float((log.logger_probs * log.full_rewards).sum(axis=1).mean())
    return row


def pool(per_seed: list[dict[str, Any]], independent: bool = True) -> dict[str, Any]:
    """One candidate's rows over seeds -> its pooled row; ``independent``: each seed had a
    log of its own (the module's docstring)."""
    s = len(per_seed)

    def pooled(values: list[float], cis: list[list[float]]) -> tuple[float, list[float]]:
        m = float(np.mean(values))
        ses = [(hi - lo) / (2 * Z95) for lo, hi in cis]
        se = float(np.sqrt(np.sum(np.square(ses)))) / s if independent else float(np.mean(ses))
        return m, [m - Z95 * se, m + Z95 * se]

    estimators: dict[str, dict[str, Any]] = {}
    for k in ESTIMATORS:
        vals = [r["estimators"][k]["value"] for r in per_seed]
        m, ci = pooled(vals, [r["estimators"][k]["ci95"] for r in per_seed])
        ess = float(np.mean([r["estimators"][k]["ess"] for r in per_seed]))
        estimators[k] = {"value": m, "ci95": ci, "ess": ess}
    head = estimators[HEADLINE]
    truths = [r["true_value"] for r in per_seed]
    truth = None if any(t is None for t in truths) else float(np.mean(truths))
    share = float(np.mean([r["low_propensity_share"] for r in per_seed]))
    row: dict[str, Any] = {
        "estimate": head["value"],
        "ci95": head["ci95"],
        "true_value": truth,
        "covered": None if truth is None else bool(head["ci95"][0] <= truth <= head["ci95"][1]),
        "estimators": estimators,
        "ess": estimators["ips"]["ess"],
        "max_weight": float(max(r["max_weight"] for r in per_seed)),
        "matched": float(np.mean([r["matched"] for r in per_seed])),
        "updates": float(np.mean([r["updates"] for r in per_seed])),
        "low_propensity_share": share,
        "components": {
            c: float(np.mean([r["components"][c] for r in per_seed])) for c in REWARD_COMPONENTS
        },
        "arm_share": {
            a: float(np.mean([r["arm_share"][a] for r in per_seed]))
            for a in per_seed[0]["arm_share"]
        },
        "warnings": [],
    }
    if truth is not None:
        row["covered_seeds"] = sum(bool(r["covered"]) for r in per_seed)
    if share >= LOW_SHARE:
        row["warnings"].append(
            f"{100 * share:.0f}% of its picks go where the logger picks with probability "
            f"below the minimum propensity: its estimate rests on few rows with large weights "
            f"(max weight {row['max_weight']:.0f}) and cannot see what the logger never tried"
        )
    return row


def run(
    logs: Sequence[tuple[int, Log]],
    candidates: Sequence[Candidate],
    settings: Settings = Settings(),
) -> dict[str, Any]:
    """Evaluate every candidate on every (seed, log); returns the pooled document. Seeds
    given the same ``Log`` object share it (pooled as not independent)."""
    independent = len({id(log) for _, log in logs}) == len(logs)
    per_seed: dict[str, list[dict[str, Any]]] = {c.name: [] for c in candidates}
    loggers = []
    for seed, log in logs:
        for name, row in evaluate_seed(log, candidates, seed, settings).items():
            per_seed[name].append({"seed": seed, **row})
        loggers.append({"seed": seed, **logger_row(log)})
    out: dict[str, Any] = {}
    for name, rows in per_seed.items():
        out[name] = {**pool(rows, independent), "seeds": rows}
    known = [r for r in out.values() if r["covered"] is not None]
    logger_truth = [r["true_value"] for r in loggers]
    logger = {
        "estimate": float(np.mean([r["estimate"] for r in loggers])),
        "true_value": None if None in logger_truth else float(np.mean(logger_truth)),
        "seeds": loggers,
    }
    return {
        "candidates": out,
        "logger": logger,
        "coverage": None
        if not known
        else {"covered": sum(r["covered"] for r in known), "of": len(known)},
        "n": int(len(logs[0][1].data.actions)) if logs else 0,
        "seeds": [s for s, _ in logs],
        "independent_seeds": independent,
        "arms": list(logs[0][1].data.arms) if logs else [],
        "settings": settings.as_dict(),
    }


def _ci(v: float, ci: list[float]) -> str:
    return f"{v:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"


def format_table(doc: dict[str, Any]) -> str:
    """The readable table: the DR estimate with its interval, the truth where known, and
    the other estimators' values."""
    seeds = doc["seeds"]
    has_truth = doc["coverage"] is not None
    lines = [
        f"{doc['n']} logged rows x {len(seeds)} seed(s); 95% normal intervals"
        + (", pooled over seeds" if len(seeds) > 1 else ""),
        f"{'candidate':<28} {'DR estimate [95%]':>26}"
        + (f" {'true':>7} {'covered':>8}" if has_truth else "")
        + f" {'IPS':>7} {'clipIPS':>7} {'SNIPS':>7} {'SwitchDR':>8} {'ESS':>7} {'matched':>8}",
    ]
    for name, r in doc["candidates"].items():
        e = r["estimators"]
        truth = ""
        if has_truth:
            cov = f"{r['covered_seeds']}/{len(seeds)}" if len(seeds) > 1 else ""
            truth = f" {r['true_value']:>7.4f} {('yes' if r['covered'] else 'NO') + ' ' + cov:>8}"
        lines.append(
            f"{name:<28} {_ci(r['estimate'], r['ci95']):>26}{truth}"
            f" {e['ips']['value']:>7.4f} {e['clipped_ips']['value']:>7.4f}"
            f" {e['snips']['value']:>7.4f} {e['switch_dr']['value']:>8.4f}"
            f" {r['ess']:>7.1f} {r['matched']:>8.0f}"
        )
    lg = doc["logger"]
    lines.append(
        f"logger (on-policy mean reward): {lg['estimate']:.4f}"
        + (f", true {lg['true_value']:.4f}" if lg["true_value"] is not None else "")
    )
    if has_truth:
        c = doc["coverage"]
        lines.append(f"true value inside the DR interval: {c['covered']} of {c['of']} candidates")
    for name, r in doc["candidates"].items():
        for w in r["warnings"]:
            lines.append(f"warning: {name}: {w}")
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: str | Path) -> None:
    """One row per candidate: every estimator's value and interval, and the truth (x)."""
    from learners.replay.report import require_pyplot

    plt = require_pyplot()
    names = list(doc["candidates"])
    fig, ax = plt.subplots(figsize=(9, 1.0 + 0.8 * len(names)))
    offsets = np.linspace(-0.3, 0.3, len(ESTIMATORS))
    for j, k in enumerate(ESTIMATORS):
        ys = np.arange(len(names)) + offsets[j]
        vals = [doc["candidates"][n]["estimators"][k]["value"] for n in names]
        lo = [
            v - doc["candidates"][n]["estimators"][k]["ci95"][0]
            for n, v in zip(names, vals, strict=True)
        ]
        hi = [
            doc["candidates"][n]["estimators"][k]["ci95"][1] - v
            for n, v in zip(names, vals, strict=True)
        ]
        ax.errorbar(vals, ys, xerr=[lo, hi], fmt="o", ms=4, capsize=2, label=k)
    truths = [doc["candidates"][n]["true_value"] for n in names]
    if all(t is not None for t in truths):
        ax.scatter(
            truths,
            np.arange(len(names)),
            marker="x",
            s=80,
            color="black",
            label="true value",
            zorder=3,
        )
    ax.set_yticks(np.arange(len(names)), names)
    ax.invert_yaxis()
    ax.set(xlabel="mean reward per decision", title="off-policy estimates, 95% intervals")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
