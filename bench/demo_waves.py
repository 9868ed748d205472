"""The demo's waves replayed offline, over many seeds: what `banditctl demo --requests N`
prints for each seed, without Ray or a database.

    python bench/demo_waves.py [--seeds 20] [--requests 300] [--wave 20]

It draws each seed's rows and feedback as the demo's traffic does, decides each wave with
the policy that learned all feedback before it (the gateway's draws seeded as the demo's
gateway seeds them), then learns the wave's feedback, in order. A live run in waves makes
the same decisions, so this shows the spread over seeds that a few live runs cannot.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controlplane.cli.demo import demo_config  # noqa: E402
from learners.base import RewardEvent  # noqa: E402
from learners.registry import make_learner  # noqa: E402
from learners.replay.dataset import dataset_for  # noqa: E402


def run(seed: int, n: int, wave: int, feedback_rate: float = 0.9) -> tuple[float, float, float]:
    """(second half's mean reward, its share to each task's best arm, always-best-arm's)."""
    cfg = demo_config()
    r = cfg.replay
    ds = dataset_for(r.dataset, r.synthetic_rows, r.seed)
    w = cfg.objective.weight_vector
    rewards = ds.rewards()
    objective = rewards @ w
    arms = [a.name for a in cfg.arms]
    rng = np.random.default_rng(seed)  # as controlplane.cli.demo.run_traffic draws
    rows = rng.integers(0, len(ds), size=n)
    gives_feedback = rng.random(n) < feedback_rate
    gateway_rng = np.random.default_rng(cfg.gateway.seed)
    learner = make_learner(cfg.learner, cfg.featurizer.dim, w)
    chosen = []
    for lo in range(0, n, wave):
        events = []
        for j in range(lo, min(n, lo + wave)):
            i = int(rows[j])
            body = {"model": "auto", "messages": ds.requests[i]["messages"],
                    "metadata": {"replay_row": i, "task": str(ds.tasks[i])}}  # fmt: skip
            x = cfg.featurizer.featurize(body)
            d = learner.select(x, arms, gateway_rng)
            k = arms.index(d.arm)
            chosen.append((i, k))
            if gives_feedback[j]:
                events.append(RewardEvent(x, d.arm, rewards[i, k], d.propensity))
        learner.update(events)
    idx = np.array(chosen)
    got = objective[idx[:, 0], idx[:, 1]]
    half = n // 2
    tasks = np.array([str(ds.tasks[i]) for i in idx[:, 0]])
    best = {t: int(np.argmax(objective[idx[tasks == t, 0]].mean(axis=0))) for t in set(tasks)}
    share = float(np.mean([idx[j, 1] == best[tasks[j]] for j in range(half, n)]))
    fixed = float(objective[idx[:, 0]].mean(axis=0).max())
    return float(got[half:].mean()), share, fixed


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--wave", type=int, default=20)
    args = ap.parse_args()
    res = np.array([run(s, args.requests, args.wave) for s in range(args.seeds)])
    for s, (second, share, fixed) in enumerate(res):
        print(
            f"seed {s:3d}: second half {second:.3f}, to each task's best arm {share:4.0%}; always the best arm {fixed:.3f}"
        )
    second, share, fixed = res[:, 0], res[:, 1], res[:, 2]
    print(
        f"over {args.seeds} seeds: second half {second.min():.3f}-{second.max():.3f} (mean {second.mean():.3f}); "
        f"to each task's best arm {share.min():.0%}-{share.max():.0%} (mean {share.mean():.0%}); "
        f"above always the best arm in {int((second > fixed).sum())} of {args.seeds}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
