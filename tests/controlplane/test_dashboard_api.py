"""Dashboard JSON and the admin-only rollback on a real database (no Ray); the dashboard's
arithmetic (windows, intervals, the baseline arm) on constructed numbers. ``/metrics`` has its
own tests (``test_metrics.py``)."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from controlplane.api import create_app
from controlplane.config import ApiKey
from controlplane.dashboard_stats import (
    Window,
    best_arm,
    compare,
    mean_interval,
    pooled_sd,
    ratio_figure,
)
from controlplane.gateway_core import GatewayCore
from controlplane.learner_loop import LearnerLoop, arm_records
from controlplane.tokens import FeedbackTokens
from feedback.records import DecisionRecord, FeedbackInput, OutcomeRecord
from feedback.repositories import arms as arms_repo
from feedback.repositories import feedback as feedback_repo
from feedback.repositories import reports, request_log, residency, snapshots
from tests.controlplane.learning import learning_config, write_traffic

ADMIN, FEEDBACK = "admin-key-unit", "fb-key-unit"


async def _no_pool(_arm: str, _body: dict) -> dict:
    raise AssertionError("no completion in these tests")


@pytest.fixture
def client(engine, monkeypatch):
    monkeypatch.setenv("BANDITCTL_UNIT_ADMIN", ADMIN)
    monkeypatch.setenv("BANDITCTL_UNIT_FEEDBACK", FEEDBACK)
    keys = (
        ApiKey(name="admin", key_env="BANDITCTL_UNIT_ADMIN", scopes=("admin",)),
        ApiKey(name="fb", key_env="BANDITCTL_UNIT_FEEDBACK", scopes=("feedback",)),
    )
    cfg = learning_config().model_copy(update={"api_keys": keys})
    core = GatewayCore(cfg, engine, _no_pool, FeedbackTokens("unit-secret-0123456789", 60))
    return TestClient(create_app(core, start_background=False)), cfg


def _learned(engine, cfg) -> LearnerLoop:
    write_traffic(engine, cfg, 11)
    loop = LearnerLoop(engine, cfg, clock=lambda: datetime.now(UTC))
    loop.start()
    loop.run_until_idle()
    loop.stop()
    return loop


def test_dashboard_page_and_assets_are_served_without_a_cdn(client):
    http, _ = client
    page = http.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/dashboard/static/dashboard.js" in page.text and "https://" not in page.text
    js = http.get("/dashboard/static/dashboard.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert "https://" not in js.text
    missing = http.get("/dashboard/static/../api.py")
    assert missing.status_code == 404
    assert http.get("/dashboard/static/nope.js").json()["error"]["type"] == "not_found"


def test_empty_database_gives_empty_figures(client):
    http, _ = client
    o = http.get("/v1/dashboard/overview").json()
    assert o["requests"] == 0 and o["mean_reward"] is None and o["best_arm"] is None
    assert o["exploration"]["rate"] is None and o["learner_lag"]["events_behind"] == 0
    assert http.get("/v1/dashboard/learning").json()["buckets"] == []
    assert http.get("/v1/dashboard/feedback").json()["items"] == []
    res = http.get("/v1/dashboard/residency").json()
    assert res["replicas"] == [] and res["totals"] == []
    assert http.get("/v1/dashboard/routing").json()["tasks"] == []
    assert o["baseline"] is None and o["cost"]["figure"] is None
    assert o["window"] == {**o["window"], "seconds": None, "label": "all time", "since": None}
    assert "banditctl_policy_version 0.0" in http.get("/metrics").text


def test_overview_matches_the_database(client, engine):
    http, cfg = client
    _learned(engine, cfg)
    o = http.get("/v1/dashboard/overview").json()
    with engine.connect() as conn:
        stats = reports.arm_stats(conn, cfg.objective)
        counts = reports.table_counts(conn)
    assert o["requests"] == counts["decisions"] == 240
    assert o["feedback"] == counts["feedback"]
    assert o["rewarded"] == sum(a["rewarded"] for a in stats) > 0
    best = max((a for a in stats if a["rewarded"] >= 10), key=lambda a: a["mean_reward"])
    assert o["best_arm"] == best["arm"]
    mean_cost = sum(a["total_cost_usd"] for a in stats) / sum(a["ok"] for a in stats)
    assert o["cost_saved_usd"] == pytest.approx(best["mean_cost_usd"] - mean_cost)
    assert 0.0 <= o["exploration"]["rate"] <= 1.0 and o["exploration"]["method"] == "greedy"
    curve = http.get("/v1/dashboard/learning", params={"buckets": 5}).json()["buckets"]
    assert 1 <= len(curve) <= 5 and sum(b["n"] for b in curve) == 240
    fb = http.get("/v1/dashboard/feedback", params={"limit": 7}).json()["items"]
    assert len(fb) == 7 and all(f["arm_id"] for f in fb)


def test_rollback_needs_the_admin_scope(client, engine):
    http, cfg = client
    loop = _learned(engine, cfg)
    before = loop.version
    assert before >= 3
    url = "/v1/policies/2/rollback"
    r = http.post(url)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert http.post(url, headers={"Authorization": "Bearer nope"}).status_code == 401
    r = http.post(url, headers={"Authorization": f"Bearer {FEEDBACK}"})
    assert r.status_code == 403 and "admin" in r.json()["error"]["message"]
    with engine.connect() as conn:
        assert snapshots.latest_version(conn) == before  # nothing published
    r = http.post("/v1/policies/999/rollback", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 404 and "error" in r.json()
    r = http.post(url, headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200
    assert r.json() == {"version": before + 1, "rolled_back_to": 2, "reason": "rollback"}
    current = http.get("/v1/policies/current").json()
    assert current["version"] == before + 1 and current["reason"] == "rollback"


# ---------------------------------------------------------------- constructed traffic

COST = {"small": 0.0001, "coder": 0.0004, "mathy": 0.0002, "large": 0.003}
ENERGY = {"small": 20.0, "coder": 80.0, "mathy": 60.0, "large": 500.0}


def _context(cfg, task: str | None, rng: np.random.Generator) -> np.ndarray:
    """Intercept, the task's one-hot slot, a little noise elsewhere."""
    x = np.zeros(cfg.featurizer.dim, dtype=np.float32)
    x[0] = 1.0
    tasks = cfg.featurizer.task_slice
    if task is not None:
        x[tasks.start + cfg.featurizer.tasks.index(task)] = 1.0
    x[tasks.stop :] = 0.05 * rng.normal(size=cfg.featurizer.dim - tasks.stop)
    return x


