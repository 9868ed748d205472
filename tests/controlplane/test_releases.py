"""Policy releases on Postgres (no Ray): candidates' shadows learn each reward event
once, their estimates against the live policy's, the promotion gate over HTTP, the
automatic rollback, and the exploration floor in the gateway."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import text

from controlplane.learner_loop import LearnerLoop
from controlplane.metrics import learner_families
from feedback.repositories import candidates as repo
from feedback.repositories import snapshots
from tests.controlplane import gatekeeping
from tests.controlplane.learning import assert_same_learner
from tests.controlplane.releasing import (
    FEEDBACK_ONLY,
    QUALITY,
    admin,
    log_traffic,
    release_config,
)


def _now() -> datetime:
    return datetime.now(UTC)


def _register(engine, name: str, spec: dict) -> int:
    with engine.begin() as conn:
        return repo.register_candidate(conn, name, spec, "ops")


def _picks(engine, cid: int) -> list[tuple]:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT s.request_id, s.credit_seq, s.reward, d.credit_seq, d.arm_id, s.logged_arm "
                "FROM shadow_decisions s JOIN decisions d USING (request_id) "
                "WHERE s.candidate_id = :c ORDER BY s.credit_seq"
            ),
            {"c": cid},
        ).all()


def test_a_shadow_picks_and_learns_each_event_once_across_a_crash(engine):
    cfg = release_config()
    log_traffic(engine, cfg, 40, seed=1, version=1)
    loop = LearnerLoop(engine, cfg, clock=_now)
    loop.start()
    loop.run_until_idle()  # 40 events before the candidate: the shadow never sees them
    cid = _register(engine, "linucb", {"learner": {"kind": "linucb", "alpha": 0.5}})
    log_traffic(engine, cfg, 260, seed=2, version=1, t0=_now() - timedelta(seconds=10))
    loop.step()
    loop.step()  # 100 events since the candidate: a snapshot saves the shadow with it
    with engine.connect() as conn:
        saved = repo.get_candidate(conn, cid)
    assert saved["watermark"] == loop.watermark and saved["state"] is not None
    loop.step()  # 50 more picked, not saved: a crash loses them
    assert loop.pending == 50 and len(_picks(engine, cid)) == 150
    loop._drop_ahead()  # the process dies: no snapshot, no shadow save, lock released
    loop._worker.shutdown(wait=True)
    loop.stop(snapshot=False)

    again = LearnerLoop(engine, cfg, clock=_now)
    again.start()  # releases the 50 and drops their picks
    assert len(_picks(engine, cid)) == 100
    again.run_until_idle()
    again.stop()

    picks = _picks(engine, cid)
    assert len(picks) == 260  # every event since the candidate, once
    assert all(p[1] == p[3] and p[4] == p[5] for p in picks)  # as credited, the logged arm
    assert len({p[1] for p in picks}) == 260

    # the same stream without the crash ends in the same shadow state
    with engine.connect() as conn:
        crashed = repo.get_candidate(conn, cid)
    with engine.begin() as conn:
        conn.execute(text("UPDATE decisions SET credit_seq = NULL, credit_kind = NULL"))
        conn.execute(text("DELETE FROM policy_snapshots"))
        conn.execute(text("DELETE FROM shadow_decisions"))
        conn.execute(
            text("UPDATE policy_candidates SET state = NULL, watermark = NULL, name = 'old'")
        )
        conn.execute(text("UPDATE policy_candidates SET status = 'retired'"))
    first = _ids_in_order(engine)[:40]  # the first batch, logged 20 s before the rest
    straight = LearnerLoop(engine, cfg, clock=_now)
    straight.start()
    # the first 40 decisions are credited before the candidate, as above
    _credit_only(straight, first)
    cid2 = _register(engine, "linucb", {"learner": {"kind": "linucb", "alpha": 0.5}})
    straight.run_until_idle()
    straight.stop()
    with engine.connect() as conn:
        clean = repo.get_candidate(conn, cid2)
    assert clean["events_applied"] == crashed["events_applied"] == 260
    assert_same_learner(clean["state"], crashed["state"], 32)


def _ids_in_order(engine) -> list:
    with engine.connect() as conn:
        return [
            r[0]
            for r in conn.execute(
                text("SELECT request_id FROM decisions ORDER BY created_at, request_id")
            )
        ]


def _credit_only(loop: LearnerLoop, first: list) -> None:
    """Let the loop credit just ``first`` (the rest held back by marking them credited)."""
    with loop.engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE decisions SET credit_seq = -1 * (abs(hashtext(request_id::text)) + 1) "
                "WHERE request_id <> ALL(:ids)"
            ),
            {"ids": first},
        )
    loop.run_until_idle()
    with loop.engine.begin() as conn:
        conn.execute(text("UPDATE decisions SET credit_seq = NULL WHERE credit_seq < 0"))
    loop._drop_ahead()  # un-credited behind the loop's back: its next claim sweeps


def test_estimates_rank_candidates_like_their_true_values(engine):
    cfg = release_config()
    loop = LearnerLoop(engine, cfg, clock=_now)
    loop.start()
    good = _register(engine, "dear", {"learner": {"kind": "fixed", "arm": "dear"}})
    bad = _register(engine, "cheap", {"learner": {"kind": "fixed", "arm": "cheap"}})
    log_traffic(engine, cfg, 400, seed=3, version=1)
    loop.run_until_idle()
    loop.stop()
    from controlplane.releases import candidate_estimate

    with engine.connect() as conn:
        eg, eb = candidate_estimate(conn, good), candidate_estimate(conn, bad)
        truth = dict(
            conn.execute(
                text("SELECT arm_id, avg(credit_quality) FROM decisions GROUP BY arm_id")
            ).all()
        )
    for est, arm in ((eg, "dear"), (eb, "cheap")):
        lo, hi = est["dr"]["ci95"]
        assert est["n"] == 400
        assert lo <= truth[arm] <= hi  # the arm's mean reward on the traffic
        assert abs(est["dr"]["value"] - QUALITY[arm]) < 0.05
    live = np.mean([truth["dear"], truth["cheap"]])
    assert abs(eg["live"]["value"] - live) < 0.03  # the logger's own mean, same rows
    assert eg["dr"]["ci95"][0] > eg["live"]["value"] > eb["dr"]["ci95"][1]


def test_promotion_gate_auth_refusal_force_and_the_learner_adopting(engine):
    cfg = release_config(min_shadow_decisions=100, promotion_margin=0.05)
    gw = gatekeeping.gateway(engine, cfg)
    loop = LearnerLoop(engine, cfg, clock=_now)
    loop.start()
    with gw.http as http:
        body = {"name": "dear", "learner": "fixed:dear"}
        assert http.post("/v1/policies/candidates", json=body).status_code == 401
        r = http.post("/v1/policies/candidates", json=body, headers=admin(FEEDBACK_ONLY))
        assert r.status_code == 403
        r = http.post("/v1/policies/candidates", json=body, headers=admin())
        assert r.status_code == 201, r.text
        good = r.json()["id"]
        r = http.post(
            "/v1/policies/candidates",
            json={"name": "cheap", "learner": {"kind": "fixed", "arm": "cheap"}},
            headers=admin(),
        )
        bad = r.json()["id"]
        r = http.post(
            "/v1/policies/candidates", json={"name": "x", "learner": "fixed:nope"}, headers=admin()
        )
        assert r.status_code == 422 and r.json()["error"]["param"] == "learner"
        r = http.post(
            "/v1/policies/candidates",
            json={"name": "w", "objective": {"weights": {"speed": 1}}},
            headers=admin(),
        )
        assert r.status_code == 422 and r.json()["error"]["param"] == "objective.weights"

        # too few shadow decisions: refused, and the refusal is a row
        log_traffic(engine, cfg, 60, seed=4, version=1)
        loop.run_until_idle()
        r = http.post(f"/v1/policies/candidates/{good}/promote", headers=admin())
        assert r.status_code == 409 and "fewer than the 100" in r.json()["error"]["message"]

        log_traffic(engine, cfg, 340, seed=5, version=1)
        loop.run_until_idle()
        listed = http.get("/v1/policies/candidates").json()["candidates"]
        assert [c["estimate"]["n"] for c in listed] == [400, 400]
        r = http.post(f"/v1/policies/candidates/{bad}/promote", headers=admin())
        assert r.status_code == 409, r.text
        assert r.json()["estimates"]["dr"]["ci95"][0] < r.json()["estimates"]["live"]["value"]
        r = http.post(
            f"/v1/policies/candidates/{bad}/promote", json={"force": True}, headers=admin()
        )
        assert r.status_code == 422 and r.json()["error"]["param"] == "reason"

        before = loop.version
        r = http.post(f"/v1/policies/candidates/{good}/promote", headers=admin())
        assert r.status_code == 200, r.text
        promoted = r.json()
        assert promoted["from_version"] == before and promoted["version"] == before + 1
        assert promoted["estimates"]["lower_bound"] >= promoted["estimates"]["live"]["value"] + 0.05
        r = http.post(f"/v1/policies/candidates/{good}/promote", headers=admin())
        assert r.status_code == 422  # promoted already

        releases = http.get("/v1/policies/releases").json()["releases"]
        assert [(x["action"], x["key_id"], x["candidate_id"]) for x in releases] == [
            ("promote", "ops", good),
            ("refuse", "ops", bad),
            ("refuse", "ops", good),
            ("register", "ops", bad),
            ("register", "ops", good),
        ]
        assert releases[0]["watch"] == "watching" and not releases[0]["forced"]

    loop.step()  # the learner adopts the promotion as it adopts a rollback
    assert loop.version == promoted["version"] and loop.learner is not None
    assert loop.learner.kind == "fixed"
    assert loop.shadows.shadows.keys() == {bad}  # the promoted one no longer shadows
    with engine.connect() as conn:
        snap = snapshots.get_snapshot(conn, promoted["version"])
    assert snap["reason"] == "promotion" and snap["parent_version"] == before
    assert gw.core.refresh_policy() and gw.core.policy.learner.kind == "fixed"

    # forced with a reason: promoted whatever the gate says, and recorded as forced
    with gatekeeping.gateway(engine, cfg).http as http:
        r = http.post(
            f"/v1/policies/candidates/{bad}/promote",
            json={"force": True, "reason": "cheaper for the quarter"},
            headers=admin(),
        )
        assert r.status_code == 200 and r.json()["forced"]
        rows = http.get("/v1/policies/releases").json()["releases"]
    assert rows[0]["reason"] == "cheaper for the quarter" and rows[0]["forced"]
    assert rows[1]["watch"] == "superseded"  # a new promotion ends the old watch

    # retiring stops a shadow; the learner drops it on its next step
    with engine.begin() as conn:
        third = repo.register_candidate(conn, "lints", {"learner": {"kind": "lints"}}, "ops")
    loop.step()
    assert third in loop.shadows.shadows
    with gatekeeping.gateway(engine, cfg).http as http:
        url = f"/v1/policies/candidates/{third}/retire"
        assert http.post(url, headers=admin(FEEDBACK_ONLY)).status_code == 403
        assert http.post(url, headers=admin()).json()["status"] == "retired"
        assert http.post(url, headers=admin()).status_code == 422
        assert http.get("/v1/policies/releases").json()["releases"][0]["action"] == "retire"
    loop.step()
    assert third not in loop.shadows.shadows
    loop.stop()


def _promote_dear(engine, cfg, loop: LearnerLoop) -> dict:
    with gatekeeping.gateway(engine, cfg).http as http:
        good = http.post(
            "/v1/policies/candidates",
            json={"name": "dear", "learner": "fixed:dear"},
            headers=admin(),
        ).json()["id"]
        log_traffic(engine, cfg, 300, seed=6, version=loop.version)
        loop.run_until_idle()
        r = http.post(f"/v1/policies/candidates/{good}/promote", headers=admin())
        assert r.status_code == 200, r.text
    loop.step()
    return dict(r.json())


@pytest.mark.parametrize("regress", [False, True])
def test_a_promotion_rolls_back_when_its_reward_falls_below_the_bound(engine, regress):
    cfg = release_config(rollback_window=100, rollback_watch_decisions=300)
    loop = LearnerLoop(engine, cfg, clock=_now)
    loop.start()
    promoted = _promote_dear(engine, cfg, loop)
    bound = promoted["estimates"]["lower_bound"]
    assert loop.version == promoted["version"]

    # the promoted policy serves `dear`; a regression makes its answers poor
    quality = {"dear": 0.2, "cheap": 0.3} if regress else {"dear": 0.95, "cheap": 0.3}
    log_traffic(engine, cfg, 99, seed=7, version=loop.version, arm="dear", quality=quality)
    loop.run_until_idle()
    assert loop.release_watch.rollbacks == 0  # 99 < the window: not judged yet
    log_traffic(engine, cfg, 1, seed=8, version=loop.version, arm="dear", quality=quality)
    loop.run_until_idle()

    with gatekeeping.gateway(engine, cfg).http as http:
        stats = http.get("/v1/stats").json()["releases"]
        rows = http.get("/v1/policies/releases").json()["releases"]
        panel = http.get("/v1/policies/releases?candidates=true").json()
    families = {f.name: f for f in learner_families(loop.metrics(), True)}
    auto = families["banditctl_policy_auto_rollbacks"].samples[0].value
    if not regress:
        assert loop.release_watch.rollbacks == 0 and stats["auto_rollbacks"] == 0
        assert stats["watching"]["to_version"] == promoted["version"] and auto == 0
        log_traffic(engine, cfg, 200, seed=9, version=loop.version, arm="dear", quality=quality)
        loop.run_until_idle()  # 300 credited and still above the bound: the watch ends
        with engine.connect() as conn:
            assert repo.watched_promotion(conn) is None
            assert repo.list_releases(conn, 1)[0]["watch"] == "passed"
        loop.stop()
        return
    assert loop.release_watch.rollbacks == 1 and auto == 1
    last = rows[0]
    assert (last["action"], last["key_id"]) == ("rollback", "auto")
    assert last["estimates"]["window_mean"] < bound == last["estimates"]["lower_bound"]
    assert last["estimates"]["restored"] == promoted["from_version"]
    assert stats["auto_rollbacks"] == 1 and stats["watching"] is None
    assert stats["last_auto_rollback"]["to_version"] == last["to_version"]
    assert rows[1]["action"] == "promote" and rows[1]["watch"] == "rolled_back"
    assert panel["summary"]["auto_rollbacks"] == 1
    (cand,) = panel["candidates"]
    assert cand["status"] == "retired" and cand["estimate"]["n"] == 300
    assert [p["n"] for p in cand["series"]][-1] == 300
    loop.step()  # the learner adopts the rollback: the uniform policy again
    assert loop.version == last["to_version"] and loop.learner.kind == "random"
    with engine.connect() as conn:
        snap = snapshots.get_snapshot(conn, last["to_version"])
    assert snap["reason"] == "rollback" and snap["parent_version"] == promoted["from_version"]
    loop.stop()


def test_the_exploration_floor_keeps_every_arm_possible(engine):
    cfg = release_config(exploration_floor=0.1)
    cfg = cfg.model_copy(update={"learner": gatekeeping.config().learner})  # always `dear`
    gw = gatekeeping.gateway(engine, cfg)
    with gw.http as http:
        for _ in range(200):
            assert http.post("/v1/chat/completions", json=gatekeeping.BODY).status_code == 200
    rows = gw.decisions()
    by_arm: dict[str, list[float]] = {}
    for r in rows:
        by_arm.setdefault(r["arm_id"], []).append(r["propensity"])
    # 2 arms at floor 0.1: `cheap` 0.1, `dear` 0.9, each logged with that propensity
    assert {a: {round(x, 9) for x in p} for a, p in by_arm.items()} == {
        "cheap": {0.1},
        "dear": {0.9},
    }
    assert 5 <= len(by_arm["cheap"]) <= 40  # binomial(200, 0.1): 20 expected, seeded

    off = gatekeeping.gateway(engine, gatekeeping.config(auth={"open_chat": True}))
    with off.http as http:
        for _ in range(20):
            http.post("/v1/chat/completions", json=gatekeeping.BODY)
    assert {r["arm_id"] for r in off.decisions()[200:]} == {"dear"}


def test_shadows_pick_under_the_exploration_floor(engine):
    cfg = release_config(exploration_floor=0.1)
    loop = LearnerLoop(engine, cfg, clock=_now)
    loop.start()
    cid = _register(engine, "dear", {"learner": {"kind": "fixed", "arm": "dear"}})
    log_traffic(engine, cfg, 200, seed=11, version=1)
    loop.run_until_idle()
    loop.stop()
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT arm, propensity, probs FROM shadow_decisions WHERE candidate_id = :c"),
            {"c": cid},
        ).all()
    assert len(rows) == 200
    assert all(r[2] == pytest.approx({"cheap": 0.1, "dear": 0.9}) for r in rows)
    cheap = sum(r[0] == "cheap" for r in rows)
    assert 5 <= cheap <= 40  # binomial(200, 0.1), seeded
    assert all(r[1] == pytest.approx(r[2][r[0]]) for r in rows)


def test_a_failed_write_of_picks_stops_nothing_and_loses_no_pick(engine, monkeypatch):
    cfg = release_config()
    loop = LearnerLoop(engine, cfg, clock=_now)
    loop.start()
    cid = _register(engine, "dear", {"learner": {"kind": "fixed", "arm": "dear"}})
    log_traffic(engine, cfg, 120, seed=12, version=1)
    real = repo.record_shadow_picks
    failures = iter([True])

    def flaky(conn, candidate_id, picks):
        if next(failures, False):
            raise RuntimeError("the database went away")
        real(conn, candidate_id, picks)

    monkeypatch.setattr(repo, "record_shadow_picks", flaky)
    assert loop.step() == 50  # the live learner applied its batch all the same
    assert loop.stats["release_errors"] == 1 and _picks(engine, cid) == []
    loop.run_until_idle()  # the next batches write the left-behind picks too
    loop.stop()
    picks = _picks(engine, cid)
    assert len(picks) == 120 and len({p[1] for p in picks}) == 120


def test_a_candidate_with_its_own_weights_is_refused_promotion_even_forced(engine):
    cfg = release_config(min_shadow_decisions=10, promotion_margin=0.0)
    gw = gatekeeping.gateway(engine, cfg)
    loop = LearnerLoop(engine, cfg, clock=_now)
    loop.start()
    with gw.http as http:
        weights = {"quality": 1.0, "cost_usd": -500.0}
        r = http.post(
            "/v1/policies/candidates",
            json={"name": "thrifty", "objective": {"weights": weights}},
            headers=admin(),
        )
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        log_traffic(engine, cfg, 60, seed=11, version=1)
        loop.run_until_idle()
        before = loop.version
        r = http.post(
            f"/v1/policies/candidates/{cid}/promote",
            json={"force": True, "reason": "try it"},
            headers=admin(),
        )
        assert r.status_code == 409 and "objective.weights" in r.json()["error"]["message"]
        log = http.get("/v1/policies/releases").json()["releases"]
        assert log[0]["action"] == "refuse"
    loop.run_until_idle()
    assert loop.version == before  # nothing published
    loop.stop(snapshot=False)


def test_a_candidate_with_a_prior_weight_starts_from_the_live_learners_data(engine):
    """``prior_weight`` in a candidate's spec: its shadow starts from the live learner's
    data (here all of it, W = 1); without it a candidate naming a learner starts fresh."""
    from learners.config import LinUCBConfig

    cfg = release_config().model_copy(update={"learner": LinUCBConfig(alpha=0.5)})
    log_traffic(engine, cfg, 60, seed=1, version=1)
    loop = LearnerLoop(engine, cfg, clock=_now)
    loop.start()
    loop.run_until_idle()
    live = loop.learner.arm_summary()
    assert sum(a["pulls"] for a in live.values()) == 60
    spec = {"learner": {"kind": "linucb", "alpha": 0.1}}
    warm = _register(engine, "warm", {**spec, "prior_weight": 1.0})
    cold = _register(engine, "cold", spec)
    log_traffic(engine, cfg, 20, seed=2, version=1, t0=_now() - timedelta(seconds=10))
    loop.run_until_idle()
    shadows = loop.shadows.shadows
    warm_pulls = {a: s["pulls"] for a, s in shadows[warm].learner.arm_summary().items()}
    cold_pulls = {a: s["pulls"] for a, s in shadows[cold].learner.arm_summary().items()}
    assert sum(warm_pulls.values()) == 80 and sum(cold_pulls.values()) == 20
    for arm, row in live.items():
        assert warm_pulls[arm] == row["pulls"] + cold_pulls.get(arm, 0)
    assert shadows[warm].learner.config.alpha == 0.1
    loop.stop()
