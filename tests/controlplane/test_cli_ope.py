"""``banditctl ope`` on the request log in PostgreSQL: credited decisions in a window and a
route, stored policy versions as candidates, the estimates checked by hand."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from controlplane.cli import main
from feedback.objective import Objective
from feedback.records import ArmRecord, DecisionRecord, FeedbackInput, OutcomeRecord
from feedback.repositories import arms as arms_repo
from feedback.repositories import feedback, request_log, reward_stream, snapshots
from learners import RewardEvent, make_learner

ARMS = ["small", "mid", "large"]
COST = {"small": 0.0005, "mid": 0.002, "large": 0.005}
DIM = 6
OBJECTIVE = Objective(weights={"quality": 1.0, "cost_usd": -30.0}, feedback_window_s=86400)


def _quality_mean(x: np.ndarray, arm: str) -> float:
    """``large`` is good everywhere, ``small`` only where x[1] > 0."""
    return {"small": 0.5 + 0.3 * np.sign(x[1]), "mid": 0.55, "large": 0.8}[arm]


def _trained(kind: dict, seed: int):
    """A learner taught on 90 uniformly logged events, so its policy depends on the context."""
    rng = np.random.default_rng(seed)
    learner = make_learner(kind, DIM, OBJECTIVE.weight_vector)
    for _ in range(90):
        x = np.r_[1.0, rng.standard_normal(DIM - 1)]
        arm = ARMS[int(rng.integers(3))]
        q = float(rng.random() < _quality_mean(x, arm))
        learner.update([RewardEvent(x, arm, np.array([q, 0.0, 0.0, COST[arm]]), 1 / 3)])
    return learner


def _save(conn, learner) -> int:
    return snapshots.save_snapshot(
        conn,
        learner_kind=learner.kind,
        config={"learner": {"kind": learner.kind}, "objective": OBJECTIVE.model_dump(mode="json")},
        state=learner.state_bytes(),
        watermark=0,
        events_applied=90,
        summary={},
    )


@pytest.fixture
def logged(engine):
    """Version 1 (LinTS) logs 400 decisions, 300 on route auto and 100 on cheap, one a
    second from two hours ago, with its propensities; all get feedback and are credited.
    Version 2 (LinUCB) is published after. 20 later decisions are never served."""
    rng = np.random.default_rng(0)
    logger = _trained({"kind": "lints", "v": 0.5}, 1)
    t0 = datetime.now(UTC) - timedelta(hours=2)
    ds, os_, fbs = [], [], []
    for i in range(420):
        x32 = np.r_[1.0, rng.standard_normal(DIM - 1)].astype(np.float32)
        d = logger.select(x32.astype(np.float64), ARMS, rng)
        rid = uuid.UUID(int=i + 1)
        at = t0 + timedelta(seconds=i)
        route = "cheap" if i % 4 == 3 else "auto"
        ds.append(DecisionRecord(rid, at, route, d.arm, x32, d.propensity, 1, "lints"))
        if i < 400:
            os_.append(OutcomeRecord(rid, at, "ok", latency_ms=100.0, cost_usd=COST[d.arm]))
            q = float(rng.random() < _quality_mean(x32, d.arm))
            fbs.append(FeedbackInput.validated(rid, q))
    with engine.begin() as conn:
        arms_repo.upsert_arms(conn, [ArmRecord(a, a, "replay") for a in ARMS])
        v1 = _save(conn, logger)
        request_log.write_decisions(conn, ds)
        request_log.write_outcomes(conn, os_)
        feedback.record_feedback_many(conn, fbs)
    with engine.begin() as conn:
        claimed = reward_stream.claim_reward_events(conn, OBJECTIVE, datetime.now(UTC), 1000)
        v2 = _save(conn, _trained({"kind": "linucb", "alpha": 0.1}, 2))
    assert len(claimed) == 400 and (v1, v2) == (1, 2)
    rows = [
        (d, f.quality)
        for d, f in zip(ds, fbs, strict=False)  # the first 400 were served
    ]
    return t0, rows


def test_ope_on_the_request_log(logged, db_url, monkeypatch, tmp_path, capsys):
    t0, rows = logged
    monkeypatch.setenv("DATABASE_URL", db_url)
    since = t0 + timedelta(seconds=100)
    out = tmp_path / "ope.json"
    args = ["ope", "--route", "auto", "--since", since.isoformat(), "--seeds", "2"]
    args += ["--candidates", "version:1,current,fixed:large,fixed:small,linucb"]
    args += ["--weights", "quality=1,cost_usd=-100", "--json", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    kept = [(d, q) for d, q in rows if d.route == "auto" and d.created_at >= since]
    assert f"database: {len(kept)} credited decisions" in text
    assert "15 not credited yet" in text  # the 20 never served, 15 of them on auto
    doc = json.loads(out.read_text())
    assert doc["source"]["rows"] == len(kept) == 225
    assert doc["source"]["pending"] == 15
    assert doc["source"]["policy_versions"] == [1]
    assert doc["arms"] == sorted(ARMS)
    names = list(doc["candidates"])
    assert names == [
        "version:1",
        "current (version 2)",
        "fixed:large",
        "fixed:small",
        "linucb",
        "version:1@quality=1,cost_usd=-100",
        "current (version 2)@quality=1,cost_usd=-100",
        "linucb@quality=1,cost_usd=-100",
    ]
    c = doc["candidates"]
    reward = np.array([q - 30.0 * COST[d.arm_id] for d, q in kept])
    prop = np.array([d.propensity for d, _ in kept])
    # the logger evaluated on its own decisions: every weight is 1, SNIPS is exact
    v1 = c["version:1"]["estimators"]
    assert v1["snips"]["value"] == pytest.approx(reward.mean(), abs=1e-9)
    assert v1["ips"]["value"] == pytest.approx(reward.mean(), abs=1e-9)
    assert v1["ips"]["ess"] == pytest.approx(len(kept))
    # a fixed arm's IPS by hand
    for arm in ("large", "small"):
        hit = np.array([d.arm_id == arm for d, _ in kept])
        ips = c[f"fixed:{arm}"]["estimators"]["ips"]["value"]
        assert ips == pytest.approx(float((reward * hit / prop).mean()), rel=1e-9)
    # large is the better arm, and the estimates say so
    assert c["fixed:large"]["estimate"] > c["fixed:small"]["estimate"]
    for cand in c.values():
        assert cand["true_value"] is None and cand["covered"] is None
        assert cand["ci95"][0] < cand["estimate"] < cand["ci95"][1]
        assert len(cand["seeds"]) == 2
    assert doc["coverage"] is None
    # both seeds read the same log: pooling them does not narrow the interval
    assert doc["independent_seeds"] is False
    frozen = c["version:1"]
    for seed in frozen["seeds"]:
        assert frozen["ci95"] == pytest.approx(seed["ci95"], abs=1e-12)
    # other weights: a heavier cost weight buys cheaper picks
    heavy = c["current (version 2)@quality=1,cost_usd=-100"]["components"]["cost_usd"]
    assert heavy < c["current (version 2)"]["components"]["cost_usd"]


def test_ope_on_the_request_log_refuses_what_it_cannot_estimate(
    logged, db_url, monkeypatch, capsys
):
    monkeypatch.setenv("DATABASE_URL", db_url)
    assert main(["ope", "--candidates", "version:9"]) == 2
    assert "no such version" in capsys.readouterr().err
    assert main(["ope", "--candidates", "fixed:huge"]) == 2
    assert "not among the logged arms" in capsys.readouterr().err
    t0, _ = logged
    late = (t0 + timedelta(seconds=400)).isoformat()
    assert main(["ope", "--since", late, "--candidates", "fixed:large"]) == 2
    assert "no credited decisions in the window (20 decisions, 20 not credited" in (
        capsys.readouterr().err
    )
    assert main(["ope", "--until", t0.isoformat(), "--candidates", "lints"]) == 2
    assert "no credited decisions in the window (0 decisions" in capsys.readouterr().err
    assert main(["ope", "--since", "yesterday", "--candidates", "lints"]) == 2
    assert "bad time 'yesterday'" in capsys.readouterr().err


def test_presets_on_the_request_log_read_the_task_slots_the_deployment_used():
    """``ope --from-db`` fits presets to the featurizer the latest policy records: a
    deployment with 12 task slots gets a ``greenserv`` candidate reading all 12 (it read
    the default 8, and nothing said so). A record of another size, or none, leaves the
    default layout."""
    import argparse

    from controlplane.cli.commands.ope import _candidates, snapshot_featurizer
    from learners.featurize import Featurizer

    feat = Featurizer.for_tasks([f"t{i:02d}" for i in range(12)], dim=68)
    latest = {"config": {"featurizer": feat.model_dump(mode="json")}}
    recorded = snapshot_featurizer(latest, 68)
    assert recorded == feat
    assert snapshot_featurizer(latest, 64) is None  # the contexts are of another size
    assert snapshot_featurizer({"config": {"objective": {}}}, 68) is None
    assert snapshot_featurizer(None, 68) is None
    args = argparse.Namespace(candidates="greenserv", candidate=[], weights=[])
    weights = np.array([1.0, 0.0, 0.0, -30.0])
    (fitted,) = _candidates(args, 68, weights, ("a", "b"), featurizer=recorded)
    (default,) = _candidates(args, 68, weights, ("a", "b"))
    assert fitted.make().config.context_indices == feat.task_view == tuple(range(13))
    assert default.make().config.context_indices == tuple(range(9))
