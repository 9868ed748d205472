"""What the dashboard shows, computed from the database (no HTTP here).

Every figure covers a :class:`~controlplane.dashboard_stats.Window` (the decisions
made in its last seconds, or all time) unless it says "now". Definitions the
page's tooltips repeat:

- *mean reward*: the objective's scalar over decisions the learner credited
  with a quality (user feedback, the prior for unrated ones, or the error
  quality), with that decision's energy, latency and cost; per arm with its 95%
  interval (:func:`~controlplane.dashboard_stats.mean_interval`).
- *best arm*, the one baseline of the reward, cost and energy cards:
  :func:`~controlplane.dashboard_stats.best_arm`. Cost (energy) compares the
  mean cost (energy) per answered request with that arm's own mean in the window.
- *exploration rate*: over the newest decisions, the share whose arm was not
  the one with the highest mean reward estimate under the policy version that
  made the decision (its snapshot is replayed on the logged context); for a
  learner that does not choose by its mean estimates (``greedy_by_estimates``
  false: the baselines, VW), the share logged with propensity < 0.5.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections import OrderedDict, defaultdict
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection

from controlplane.config import BanditConfig
from controlplane.dashboard_stats import (
    BEST_ARM_RULE,
    Window,
    best_arm,
    compare,
    mean_interval,
    pooled_sd,
)
from controlplane.learner_loop import snapshot_learner
from feedback.errors import NotFound
from feedback.repositories import reports, reward_stream, snapshots
from learners import Learner

EXPLORATION_WINDOW = 200


class PolicyCache:
    """A few snapshot learners by version, to replay recent decisions.

    Requests read it from worker threads: hold ``lock`` while using a learner it
    returned (``estimates`` may add arms to it)."""

    def __init__(self, config: BanditConfig, size: int = 16) -> None:
        self.config = config
        self.size = size
        self.lock = threading.RLock()
        self._learners: OrderedDict[int, Learner | None] = OrderedDict()

    def get(self, conn: Connection, version: int) -> Learner | None:
        """The learner of ``version`` (0, a gateway's start-up policy: a fresh one);
        None when that version's state is no longer stored."""
        with self.lock:
            if version in self._learners:
                self._learners.move_to_end(version)
                return self._learners[version]
            learner: Learner | None
            if version == 0:
                learner = snapshot_learner(self.config, None)
            else:
                try:
                    state: bytes | None = snapshots.get_snapshot(conn, version)["state"]
                except NotFound:
                    state = None
                learner = None if state is None else snapshot_learner(self.config, state)
            self._learners[version] = learner
            while len(self._learners) > self.size:
                self._learners.popitem(last=False)
            return learner


def exploration_rate(
    conn: Connection,
    config: BanditConfig,
    cache: PolicyCache,
    window: Window | None = None,
    newest: int = EXPLORATION_WINDOW,
) -> dict[str, Any]:
    """Over the ``newest`` decisions of ``window``: the share that explored (above)."""
    explored = counted = 0
    methods: set[str] = set()
    since = None if window is None else window.since
    with cache.lock:
        for r in reports.recent_decisions_since(conn, newest, since):
            learner = cache.get(conn, int(r["policy_version"]))
            if learner is None:  # that version's state is gone: it cannot be replayed
                continue
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


def arm_rows(
    conn: Connection, config: BanditConfig, cache: PolicyCache, window: Window
) -> list[dict[str, Any]]:
    """Per arm (the config's, then any other logged in the window): the window's
    :func:`feedback.repositories.reports.arm_stats`, its share of the window's
    decisions, the 95% interval of its mean reward, and the current policy's pulls
    (every event it learned from, all time)."""
    stats = {a["arm"]: a for a in reports.arm_stats(conn, config.objective, window.since)}
    with cache.lock:
        learner = cache.get(conn, snapshots.latest_version(conn))
        summary = {} if learner is None else learner.arm_summary()
    total = sum(a["decisions"] for a in stats.values())
    prior = pooled_sd((a["reward_n"], a["reward_sd"]) for a in stats.values())
    rows = []
    for arm in dict.fromkeys([*(a.name for a in config.arms), *stats]):
        a = stats.get(arm) or _no_decisions(arm)
        ci = mean_interval(a["reward_n"], a["mean_reward"], a["reward_sd"], prior_sd=prior)
        pulls = summary.get(arm, {}).get("pulls")
        rows.append(
            {
                **a,
                "share": a["decisions"] / total if total else 0.0,
                "reward_ci": None if ci is None else list(ci),
                "policy_pulls": None if pulls is None else float(pulls),
            }
        )
    return rows


def _no_decisions(arm: str) -> dict[str, Any]:
    return {
        "arm": arm, "decisions": 0, "ok": 0, "errors": 0, "rewarded": 0, "reward_n": 0,
        "mean_reward": None, "reward_sd": None, "mean_quality": None, "mean_cost_usd": None,
        "mean_energy_j": None, "mean_latency_ms": None, "total_cost_usd": 0.0,
        "total_energy_j": 0.0,
    }  # fmt: skip


def overview(
    conn: Connection, config: BanditConfig, cache: PolicyCache, window: Window
) -> dict[str, Any]:
    arms = arm_rows(conn, config, cache, window)
    requests = sum(a["decisions"] for a in arms)
    ok = sum(a["ok"] for a in arms)
    rewarded = sum(a["rewarded"] for a in arms)
    mean_cost = sum(a["total_cost_usd"] for a in arms) / ok if ok else None
    mean_energy = sum(a["total_energy_j"] for a in arms) / ok if ok else None
    mean_quality = _weighted(arms, "mean_quality", "rewarded")
    mean_reward = _weighted(arms, "mean_reward", "reward_n")
    best = best_arm(arms)
    for a in arms:
        a["baseline"] = best is not None and a["arm"] == best["arm"]
    cost = compare(mean_cost, None if best is None else best["mean_cost_usd"])
    energy = compare(mean_energy, None if best is None else best["mean_energy_j"])
    progress = reports.learner_progress(conn)
    return finite_dict(
        {
            "window": window.as_dict(),
            "requests": requests,
            "answered": ok,
            "errors": sum(a["errors"] for a in arms),
            "rewarded": rewarded,
            "feedback": reports.feedback_since(conn, window.since),
            "mean_reward": mean_reward,
            "mean_quality": mean_quality,
            "mean_cost_usd": mean_cost,
            "mean_energy_j": mean_energy,
            "baseline": None if best is None else _baseline(best),
            "reward_vs_baseline": (
                None if best is None or mean_reward is None else mean_reward - best["mean_reward"]
            ),
            "cost": cost,
            "energy": energy,
            "best_arm": None if best is None else best["arm"],
            "best_arm_mean_reward": None if best is None else best["mean_reward"],
            "best_arm_mean_cost_usd": None if best is None else best["mean_cost_usd"],
            "best_arm_mean_energy_j": None if best is None else best["mean_energy_j"],
            "cost_saved_usd": cost["saved"],
            "cost_saved_pct": cost["saved_pct"],
            "energy_saved_j": energy["saved"],
            "energy_saved_pct": energy["saved_pct"],
            "exploration": exploration_rate(conn, config, cache, window),
            # past their deadline, uncredited: bounded by the lag, not by the traffic waiting
            "learner_lag": reward_stream.overdue(conn, config.objective, window.until),
            "learner": {
                "kind": config.learner.kind,
                "version": int(progress["version"]),
                "watermark": int(progress["watermark"]),
                "events_applied": int(progress["events_applied"]),
                "events_per_s": progress["events_per_s"],
            },
            "objective": config.objective.weights,
            "arms": arms,
            "time": window.until.isoformat(),
        }
    )


def _weighted(arms: list[dict[str, Any]], key: str, n_key: str) -> float | None:
    n = sum(a[n_key] for a in arms if a[key] is not None)
    if not n:
        return None
    return float(sum(a[key] * a[n_key] for a in arms if a[key] is not None) / n)


def _baseline(best: dict[str, Any]) -> dict[str, Any]:
    return {
        "arm": best["arm"],
        "rule": BEST_ARM_RULE,
        "reward_n": best["reward_n"],
        "mean_reward": best["mean_reward"],
        "reward_ci": best["reward_ci"],
        "mean_quality": best["mean_quality"],
        "mean_cost_usd": best["mean_cost_usd"],
        "mean_energy_j": best["mean_energy_j"],
        "mean_latency_ms": best["mean_latency_ms"],
    }


CURVE_KEYS = ("reward", "quality", "energy_j", "latency_ms", "cost_usd")


def learning_curves(
    conn: Connection, config: BanditConfig, window: Window, buckets: int = 40
) -> dict[str, Any]:
    """The window's decisions in ``buckets`` equal time slices (first to last): per
    slice, its start and end (epoch seconds), decisions, decisions per arm, and the
    means of the reward (credited decisions) and of each component."""
    t0, width, rows = reports.reward_curve_by_arm(conn, config.objective, buckets, window.since)
    slices: dict[int, dict[str, Any]] = {}
    for r in rows:
        k = int(r["k"])
        b = slices.setdefault(k, defaultdict(float))
        b["arms"] = {**b.get("arms", {}), r["arm"]: int(r["n"])}
        for key in ("n", "reward_n", "reward_sum", "quality_n", "quality_sum", "ok_n",
                    "energy_j_sum", "latency_ms_sum", "cost_usd_sum"):  # fmt: skip
            b[key] += float(r[key])
    out = []
    for k in sorted(slices):
        b = slices[k]
        means = {
            "reward": _ratio(b["reward_sum"], b["reward_n"]),
            "quality": _ratio(b["quality_sum"], b["quality_n"]),
            "energy_j": _ratio(b["energy_j_sum"], b["ok_n"]),
            "latency_ms": _ratio(b["latency_ms_sum"], b["ok_n"]),
            "cost_usd": _ratio(b["cost_usd_sum"], b["ok_n"]),
        }
        out.append(
            {
                "start": t0 + k * width,
                "end": t0 + (k + 1) * width,
                "n": int(b["n"]),
                "rewarded": int(b["reward_n"]),
                "arms": b["arms"],
                **means,
            }
        )
    return finite_dict(
        {"window": window.as_dict(), "objective": config.objective.weights, "buckets": out}
    )


def _ratio(total: float, n: float) -> float | None:
    return total / n if n else None


def recent_feedback(conn: Connection, window: Window, limit: int = 50) -> dict[str, Any]:
    rows = reports.recent_feedback_since(conn, limit, window.since)
    return {"window": window.as_dict(), "items": [_finite(_plain(r)) for r in rows]}


def residency(conn: Connection, window: Window, limit: int = 500) -> dict[str, Any]:
    """Per replica, its epochs (oldest first) with hit rate; and totals; over the
    epochs still open or ended in the window."""
    by_replica: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in reversed(reports.residency_epochs_since(conn, window.since, limit)):
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
    for t in reports.residency_totals_since(conn, window.since):
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
        "window": window.as_dict(),
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


def finite_dict(obj: dict[str, Any]) -> dict[str, Any]:
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
