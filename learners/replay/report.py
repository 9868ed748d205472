"""Text table and PNG figure for a replay result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from learners.replay.simulator import ReplayResult


def _ci(v: dict[str, Any], key: str, ci: str, fmt: str) -> str:
    lo, hi = v[ci]
    return f"{v[key]:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def format_table(summary: dict[str, Any]) -> str:
    """The text table; cost columns are left out when every arm costs the same (say 0)."""
    refs = summary["references"]
    top = refs["best_quality_model"]["arm"]
    with_cost = not summary.get("constant_cost", False)
    head = f"{'learner':<16} {'mean reward':>26} {'quality':>24} "
    if with_cost:
        head += f"{'cost USD':>30} {'%q ' + top[:10]:>14} {'%cost':>7} "
    else:
        head += f"{'%q ' + top[:10]:>14} "
    head += f"{'regret vs best fixed':>28} {'regret vs oracle':>28} {'task gain':>9}"
    lines = [
        f"{len(summary['seeds'])} seeds x {summary['n']} prompts; 95% intervals over seeds",
        head,
    ]
    for name, v in summary["learners"].items():
        row = (
            f"{name:<16} {_ci(v, 'mean_reward', 'reward_ci95', '.4f'):>26} "
            f"{_ci(v, 'mean_quality', 'quality_ci95', '.3f'):>24} "
        )
        if with_cost:
            row += f"{_ci(v, 'mean_cost', 'cost_ci95', '.6f'):>30} "
        row += f"{v['pct_best_model_quality']:>13.1f}% "
        if with_cost:
            pct = v["pct_best_model_cost"]
            row += f"{pct:>6.1f}% " if pct is not None else f"{'-':>7} "
        row += (
            f"{_ci(v, 'regret_vs_best_fixed', 'regret_vs_best_fixed_ci95', '.1f'):>28} "
            f"{_ci(v, 'regret_vs_oracle', 'regret_vs_oracle_ci95', '.1f'):>28}"
        )
        share = v.get("share_of_task_gain")
        row += f" {share:>8.0%}" if share is not None else f" {'-':>8}"
        lines.append(row)
    comp = summary.get("comparisons") or {}
    if comp:
        lines.append(
            f"best learner {comp['best']} against the others "
            "(mean reward difference, paired by seed, with its 95% interval):"
        )
        for name, c in comp["against"].items():
            lo, hi = c["diff_ci95"]
            verdict = "beats" if c["beats"] else "does not beat"
            extra = ", intervals disjoint" if c["disjoint"] else ""
            lines.append(
                f"  vs {name:<18} {c['diff']:+.4f} [{lo:+.4f}, {hi:+.4f}]  {verdict}{extra}"
            )
    lines.append(
        "task gain: (mean reward - best fixed) / (per-task best - best fixed), the share of "
        "what knowing each prompt's task gives in hindsight"
    )
    lines.append("references (hindsight, whole stream):")
    for name, r in refs.items():
        what = r.get("arm") or ", ".join(f"{k}->{m}" for k, m in r.get("arms", {}).items())
        cost = f"cost {r['mean_cost']:.6f}  " if with_cost else ""
        lines.append(
            f"  {name:<20} reward {r['mean_reward']:.4f}  quality {r['mean_quality']:.3f}  "
            f"{cost}{what}"
        )
    for note in summary.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def require_pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or an error naming the extra that installs it."""
    try:
        import matplotlib
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "plots need matplotlib: pip install 'banditctl[sim]'", name=exc.name
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(result: ReplayResult, summary: dict[str, Any], path: str | Path) -> None:
    plt = require_pyplot()

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(18, 5.5))
    steps = np.arange(1, result.n + 1)
    for name, runs in result.traces.items():
        for ax, attr in ((ax1, "regret_fixed"), (ax2, "regret_oracle")):
            curves = np.array([np.cumsum(getattr(r, attr)) for r in runs])
            m = curves.mean(axis=0)
            ax.plot(steps, m, label=name)
            if len(runs) > 1:
                h = 1.96 * curves.std(axis=0, ddof=1) / np.sqrt(len(runs))
                ax.fill_between(steps, m - h, m + h, alpha=0.2)
    ax1.set(title="cumulative regret vs best fixed model", xlabel="prompts", ylabel="regret")
    ax2.set(title="cumulative regret vs per-prompt oracle", xlabel="prompts", ylabel="regret")
    ax1.axhline(0, color="grey", lw=0.5)
    ax1.legend(fontsize=8)
    if summary.get("constant_cost", False):  # no cost axis: quality per learner
        names = list(summary["learners"])
        ax3.barh(names, [summary["learners"][n]["mean_quality"] for n in names])
        for name in ("oracle", "per_task_best", "best_fixed"):
            ax3.axvline(refs_q := summary["references"][name]["mean_quality"], ls="--", lw=0.8)
            ax3.annotate(name, (refs_q, 0), fontsize=7, rotation=90)
        ax3.set(title="mean quality (every arm costs the same)", xlabel="mean quality")
    else:
        _frontier(ax3, result, summary)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _frontier(ax: Any, result: ReplayResult, summary: dict[str, Any]) -> None:
    for name, v in summary["learners"].items():
        ax.scatter(v["mean_cost"], v["mean_quality"], marker="o", s=50)
        ax.annotate(name, (v["mean_cost"], v["mean_quality"]), fontsize=8)
    refs = summary["references"]
    for name in ("oracle", "per_task_best"):
        r = refs[name]
        ax.scatter(r["mean_cost"], r["mean_quality"], marker="*", s=120, color="black")
        ax.annotate(name, (r["mean_cost"], r["mean_quality"]), fontsize=8)
    ds_q, ds_c = result.model_quality, result.model_cost
    if ds_q is not None and ds_c is not None:
        ax.scatter(ds_c, ds_q, marker="x", color="grey", label="single models")
        for m, q, c in zip(result.models, ds_q, ds_c, strict=True):
            ax.annotate(m.split("/")[-1], (c, q), fontsize=6, color="grey")
    if np.all(np.asarray(ds_c) > 0):
        ax.set_xscale("log")
    ax.set(
        title="quality / cost frontier", xlabel="mean cost per prompt (USD)", ylabel="mean quality"
    )
