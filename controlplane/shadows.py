"""Shadow learners: candidate policies that learn from the live reward stream.

Each registered candidate (``POST /v1/policies/candidates``, status ``shadow``) gets a
shadow learner inside the learner service, beside the live learner. The shadow sees
every reward event the live learner applies, after it, in credit order, and for each
one first records the arm it would have picked on the decision's logged context,
with its probabilities (the shadow's state at that point: it has learned from every
earlier credited event, never from this one), then learns from the event. The pick is
made under the live exploration floor (``releases.exploration_floor``), as the
candidate would pick once promoted, so its estimate is of what it would earn live.

The pick is computed here, when the learner credits the decision, not in the gateway
when the request is served: the logged context, arm and propensity are all in the
decision row, so the gateway's hot path stays as it is (no extra policy per request,
no extra table written per request), and a candidate registered or retired changes
nothing on the gateways. What the pick is not: the arm the shadow would have picked
at request time with the state it had then. Its state here has learned from every
event credited before this one, which for a decision whose feedback came late can
include decisions made after it; the estimate is still of a policy that never saw the
row it is judged on (the terms stay a martingale difference sequence).

Exactly once: the shadows' states and watermarks are saved in the live learner's
snapshot transaction (:meth:`ShadowSet.save`), so all resume from the same stream
position; on start and on a rollback or promotion they reload from there and drop
the picks recorded above it (those decisions are credited, and picked, again).
A candidate registered since the last snapshot starts at the live watermark: fresh
when its spec names a learner, else a copy of the live learner under its weights. With
``prior_weight`` w in its spec it starts instead from the live learner's data, each
event counted as w of one, under its own config and weights (a new policy version whose
prior is the earlier one's: :func:`learners.warm.warm_start`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, text

from controlplane.config import BanditConfig
from feedback.records import RewardRow
from feedback.repositories import candidates as repo
from learners import Learner, RewardEvent, load_learner, make_learner
from learners.base import REWARD_COMPONENTS
from learners.config import for_layout
from learners.floor import with_floor
from learners.warm import warm_start

log = logging.getLogger(__name__)


def candidate_weights(config: BanditConfig, spec: dict[str, Any]) -> np.ndarray:
    """The weights a candidate decides by: its spec's ``objective.weights`` (components
    it leaves out are 0), else the config's."""
    weights = (spec.get("objective") or {}).get("weights")
    if not weights:
        return config.objective.weight_vector
    return np.array([float(weights.get(c, 0.0)) for c in REWARD_COMPONENTS])


def fresh_shadow(config: BanditConfig, spec: dict[str, Any], live: Learner | None) -> Learner:
    """A new shadow learner: the spec's learner, or (weights only) a copy of ``live``;
    with ``prior_weight``, the spec's learner (or ``live``'s config) started from
    ``live``'s data at that weight."""
    weights = candidate_weights(config, spec)
    if spec.get("prior_weight") is not None and live is not None:
        try:
            cfg = spec.get("learner")
            fitted = None if cfg is None else for_layout(cfg, config.featurizer)
            return warm_start(live, fitted, float(spec["prior_weight"]), weights)
        except ValueError as exc:  # registration checks this; a config change may not
            log.warning("candidate starts fresh, not from the live learner: %s", exc)
    if spec.get("learner") is not None or live is None:
        learner_cfg = spec.get("learner") or config.learner.model_dump(mode="json")
        fitted = for_layout(learner_cfg, config.featurizer)  # greenserv: these task slots
        return make_learner(fitted, config.featurizer.dim, weights)
    learner = load_learner(live.state_bytes())
    learner.set_weights(weights)
    return learner


@dataclass
class Shadow:
    candidate_id: int
    name: str
    learner: Learner
    watermark: int
    events_applied: int
    started_at_seq: int
    rng: np.random.Generator