def _serve(engine, cfg, rows, seed: int = 0) -> None:
    """Log decisions with an ok outcome and feedback. ``rows``: (seconds ago, task, arm,
    quality or None for no feedback); cost and energy per arm from COST and ENERGY."""
    rng = np.random.default_rng(seed)
    now = datetime.now(UTC)
    ds, os_, fbs, ages = [], [], [], []
    for ago, task, arm, q in rows:
        rid = uuid.uuid4()
        at = now - timedelta(seconds=ago)
        x = _context(cfg, task, rng)
        ds.append(DecisionRecord(rid, at, "auto", arm, x, 1.0, 0, "linucb", task=task))
        os_.append(OutcomeRecord(rid, at, "ok", latency_ms=100.0, energy_j=ENERGY[arm],
                                 cost_usd=COST[arm]))  # fmt: skip
        if q is not None:
            fbs.append(FeedbackInput.validated(rid, q))
            ages.append((rid, ago))
    with engine.begin() as conn:
        arms_repo.upsert_arms(conn, arm_records(cfg))
        request_log.write_decisions(conn, ds)
        request_log.write_outcomes(conn, os_)
        feedback_repo.record_feedback_many(conn, fbs)
        for rid, ago in ages:  # feedback came a second after its answer
            conn.execute(
                text("UPDATE feedback SET created_at = :t WHERE request_id = :r"),
                {"t": now - timedelta(seconds=ago - 1), "r": rid},
            )


def _learn(engine, cfg) -> LearnerLoop:
    loop = LearnerLoop(engine, cfg, clock=lambda: datetime.now(UTC))
    loop.start()
    loop.run_until_idle()
    loop.stop()
    return loop


