"""Policy releases: candidates' off-policy estimates, the promotion gate and the
automatic rollback after a promotion (issue #12).

Estimates (:func:`candidate_estimate`) come from a candidate's shadow picks
(``controlplane.shadows``) over the decisions the live policy logged: the candidate's
doubly robust estimate (``learners.ope.doubly_robust``: a ridge reward model per arm,
cross-fitted over two folds) against the live policy's own, the mean reward of the
same decisions (on-policy, so exact up to noise), each with a 95% normal interval.
Both are scored by the live config's objective, whatever weights the candidate
decides by.

Promotion (:func:`promote`) publishes the candidate's saved shadow state as a new
policy version (reason ``promotion``) that the learner and the gateways adopt as they
adopt a rollback, when the lower bound of the candidate's interval is at least
``releases.promotion_margin`` above the live estimate, over at least
``releases.min_shadow_decisions`` decisions; otherwise it is refused, unless forced
with a reason. Each promotion and refusal is a row of ``policy_releases``.

After a promotion, :class:`RollbackWatch` (run by the learner service) compares the mean
reward of the newest ``releases.rollback_window`` credited decisions served by the
promoted policy (or its successors) with the lower bound of the candidate's estimate
at promotion; below it, it publishes the pre-promotion version again (a rollback by
``auto``, with the figures, in ``policy_releases``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine

from controlplane.config import BanditConfig
from feedback.errors import InvalidInput
from feedback.repositories import candidates as repo
from feedback.repositories import snapshots
from learners import load_learner, ope

log = logging.getLogger(__name__)


def _est(e: ope.Estimate) -> dict[str, Any]:
    return {"value": e.value, "ci95": [e.ci95[0], e.ci95[1]], "n": e.n}


def estimate_log(shadow: repo.ShadowLog) -> dict[str, Any]:
    """DR (and IPS, SNIPS) of the candidate and the live policy's mean reward on the
    same decisions; ``dr`` and ``live`` are None below 2 decisions."""
    n = len(shadow.rewards)
    if n < 2:
        return {"n": n, "dr": None, "ips": None, "snips": None, "live": None}
    arms = sorted(set(shadow.logged_arms).union(*(p.keys() for p in shadow.probs)))
    index = {a: i for i, a in enumerate(arms)}
    pi = np.zeros((n, len(arms)))
    for i, probs in enumerate(shadow.probs):
        for a, p in probs.items():
            pi[i, index[a]] = p
    logs = ope.LoggedData(
        contexts=shadow.contexts,
        actions=np.array([index[a] for a in shadow.logged_arms]),
        propensities=shadow.logged_propensities,
        rewards=shadow.rewards,
        arms=tuple(arms),
    )
    return {
        "n": n,
        "dr": _est(ope.doubly_robust(logs, pi)),
        "ips": _est(ope.ips(logs, pi)),
        "snips": _est(ope.snips(logs, pi)),
        "live": _est(ope.Estimate.from_terms(shadow.rewards)),
        "agreement": float(
            np.mean([a == b for a, b in zip(shadow.arms, shadow.logged_arms, strict=True)])
        ),
    }


def candidate_estimate(
    conn: Connection, candidate_id: int, *, since: datetime | None = None
) -> dict[str, Any]:
    return estimate_log(repo.shadow_log(conn, candidate_id, since=since))


def estimate_series(shadow: repo.ShadowLog, points: int = 8) -> list[dict[str, Any]]:
    """The estimates over time: on the first ``n_j`` decisions, for ``points`` evenly
    spaced ``n_j`` (each point: the time of its last decision)."""
    n = len(shadow.rewards)
    if n < 2:
        return []
    cuts = sorted({int(c) for c in np.linspace(min(n, 10), n, num=min(points, n - 1))})
    out = []
    for c in cuts:
        if c < 2:
            continue
        part = repo.ShadowLog(
            contexts=shadow.contexts[:c],
            logged_arms=shadow.logged_arms[:c],
            logged_propensities=shadow.logged_propensities[:c],
            rewards=shadow.rewards[:c],
            probs=shadow.probs[:c],
            arms=shadow.arms[:c],
            created_at=shadow.created_at[:c],
        )
        e = estimate_log(part)
        out.append(
            {"t": shadow.created_at[c - 1].isoformat(), "n": c, "dr": e["dr"], "live": e["live"]}
        )
    return out


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    reason: str
    lower_bound: float | None
    live: float | None


def gate(estimate: dict[str, Any], config: BanditConfig) -> GateVerdict:
    """Whether a candidate's estimate clears the promotion gate (``releases``)."""
    r = config.releases
    n = int(estimate["n"])
    if estimate["dr"] is None or n < r.min_shadow_decisions:
        return GateVerdict(
            False,
            f"{n} shadow decisions with a reward, fewer than the {r.min_shadow_decisions} "
            "the gate needs (releases.min_shadow_decisions)",
            None,
            None,
        )
    lower = float(estimate["dr"]["ci95"][0])
    live = float(estimate["live"]["value"])
    if lower >= live + r.promotion_margin:
        return GateVerdict(
            True,
            f"DR lower bound {lower:.4f} >= live {live:.4f} + margin {r.promotion_margin:g}",
            lower,
            live,
        )
    return GateVerdict(
        False,
        f"DR lower bound {lower:.4f} < live {live:.4f} + margin {r.promotion_margin:g}",
        lower,
        live,
    )


