"""What the dashboard shows, computed from the database (no HTTP here).

Definitions the page's tooltips repeat:

- *mean reward*: the objective's scalar over decisions the learner credited
  with a quality (user feedback, the prior for unrated ones, or the error
  quality), with that decision's energy, latency and cost.
- *best arm*: the arm with the highest mean reward so far among arms with at
  least ``min(10, most rewarded)`` credited decisions. *Saved* compares the mean
  cost (energy) per answered request with that arm's own mean; the arms served
  different request mixes, so it is an estimate, not a counterfactual.
- *exploration rate*: over the newest decisions, the share whose arm was not
  the one with the highest mean reward estimate under the policy version that
  made the decision (its snapshot is replayed on the logged context); for a
  learner that does not choose by its mean estimates (``greedy_by_estimates``
  false: the baselines, VW), the share logged with propensity < 0.5.
"""

from __future__ import annotations

import math
import uuid
from collections import OrderedDict, defaultdict
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection

from controlplane.config import BanditConfig
from controlplane.learner_loop import snapshot_learner
from feedback.errors import NotFound
from feedback.repositories import reports, reward_stream, snapshots
from feedback.repositories import residency as residency_repo
from learners import Learner

EXPLORATION_WINDOW = 200


class PolicyCache:
    """A few snapshot learners by version, to replay recent decisions."""

    def __init__(self, config: BanditConfig, size: int = 16) -> None:
        self.config = config
        self.size = size
        self._learners: OrderedDict[int, Learner] = OrderedDict()

    def get(self, conn: Connection, version: int) -> Learner:
        learner = self._learners.get(version)
        if learner is None:
            try:
                state: bytes | None = snapshots.get_snapshot(conn, version)["state"]
            except NotFound:  # version 0: a gateway's start-up policy
                state = None
            learner = snapshot_learner(self.config, state)
            self._learners[version] = learner
            while len(self._learners) > self.size:
                self._learners.popitem(last=False)
        self._learners.move_to_end(version)
        return learner


def exploration_rate(
    conn: Connection, config: BanditConfig, cache: PolicyCache, window: int = EXPLORATION_WINDOW
) -> dict[str, Any]:
    explored = counted = 0
    methods: set[str] = set()
    for r in reports.recent_decisions(conn, window):
        learner = cache.get(conn, int(r["policy_version"]))
        if not learner.greedy_by_estimates:
            methods.add("propensity")
            explored += r["propensity"] < 0.5
            counted += 1
            continue
        try:
            arms = list(config.route_arms(r["route"]))
        except KeyError:  # a route since removed from the config
            continue
        x = np.frombuffer(r["context"], dtype="<f4").astype(np.float64)
        mean, _ = learner.estimates(x, arms)
        methods.add("greedy")
        explored += arms[int(np.argmax(mean))] != r["arm_id"]
        counted += 1
    return {
        "rate": explored / counted if counted else None,
        "decisions": counted,
        "method": "+".join(sorted(methods)) or None,
    }