def _noisy(rng: np.random.Generator, mean: float) -> float:
    return float(np.clip(mean + rng.normal(0, 0.1), 0.0, 1.0))


def test_interval_of_a_mean_shrinks_with_the_values_behind_it():
    assert mean_interval(0, None, None) is None
    assert mean_interval(1, 0.5, None) is None
    lo2, hi2 = mean_interval(2, 0.5, 0.3)
    lo893, hi893 = mean_interval(893, 0.5, 0.3)
    assert lo2 < 0.5 < hi2 and lo893 < 0.5 < hi893
    # Student's t: 2 values give 12.7 sd/sqrt(2) each side; 893 give 1.96 sd/sqrt(893)
    assert (hi2 - lo2) / 2 == pytest.approx(12.706 * 0.3 / math.sqrt(2), rel=1e-3)
    assert (hi893 - lo893) / 2 == pytest.approx(1.9626 * 0.3 / math.sqrt(893), rel=1e-3)
    assert (hi893 - lo893) < (hi2 - lo2) / 100


def test_a_few_values_that_agree_do_not_read_as_certain():
    # two answers with the same reward: sd 0, and without a prior a zero-width interval
    assert mean_interval(2, 0.9, 0.0) == (0.9, 0.9)
    spread = pooled_sd([(2, 0.0), (400, 0.2), (100, 0.3), (1, None)])
    assert spread == pytest.approx(math.sqrt((399 * 0.04 + 99 * 0.09) / 499))
    lo, hi = mean_interval(2, 0.9, 0.0, prior_sd=spread)
    # moderated: variance 2/3 of the prior's on 3 degrees of freedom
    assert (hi - lo) / 2 == pytest.approx(
        3.1824 * math.sqrt(2 / 3) * spread / math.sqrt(2), rel=1e-3
    )
    # the well-measured arm's own interval: it barely moves, and is far narrower
    plain = mean_interval(400, 0.7, 0.2)
    moderated = mean_interval(400, 0.7, 0.2, prior_sd=spread)
    assert plain is not None and moderated is not None
    assert moderated[1] - moderated[0] == pytest.approx(plain[1] - plain[0], rel=0.01)
    assert moderated[1] - moderated[0] < (hi - lo) / 10
    assert pooled_sd([(1, None), (0, None)]) is None


def test_savings_read_as_less_more_or_times_as_much():
    assert ratio_figure(0.377) == "62.3% less"
    assert ratio_figure(1.0) == "0.0% less"
    assert ratio_figure(1.18) == "18.0% more"
    assert ratio_figure(2.1) == "2.1× as much"
    assert ratio_figure(8.935) == "8.9× as much"  # not "-793.5%"
    c = compare(0.00083, 0.00217)
    assert c["ratio"] == pytest.approx(0.00083 / 0.00217)
    assert c["saved_pct"] == pytest.approx(100 * (1 - 0.00083 / 0.00217))
    assert c["figure"] == "61.8% less" and c["saved"] == pytest.approx(0.00134)
    worse = compare(0.0045, 0.0021)
    assert worse["figure"] == "2.1× as much" and worse["saved_pct"] < -100
    assert compare(None, 0.1)["figure"] is None
    assert compare(0.1, 0.0)["ratio"] is None and compare(0.1, 0.0)["saved"] == -0.1


def test_best_arm_needs_enough_credited_decisions():
    def arm(name: str, n: int, mean: float | None) -> dict:
        return {"arm": name, "reward_n": n, "mean_reward": mean}

    # 2 lucky answers do not make the best arm while another arm has 10 or more
    arms = [arm("lucky", 2, 1.0), arm("large", 300, 0.78), arm("mathy", 340, 0.84)]
    assert best_arm(arms)["arm"] == "mathy"
    assert best_arm([arm("lucky", 2, 1.0), arm("large", 9, 0.7)])["arm"] == "large"
    assert best_arm([arm("a", 3, 0.5), arm("b", 3, 0.9)])["arm"] == "b"
    assert best_arm([arm("a", 0, None)]) is None and best_arm([]) is None
    assert best_arm([arm("b", 20, 0.8), arm("a", 20, 0.8)])["arm"] == "a"  # ties: by name