class PromotionRefused(Exception):
    def __init__(self, message: str, release_id: int, estimates: dict[str, Any]) -> None:
        super().__init__(message)
        self.message = message
        self.release_id = release_id
        self.estimates = estimates


def promote(
    engine: Engine,
    config: BanditConfig,
    candidate_id: int,
    *,
    key_id: str | None,
    force: bool = False,
    reason: str | None = None,
) -> dict[str, Any]:
    """Promote a candidate if it clears the gate (or ``force`` with a ``reason``).

    Raises :class:`PromotionRefused` after recording the refusal, ``InvalidInput`` for a
    forced promotion without a reason or a candidate not in shadow, ``NotFound`` for an
    unknown one."""
    if force and not (reason and reason.strip()):
        raise InvalidInput("reason", "a forced promotion needs a reason")
    with engine.begin() as conn:
        snapshots.lock_snapshots(conn)
        c = repo.get_candidate(conn, candidate_id)
        if c["status"] != "shadow":
            raise InvalidInput("id", f"candidate {candidate_id} is {c['status']}, not in shadow")
        estimate = candidate_estimate(conn, candidate_id)
        verdict = gate(estimate, config)
        latest = snapshots.latest_snapshot(conn)
        figures = {
            **estimate,
            "lower_bound": verdict.lower_bound,
            "margin": config.releases.promotion_margin,
            "gate": verdict.reason,
        }
        problem = None
        weights = ((c["spec"] or {}).get("objective") or {}).get("weights")
        if weights and dict(weights) != dict(config.objective.weights):
            problem = (
                "a candidate with its own objective weights is not promoted: the live "
                "policy chooses by the config's objective, so its state alone would change "
                "nothing; set objective.weights in the config and roll it out (serve deploy)"
            )
        elif not verdict.passed and not force:
            problem = verdict.reason
        elif c["state"] is None or latest is None:
            problem = (
                "the shadow has no saved state yet (the learner saves it with its next "
                "policy version)"
            )
        if problem is not None:
            rid = repo.record_release(
                conn,
                "refuse",
                key_id=key_id,
                reason=problem,
                candidate_id=candidate_id,
                from_version=None if latest is None else int(latest["version"]),
                forced=force,
                estimates=figures,
            )
            refusal: PromotionRefused | None = PromotionRefused(problem, rid, figures)
        else:
            refusal = None
    if refusal is not None:
        raise refusal
    with engine.begin() as conn:
        snapshots.lock_snapshots(conn)
        c = repo.get_candidate(conn, candidate_id)
        latest = snapshots.latest_snapshot(conn)
        assert latest is not None and c["state"] is not None
        learner = load_learner(c["state"])
        new = snapshots.save_snapshot(
            conn,
            learner_kind=learner.kind,
            config={
                **(latest["config"] or {}),
                "candidate": {"id": candidate_id, "name": c["name"], "spec": c["spec"]},
            },
            state=c["state"],
            watermark=int(c["watermark"]),
            events_applied=int(latest["events_applied"]),
            summary={"arms": learner.arm_summary()},
            reason="promotion",
            parent_version=int(latest["version"]),
        )
        repo.end_all_watches(conn, "superseded")
        why = reason if force else verdict.reason
        rid = repo.record_release(
            conn,
            "promote",
            key_id=key_id,
            reason=why,
            candidate_id=candidate_id,
            from_version=int(latest["version"]),
            to_version=new,
            forced=force,
            estimates=figures,
            watch="watching" if verdict.lower_bound is not None else None,
        )
        repo.set_status(conn, candidate_id, "promoted")
    log.info("candidate %s promoted as version %d (%s) by %s", c["name"], new, why, key_id)
    return {
        "release": rid,
        "candidate": candidate_id,
        "version": new,
        "from_version": int(latest["version"]),
        "forced": force,
        "reason": why,
        "estimates": figures,
    }