class ShadowSet:
    """The shadows the learner service runs, keyed by candidate id."""

    def __init__(self, engine: Engine, config: BanditConfig, seed: int = 0) -> None:
        self.engine = engine
        self.config = config
        self.seed = seed
        self.shadows: dict[int, Shadow] = {}
        # picks made but not yet stored (a failed write): written with the next batch or
        # in the next snapshot's transaction, before the state that learned from them
        self._unwritten: dict[int, list[repo.ShadowPick]] = {}
        self.stats = {"picks": 0}

    def _rng(self, candidate_id: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, candidate_id])

    # -- lifecycle -------------------------------------------------------

    def resume(self, live: Learner | None, watermark: int) -> None:
        """(Re)load every candidate in shadow: from its saved state, else fresh at
        ``watermark``; picks above where each resumes are dropped."""
        self.shadows = {}
        self._unwritten = {}  # above the saved watermarks: picked again
        with self.engine.begin() as conn:
            for c in repo.list_candidates(conn, ["shadow"]):
                self._load(conn, c, live, watermark)

    def discover(self, live: Learner | None, watermark: int) -> None:
        """Pick up candidates registered since, drop those promoted or retired."""
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT id, status FROM policy_candidates ORDER BY id")).all()
        wanted = {int(r[0]) for r in rows if r[1] == "shadow"}
        for cid in list(self.shadows):
            if cid not in wanted:
                del self.shadows[cid]
        new = wanted - set(self.shadows)
        if not new:
            return
        with self.engine.begin() as conn:
            for cid in sorted(new):
                self._load(conn, repo.get_candidate(conn, cid), live, watermark)

    def _load(
        self, conn: Connection, c: dict[str, Any], live: Learner | None, watermark: int
    ) -> None:
        cid = int(c["id"])
        if c["state"] is not None:
            learner = load_learner(c["state"])
            learner.set_weights(candidate_weights(self.config, c["spec"]))
            wm, applied = int(c["watermark"]), int(c["events_applied"])
            started = int(c["started_at_seq"] or 0)
        else:
            learner = fresh_shadow(self.config, c["spec"], live)
            wm, applied, started = watermark, 0, watermark
        repo.drop_picks_after(conn, cid, wm)
        self.shadows[cid] = Shadow(cid, c["name"], learner, wm, applied, started, self._rng(cid))
        log.info("shadow of candidate %s (%d) at watermark %d", c["name"], cid, wm)

    def save(self, conn: Connection) -> None:
        """Store every shadow's state and watermark (the live snapshot's transaction),
        with any picks a failed write left behind."""
        for cid, ps in self._unwritten.items():
            repo.record_shadow_picks(conn, cid, ps)
        for s in self.shadows.values():
            repo.save_shadow_state(
                conn,
                s.candidate_id,
                state=s.learner.state_bytes(),
                watermark=s.watermark,
                events_applied=s.events_applied,
                started_at_seq=s.started_at_seq,
            )

    # -- work ------------------------------------------------------------

    def apply(self, rows: Sequence[RewardRow]) -> int:
        """Each shadow picks on, then learns from, the rows past its watermark; the picks
        are written in one transaction. Returns the picks recorded."""
        if not self.shadows or not rows:
            return 0
        objective = self.config.objective
        floor = self.config.releases.exploration_floor
        routes = self._routes(rows)
        raw = np.array(
            [
                (r.quality if r.quality is not None else 0.0, r.energy_j, r.latency_ms, r.cost_usd)
                for r in rows
            ]
        )
        vectors = objective.normalize(raw)
        scalar = vectors @ objective.weight_vector
        made = 0
        for s in self.shadows.values():
            out = self._unwritten.setdefault(s.candidate_id, [])
            for i, r in enumerate(rows):
                if r.credit_seq <= s.watermark:
                    continue  # applied already (exactly once)
                arms = routes.get(r.request_id) or [r.arm_id]
                x = np.asarray(r.context, dtype=np.float64)
                # picked as it would be live: under the exploration floor
                d = with_floor(s.learner.select(x, arms, s.rng), floor, s.rng)
                probs = {a: float(d.propensities.get(a, 0.0)) for a in arms}
                out.append(
                    repo.ShadowPick(
                        request_id=r.request_id,
                        credit_seq=r.credit_seq,
                        created_at=r.created_at,
                        arm=d.arm,
                        propensity=float(d.propensity),
                        logged_arm=r.arm_id,
                        logged_propensity=r.propensity,
                        probs=probs,
                        reward=None if r.quality is None else float(scalar[i]),
                    )
                )
                if r.quality is not None:
                    s.learner.update(
                        [RewardEvent(x, r.arm_id, vectors[i], propensity=r.propensity)]
                    )
                s.watermark = r.credit_seq
                s.events_applied += 1
                made += 1
        with self.engine.begin() as conn:  # on failure, kept for the next try
            for cid, ps in self._unwritten.items():
                repo.record_shadow_picks(conn, cid, ps)
        self._unwritten = {}
        self.stats["picks"] += made
        return made

    def _routes(self, rows: Sequence[RewardRow]) -> dict[Any, list[str]]:
        """The arms each row's decision could go to (its route's)."""
        with self.engine.connect() as conn:
            found = conn.execute(
                text("SELECT request_id, route FROM decisions WHERE request_id = ANY(:ids)"),
                {"ids": [r.request_id for r in rows]},
            ).all()
        all_arms = [a.name for a in self.config.arms]
        routes = self.config.routes

        def arms_of(route: str) -> list[str]:
            if route in routes:
                return list(routes[route])
            return [route] if route in all_arms else all_arms

        return {rid: arms_of(route) for rid, route in found}

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "id": s.candidate_id,
                "name": s.name,
                "watermark": s.watermark,
                "events_applied": s.events_applied,
                "learner": s.learner.kind,
            }
            for s in self.shadows.values()
        ]