def test_window_labels():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert Window(None, now).since is None and Window(None, now).label == "all time"
    assert Window(3600, now).since == now - timedelta(hours=1)
    labels = [Window(s, now).label for s in (300, 3600, 86400, 7200, 90)]
    assert labels == ["last 5 min", "last hour", "last 24 h", "last 2 h", "last 90 s"]


def test_arm_intervals_shrink_with_pulls(client, engine):
    http, cfg = client
    rng = np.random.default_rng(3)
    rows = [(5, "trivia", "large", _noisy(rng, 0.6)) for _ in range(400)]
    rows += [(5, "trivia", "small", q) for q in (0.2, 0.9)]
    _serve(engine, cfg, rows)
    _learn(engine, cfg)
    arms = {a["arm"]: a for a in http.get("/v1/dashboard/overview").json()["arms"]}
    width = {a: arms[a]["reward_ci"][1] - arms[a]["reward_ci"][0] for a in ("large", "small")}
    assert arms["large"]["reward_n"] == 400 and arms["small"]["reward_n"] == 2
    assert width["small"] > 50 * width["large"]
    lo, hi = arms["large"]["reward_ci"]
    assert lo < arms["large"]["mean_reward"] < hi
    assert arms["large"]["policy_pulls"] == 400 and arms["coder"]["policy_pulls"] in (0, None)
    assert arms["coder"]["decisions"] == 0 and arms["coder"]["reward_ci"] is None
    # the policy's interval at the task's context shrinks the same way
    cells = {c["arm"]: c for c in http.get("/v1/dashboard/routing").json()["tasks"][0]["cells"]}
    est = {a: cells[a]["estimate_ci"][1] - cells[a]["estimate_ci"][0] for a in ("large", "small")}
    assert est["small"] > 5 * est["large"]


def test_one_baseline_named_for_reward_cost_and_energy(client, engine):
    http, cfg = client
    rng = np.random.default_rng(4)
    # small: cheap and good; large: 30x its cost; mathy: 3 perfect answers (too few)
    rows = [(5, "trivia", "small", _noisy(rng, 0.9)) for _ in range(30)]
    rows += [(5, "trivia", "large", _noisy(rng, 0.8)) for _ in range(30)]
    rows += [(5, "math", "mathy", 1.0) for _ in range(3)]
    _serve(engine, cfg, rows)
    _learn(engine, cfg)
    o = http.get("/v1/dashboard/overview").json()
    b = o["baseline"]
    assert b["arm"] == o["best_arm"] == "small" and b["reward_n"] == 30
    assert b["mean_cost_usd"] == pytest.approx(COST["small"])
    assert b["mean_energy_j"] == pytest.approx(ENERGY["small"])
    mean_cost = (30 * COST["small"] + 30 * COST["large"] + 3 * COST["mathy"]) / 63
    assert o["cost"]["ours"] == pytest.approx(mean_cost)
    assert o["cost"]["ratio"] == pytest.approx(mean_cost / COST["small"])
    assert o["cost"]["figure"] == f"{mean_cost / COST['small']:.1f}× as much"
    assert o["cost_saved_pct"] == pytest.approx(100 * (1 - mean_cost / COST["small"]))
    assert o["energy"]["theirs"] == pytest.approx(ENERGY["small"])
    assert o["energy"]["figure"].endswith("× as much")
    assert o["reward_vs_baseline"] == pytest.approx(o["mean_reward"] - b["mean_reward"])
    assert [a["arm"] for a in o["arms"] if a["baseline"]] == ["small"]


