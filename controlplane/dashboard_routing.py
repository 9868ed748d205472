"""The routing the policy learned, per task: the dashboard's task x arm table.

Over the newest ``limit`` decisions of the window (one bounded index scan, never
the whole table), per task (``decisions.task``; unlabelled requests under
``(none)``) and arm:

- *share*: the arm's share of the task's decisions;
- *observed*: the mean reward of its credited decisions, with a 95% interval
  (:func:`controlplane.dashboard_stats.mean_interval`, moderated toward the
  pooled spread of the task's arms);
- *estimate*: the current policy's mean reward estimate at the task's typical
  context, the mean of the logged contexts of the task's decisions (for a linear
  model the mean of its predictions over those requests), and, for learners
  that keep a posterior (the linear ones), the 95% interval
  ``estimate ± 1.96 sd sqrt(x^T A^-1 x)`` with ``sd`` the standard deviation of
  all credited rewards in the sample (an upper bound on the noise around the
  model);
- *preferred*: the arm the policy picks for that context when it does not explore
  (highest estimate); for learners that do not choose by their estimates
  (random, fixed, VW), the arm that served most of the task's decisions;
- *best observed*: the task's best arm by the dashboard's one rule
  (:func:`controlplane.dashboard_stats.best_arm`) over the observed means.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
from sqlalchemy import Connection

from controlplane.config import BanditConfig
from controlplane.dashboard_data import PolicyCache, finite_dict
from controlplane.dashboard_stats import Window, best_arm, mean_interval, pooled_sd
from feedback.repositories import reports, snapshots

NO_TASK = "(none)"
Z95 = 1.959963984540054
ROUTING_LIMIT = 5000


def routing(
    conn: Connection,
    config: BanditConfig,
    cache: PolicyCache,
    window: Window,
    limit: int = ROUTING_LIMIT,
) -> dict[str, Any]:
    rows = reports.routing_sample(conn, config.objective, window.since, limit)
    version = snapshots.latest_version(conn)
    arms = list(dict.fromkeys([*(a.name for a in config.arms), *sorted({r["arm"] for r in rows})]))
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_task[r["task"] or NO_TASK].append(r)
    rewards = np.array([r["reward"] for r in rows if r["reward"] is not None], dtype=np.float64)
    noise_sd = float(rewards.std(ddof=1)) if len(rewards) >= 2 else None
    dim = config.featurizer.dim
    tasks: list[dict[str, Any]] = []
    learner_kind = None
    with cache.lock:
        learner = cache.get(conn, version)
        if learner is not None:
            learner_kind = learner.kind
            posterior = learner.greedy_by_estimates
            for task in sorted(by_task, key=lambda t: (t == NO_TASK, t)):
                tasks.append(
                    _task_row(task, by_task[task], arms, learner, posterior, noise_sd, dim)
                )
    return finite_dict(
        {
            "window": window.as_dict(),
            "limit": limit,
            "decisions": len(rows),
            "capped": len(rows) >= limit,
            "policy_version": version,
            "learner": learner_kind,
            "noise_sd": noise_sd,
            "arms": arms,
            "tasks": tasks,
        }
    )


def _task_row(
    task: str,
    rows: list[dict[str, Any]],
    arms: list[str],
    learner: Any,
    posterior: bool,
    noise_sd: float | None,
    dim: int,
) -> dict[str, Any]:
    contexts = [
        np.frombuffer(r["context"], dtype="<f4") for r in rows if len(r["context"]) == 4 * dim
    ]
    by_arm: dict[str, list[float]] = defaultdict(list)
    served: dict[str, int] = defaultdict(int)
    for r in rows:
        served[r["arm"]] += 1
        if r["reward"] is not None:
            by_arm[r["arm"]].append(float(r["reward"]))
    estimate = width = None
    if contexts:
        x = np.mean(np.stack(contexts), axis=0, dtype=np.float64)
        mean, w = learner.estimates(x, arms)
        estimate, width = np.asarray(mean, dtype=np.float64), np.asarray(w, dtype=np.float64)
    prior = pooled_sd(
        (len(v), float(np.std(v, ddof=1)) if len(v) >= 2 else None) for v in by_arm.values()
    )
    cells: list[dict[str, Any]] = []
    for i, arm in enumerate(arms):
        rewards = np.array(by_arm.get(arm, []), dtype=np.float64)
        n = len(rewards)
        observed = float(rewards.mean()) if n else None
        sd = float(rewards.std(ddof=1)) if n >= 2 else None
        est = None if estimate is None else float(estimate[i])
        wid = None if width is None else float(width[i])
        est_ci = None
        if posterior and est is not None and wid is not None and noise_sd is not None:
            half = Z95 * noise_sd * wid
            est_ci = [est - half, est + half]
        ci = mean_interval(n, observed, sd, prior_sd=prior)
        cells.append(
            {
                "arm": arm,
                "decisions": served.get(arm, 0),
                "share": served.get(arm, 0) / len(rows),
                "reward_n": n,
                "mean_reward": observed,
                "reward_ci": None if ci is None else list(ci),
                "estimate": est,
                "estimate_ci": est_ci,
                "width": wid,
            }
        )
    if posterior and estimate is not None:
        preferred, preferred_by = arms[int(np.argmax(estimate))], "estimate"
    else:
        top = max(cells, key=lambda c: (c["decisions"], [-ord(ch) for ch in c["arm"]]))
        preferred, preferred_by = top["arm"], "traffic"
    best = best_arm(cells)
    return {
        "task": task,
        "decisions": len(rows),
        "credited": sum(c["reward_n"] for c in cells),
        "contexts": len(contexts),
        "preferred": preferred,
        "preferred_by": preferred_by,
        "best_observed": None if best is None else best["arm"],
        "cells": cells,
    }
