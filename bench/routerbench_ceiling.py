"""How far above the per-task best model can a router get on routerbench_zs with full information?

    .venv/bin/python bench/routerbench_ceiling.py [--dataset ../shared/data/routerbench_zs]

A bandit learns from the chosen model's reward only; this gives a supervised
router every model's reward on every training prompt instead, an upper bound
for what the same features could teach. It trains on the ``*_train`` files and
routes the ``*_test`` files:

- ``per_task_best``: the model with the best mean reward per task on *_train;
- ``ridge d=...``: per model, a ridge regression of the reward (quality -
  30 x cost by default) on the project's hashed featurizer (task one-hot,
  prompt statistics, hashed words and bigrams) at several dimensions and
  ridge strengths, choosing the model with the highest prediction;
- ``knn k=...``: mean reward of each model over the k training prompts of the
  same task with the most similar hashed text (cosine).

It prints each router's mean reward on *_test, and the per-task best and the
per-prompt oracle of *_test in hindsight, side by side.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from learners.datasets import read_routerbench
from learners.featurize import Featurizer
from learners.replay.objective import parse_objective


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", default="../shared/data/routerbench_zs")
    ap.add_argument("--objective", default="quality=1,cost_usd=-30")
    ap.add_argument("--dims", default="64,1024,8192")
    ap.add_argument("--ridges", default="1,10,100")
    args = ap.parse_args()
    if not Path(args.dataset).is_dir():
        raise SystemExit(f"no data set at {args.dataset}")
    w = parse_objective(args.objective)
    train = read_routerbench(args.dataset, "*_train.csv")
    test = read_routerbench(args.dataset, "*_test.csv")
    S_tr, S_te = train.rewards() @ w, test.rewards() @ w
    tasks = sorted(set(train.tasks.tolist()))
    rows = np.arange(len(test))
    out: list[tuple[str, float]] = []

    pick = np.empty(len(test), dtype=np.intp)
    for t in tasks:
        pick[test.tasks == t] = int(S_tr[train.tasks == t].mean(axis=0).argmax())
    out.append(("per_task_best (chosen on train)", float(S_te[rows, pick].mean())))

    dims = [int(d) for d in args.dims.split(",")]
    for dim in dims:
        feat = Featurizer.for_tasks(tasks, dim=dim)
        X_tr, X_te = feat.featurize_many(train.requests), feat.featurize_many(test.requests)
        for lam in [float(r) for r in args.ridges.split(",")]:
            pred = np.empty_like(S_te)
            for t in tasks:  # one model per task and arm: the task is never worse off
                a, b = train.tasks == t, test.tasks == t
                A = X_tr[a].T @ X_tr[a] + lam * np.eye(dim)
                theta = np.linalg.solve(A, X_tr[a].T @ S_tr[a])  # (dim, K)
                pred[b] = X_te[b] @ theta
            out.append((f"ridge d={dim} lambda={lam:g}", float(S_te[rows, pred.argmax(1)].mean())))
        if dim == max(dims):  # nearest neighbours on the finest hashing only
            T_tr, T_te = X_tr[:, feat.text_start :], X_te[:, feat.text_start :]
            for k in (10, 50):
                pred = np.empty_like(S_te)
                for t in tasks:
                    a, b = np.flatnonzero(train.tasks == t), np.flatnonzero(test.tasks == t)
                    sim = T_te[b] @ T_tr[a].T
                    near = np.argsort(-sim, axis=1)[:, :k]
                    pred[b] = S_tr[a][near].mean(axis=1)
                out.append(
                    (f"knn k={k} (hashed text, d={dim})", float(S_te[rows, pred.argmax(1)].mean()))
                )

    ref = out[0][1]
    print(
        f"routerbench_zs: train {len(train)} rows, test {len(test)} rows; objective {args.objective}"
    )
    print(
        f"{'router (full information on *_train)':<44} {'reward on *_test':>16} {'vs per-task best':>17}"
    )
    for name, value in out:
        print(f"{name:<44} {value:>16.4f} {value - ref:>+17.4f}")
    oracle = float(S_te.max(axis=1).mean())
    hindsight = sum(
        float(S_te[test.tasks == t].mean(axis=0).max()) * int((test.tasks == t).sum())
        for t in tasks
    ) / len(test)
    print(
        f"{'per-task best of *_test, in hindsight':<44} {hindsight:>16.4f} {hindsight - ref:>+17.4f}"
    )
    print(
        f"{'per-prompt oracle of *_test, in hindsight':<44} {oracle:>16.4f} {oracle - ref:>+17.4f}"
    )


if __name__ == "__main__":
    main()