def overview(
    conn: Connection, config: BanditConfig, cache: PolicyCache, now: datetime | None = None
) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    arms = reports.outcome_stats_by_arm(conn, config.objective)
    requests = sum(a["decisions"] for a in arms)
    ok = sum(a["ok"] for a in arms)
    rewarded = sum(a["rewarded"] for a in arms)
    mean_cost = sum(a["total_cost_usd"] for a in arms) / ok if ok else None
    mean_energy = sum(a["total_energy_j"] for a in arms) / ok if ok else None
    mean_reward = (
        sum(a["mean_reward"] * a["rewarded"] for a in arms if a["rewarded"]) / rewarded
        if rewarded
        else None
    )
    best = _best_arm(arms)
    progress = reports.learner_progress(conn)
    return _finite_dict(
        {
            "requests": requests,
            "answered": ok,
            "errors": sum(a["errors"] for a in arms),
            "rewarded": rewarded,
            "feedback": sum(reports.feedback_counts(conn).values()),
            "mean_reward": mean_reward,
            "mean_cost_usd": mean_cost,
            "mean_energy_j": mean_energy,
            "best_arm": None if best is None else best["arm"],
            "best_arm_mean_reward": None if best is None else best["mean_reward"],
            "best_arm_mean_cost_usd": None if best is None else best["mean_cost_usd"],
            "best_arm_mean_energy_j": None if best is None else best["mean_energy_j"],
            "cost_saved_usd": _saved(best, mean_cost, "mean_cost_usd"),
            "cost_saved_pct": _saved_pct(best, mean_cost, "mean_cost_usd"),
            "energy_saved_j": _saved(best, mean_energy, "mean_energy_j"),
            "energy_saved_pct": _saved_pct(best, mean_energy, "mean_energy_j"),
            "exploration": exploration_rate(conn, config, cache),
            "learner_lag": reward_stream.learner_lag(conn, config.objective, now),
            "learner": {
                "version": int(progress["version"]),
                "watermark": int(progress["watermark"]),
                "events_applied": int(progress["events_applied"]),
                "events_per_s": progress["events_per_s"],
            },
            "objective": config.objective.weights,
            "arms": arms,
            "time": now.isoformat(),
        }
    )


def _best_arm(arms: list[dict[str, Any]]) -> dict[str, Any] | None:
    rated = [a for a in arms if a["rewarded"] and a["mean_reward"] is not None]
    if not rated:
        return None
    floor = min(10, max(a["rewarded"] for a in rated))
    return max((a for a in rated if a["rewarded"] >= floor), key=lambda a: a["mean_reward"])


def _saved(best: dict[str, Any] | None, mean: float | None, key: str) -> float | None:
    if best is None or mean is None or best[key] is None:
        return None
    return float(best[key] - mean)


def _saved_pct(best: dict[str, Any] | None, mean: float | None, key: str) -> float | None:
    saved = _saved(best, mean, key)
    if saved is None or best is None or not best[key]:
        return None
    return 100.0 * saved / float(best[key])


def learning_curves(conn: Connection, config: BanditConfig, buckets: int = 40) -> dict[str, Any]:
    return _finite_dict(
        {
            "objective": config.objective.weights,
            "buckets": reports.reward_curve(conn, config.objective, buckets),
        }
    )


def recent_feedback(conn: Connection, limit: int = 50) -> dict[str, Any]:
    return {"items": [_finite(_plain(r)) for r in reports.recent_feedback(conn, limit)]}


def residency(conn: Connection, limit: int = 500) -> dict[str, Any]:
    """Per replica, its epochs (oldest first) with hit rate; and totals."""
    by_replica: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in reversed(residency_repo.list_residency_epochs(conn, limit)):
        seen = int(r["hits"]) + int(r["misses"])
        by_replica[r["replica"]].append(
            {
                "epoch": int(r["epoch"]),
                "adapters": list(r["adapters"]),
                "started_at": r["started_at"].isoformat(),
                "ended_at": None if r["ended_at"] is None else r["ended_at"].isoformat(),
                "status": r["status"],
                "page_ins": int(r["page_ins"]),
                "hits": int(r["hits"]),
                "misses": int(r["misses"]),
                "hit_rate": int(r["hits"]) / seen if seen else None,
            }
        )
    totals = []
    for t in reports.residency_totals(conn):
        seen = int(t["hits"]) + int(t["misses"])
        totals.append(
            {
                "replica": t["replica"],
                "epochs": int(t["epochs"]),
                "page_ins": int(t["page_ins"]),
                "hits": int(t["hits"]),
                "misses": int(t["misses"]),
                "hit_rate": int(t["hits"]) / seen if seen else None,
            }
        )
    return {
        "replicas": [{"replica": k, "epochs": v} for k, v in sorted(by_replica.items())],
        "totals": totals,
    }


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, datetime):
            out[k] = v.isoformat()
        elif isinstance(v, uuid.UUID):
            out[k] = str(v)
        else:
            out[k] = v
    return out


def _finite_dict(obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = _finite(obj)
    return out


def _finite(obj: Any) -> Any:
    """NaN and infinities are not JSON: null instead."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