def record_manual_rollback(
    conn: Connection, *, key_id: str | None, from_version: int | None, restored: int, new: int
) -> None:
    """A rollback by hand (``POST /v1/policies/{version}/rollback``) ends any watch."""
    repo.end_all_watches(conn, "superseded")
    repo.record_release(
        conn,
        "rollback",
        key_id=key_id,
        reason=f"rollback to version {restored} by hand",
        from_version=from_version,
        to_version=new,
        estimates={"restored": restored},
    )


class RollbackWatch:
    """Watches the newest promotion and rolls it back when its credited reward falls
    below the lower bound of its pre-promotion estimate (run by the learner service)."""

    def __init__(
        self,
        engine: Engine,
        config: BanditConfig,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.config = config
        self.monotonic = monotonic
        self._last_check: float | None = None
        self.rollbacks = 0
        self.last: dict[str, Any] | None = None
        self.watching: int | None = None  # the version under watch

    def check(self, force: bool = False) -> int | None:
        """Roll back if due; returns the version published, else None."""
        r = self.config.releases
        now = self.monotonic()
        if (
            not force
            and self._last_check is not None
            and now - self._last_check < r.rollback_check_s
        ):
            return None
        self._last_check = now
        with self.engine.begin() as conn:
            p = repo.watched_promotion(conn)
            if p is None:
                self.watching = None
                return None
            self.watching = int(p["to_version"])
            bound = (p["estimates"] or {}).get("lower_bound")
            if bound is None:
                repo.end_watch(conn, int(p["id"]), "passed")
                return None
            total, raw = repo.credited_since_version(conn, int(p["to_version"]), r.rollback_window)
            if total < r.rollback_window:
                return None
            objective = self.config.objective
            rewards = objective.normalize(raw) @ objective.weight_vector
            mean = float(rewards.mean())
            if mean >= float(bound):
                if total >= r.rollback_watch_decisions:
                    repo.end_watch(conn, int(p["id"]), "passed")
                    self.watching = None
                return None
            latest = snapshots.latest_version(conn)
            new = snapshots.publish_rollback(conn, int(p["from_version"]))
            why = (
                f"mean reward {mean:.4f} over the newest {len(rewards)} credited decisions of "
                f"version {p['to_version']} and later is below the lower bound {float(bound):.4f} "
                "of its estimate at promotion"
            )
            repo.end_watch(conn, int(p["id"]), "rolled_back")
            repo.record_release(
                conn,
                "rollback",
                key_id="auto",
                reason=why,
                candidate_id=p["candidate_id"],
                from_version=latest,
                to_version=new,
                estimates={
                    "window_mean": mean,
                    "window": len(rewards),
                    "lower_bound": float(bound),
                    "restored": int(p["from_version"]),
                },
            )
            if p["candidate_id"] is not None:
                repo.set_status(conn, int(p["candidate_id"]), "retired")
        self.rollbacks += 1
        self.watching = None
        self.last = {"version": new, "restored": int(p["from_version"]), "reason": why}
        log.warning(
            "automatic rollback: %s; version %d restores version %s", why, new, p["from_version"]
        )
        return new

    def status(self) -> dict[str, Any]:
        return {
            "auto_rollbacks": self.rollbacks,
            "watching": self.watching,
            "last_auto_rollback": self.last,
        }