def test_routing_per_task_learns_each_tasks_arm(client, engine):
    http, cfg = client
    rng = np.random.default_rng(5)
    good = {"code": "coder", "math": "mathy", "trivia": "large"}
    rows = []
    for task, best in good.items():
        for arm in ("small", "coder", "mathy", "large"):
            rows += [(5, task, arm, _noisy(rng, 0.9 if arm == best else 0.3)) for _ in range(15)]
    rows += [(5, None, "small", _noisy(rng, 0.5)) for _ in range(6)]
    _serve(engine, cfg, rows)
    loop = _learn(engine, cfg)
    r = http.get("/v1/dashboard/routing").json()
    assert r["policy_version"] == loop.version and r["learner"] == "linucb"
    assert r["decisions"] == len(rows) and not r["capped"]
    assert r["arms"] == ["small", "coder", "mathy", "large"]
    assert [t["task"] for t in r["tasks"]] == ["code", "math", "trivia", "(none)"]
    for t in r["tasks"][:3]:
        cells = {c["arm"]: c for c in t["cells"]}
        assert t["decisions"] == 60 and t["credited"] == 60 and t["contexts"] == 60
        assert t["preferred"] == good[t["task"]] and t["preferred_by"] == "estimate"
        assert t["best_observed"] == good[t["task"]]
        assert all(c["share"] == pytest.approx(0.25) for c in cells.values())
        best = cells[good[t["task"]]]
        # the policy agrees with the data, and is sure of it: the task's arm's interval
        # lies above every other arm's
        lo, hi = best["estimate_ci"]
        assert lo < best["estimate"] < hi and lo < best["mean_reward"] < hi
        assert best["estimate"] == pytest.approx(best["mean_reward"], abs=0.1)
        assert all(lo > c["estimate_ci"][1] for c in cells.values() if c is not best)
        assert best["reward_ci"][0] < best["mean_reward"] < best["reward_ci"][1]
    none = r["tasks"][3]
    assert none["decisions"] == 6 and {c["arm"]: c["share"] for c in none["cells"]}["small"] == 1
    capped = http.get("/v1/dashboard/routing", params={"limit": 10}).json()
    assert capped["decisions"] == 10 and capped["capped"]
    assert sum(t["decisions"] for t in capped["tasks"]) == 10


def test_window_applies_to_every_figure(client, engine):
    http, cfg = client
    rng = np.random.default_rng(6)
    old = [(7200, "trivia", "large", _noisy(rng, 0.8)) for _ in range(20)]
    new = [(5, "code", "small", _noisy(rng, 0.4)) for _ in range(10)]
    _serve(engine, cfg, old + new)
    _learn(engine, cfg)
    with engine.begin() as conn:
        residency.record_residency_epoch(conn, epoch=1, replica="pool-a#0", adapters=["x"],
                                         started_at=datetime.now(UTC) - timedelta(hours=3),
                                         reason="epoch", status="applied")  # fmt: skip
        residency.close_residency_epoch(conn, epoch=1, replica="pool-a#0",
                                        ended_at=datetime.now(UTC) - timedelta(hours=2),
                                        page_ins=3, hits=7, misses=2)  # fmt: skip
    hour = {"window_s": 3600}
    o = http.get("/v1/dashboard/overview", params=hour).json()
    assert o["window"]["seconds"] == 3600 and o["window"]["label"] == "last hour"
    assert o["requests"] == 10 and o["feedback"] == 10 and o["rewarded"] == 10
    assert o["baseline"]["arm"] == "small"
    arms = {a["arm"]: a for a in o["arms"]}
    assert arms["large"]["decisions"] == 0 and arms["small"]["share"] == 1
    assert arms["large"]["policy_pulls"] == 20  # the policy's pulls are all time
    everything = http.get("/v1/dashboard/overview").json()
    assert everything["requests"] == 30 and everything["feedback"] == 30
    assert everything["baseline"]["arm"] == "large"
    curve = http.get("/v1/dashboard/learning", params={**hour, "buckets": 5}).json()["buckets"]
    assert sum(b["n"] for b in curve) == 10 and all(b["arms"] == {"small": b["n"]} for b in curve)
    whole = http.get("/v1/dashboard/learning", params={"buckets": 5}).json()["buckets"]
    assert sum(b["n"] for b in whole) == 30
    routing = http.get("/v1/dashboard/routing", params=hour).json()
    assert [t["task"] for t in routing["tasks"]] == ["code"] and routing["decisions"] == 10
    fb = http.get("/v1/dashboard/feedback", params=hour).json()["items"]
    assert len(fb) == 10 and {f["arm_id"] for f in fb} == {"small"}
    assert http.get("/v1/dashboard/residency", params=hour).json()["totals"] == []
    assert len(http.get("/v1/dashboard/residency").json()["totals"]) == 1
    assert http.get("/v1/dashboard/overview", params={"window_s": 0}).status_code == 422
