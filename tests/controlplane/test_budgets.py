"""Spend budgets: arms excluded by expected cost, refusal until the period ends, spend
seeded from Postgres and never counted twice (real Postgres, no Ray)."""

from __future__ import annotations

import asyncio
import math
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from controlplane.budgets import ArmCosts, period_bounds
from controlplane.config import ConfigError
from feedback.records import DecisionRecord, OutcomeRecord
from feedback.repositories import request_log
from learners import make_learner
from learners.base import RewardEvent
from tests.controlplane.gatekeeping import (
    BODY,
    JOULES_PER_TOKEN,
    TOKENS,
    config,
    cost,
    gateway,
)

EVALS, OTHER, TEAM = "sk-evals-0123456789abcdef", "sk-other-0123456789abcdef", "sk-team-0123456"
READER = "sk-reader-0123456789abcdef"


@pytest.fixture
def keys(monkeypatch):
    for var, key in (("EVALS", EVALS), ("OTHER", OTHER), ("TEAM", TEAM), ("READER", READER)):
        monkeypatch.setenv(f"BANDITCTL_UNIT_{var}", key)
    return [
        {"name": "evals", "key_env": "BANDITCTL_UNIT_EVALS", "scopes": ["chat"]},
        {"name": "other", "key_env": "BANDITCTL_UNIT_OTHER", "scopes": ["chat"]},
        {"name": "team", "key_env": "BANDITCTL_UNIT_TEAM", "scopes": ["chat"], "tenant": "team-a"},
        {"name": "reader", "key_env": "BANDITCTL_UNIT_READER", "scopes": ["read"]},
    ]


def _budget(gw, name):
    stats = gw.http.get("/v1/stats", headers={"Authorization": f"Bearer {READER}"}).json()
    [b] = [b for b in stats["budgets"] if b["name"] == name]
    return b


def test_a_budget_excludes_the_dear_arm_then_refuses_until_the_period_ends(engine, keys):
    usd = 6.5 * cost("cheap")  # six cheap answers fit; a dear one never does
    assert cost("dear") > usd
    gw = gateway(engine, config(api_keys=keys, budgets=[{"key": "evals", "usd": usd}]))
    with gw.http:
        assert gw.chat(OTHER).json()["model"] == "dear"  # what the policy wants, unbudgeted
        for _ in range(6):
            resp = gw.chat(EVALS)
            assert resp.status_code == 200 and resp.json()["model"] == "cheap"
        refused = gw.chat(EVALS)
        assert refused.status_code == 429, refused.text
        err = refused.json()["error"]
        assert (err["type"], err["code"]) == ("budget_exceeded", "key:evals/day")
        _, end = period_bounds(gw.clocks.wall, "day")
        assert end.strftime("%Y-%m-%dT%H:%M:%SZ") in err["message"]
        retry = int(refused.headers["retry-after"])
        assert retry == math.ceil((end - gw.clocks.wall).total_seconds())
        assert gw.chat(OTHER).status_code == 200  # another key's traffic is not held back

        b = _budget(gw, "key:evals/day")
        assert b["spent_usd"] == pytest.approx(6 * cost("cheap"))
        assert b["remaining_usd"] == pytest.approx(usd - 6 * cost("cheap"))
        assert b["resets_at"] == end.isoformat() and b["joules"] is None

        rows = gw.decisions()
        assert [r["arm_id"] for r in rows if r["key_id"] == "evals"] == ["cheap"] * 6
        assert [r["arm_id"] for r in rows if r["key_id"] == "other"] == ["dear"] * 2

        gw.clocks.advance(retry)  # a new day: the budget is whole again
        assert gw.chat(EVALS).status_code == 200
        assert _budget(gw, "key:evals/day")["spent_usd"] == pytest.approx(cost("cheap"))


def test_a_joule_budget_on_a_tenant(engine, keys):
    joules = 3 * JOULES_PER_TOKEN["cheap"] * TOKENS  # three cheap answers, never a dear one
    cfg = config(
        api_keys=keys,
        auth={"open_chat": True},
        budgets=[{"tenant": "team-a", "joules": joules, "period": "hour"}],
    )
    gw = gateway(engine, cfg)
    with gw.http:
        team_a = {"metadata": {"tenant": "team-a"}}
        assert gw.chat(**team_a).json()["model"] == "cheap"
        assert gw.chat(**{"metadata": {"tenant": "team-b"}}).json()["model"] == "dear"
        # the team key counts as team-a whatever its requests say
        assert gw.chat(TEAM, metadata={"tenant": "team-b"}).json()["model"] == "cheap"
        assert gw.chat(**team_a).status_code == 200
        refused = gw.chat(TEAM)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "tenant:team-a/hour"
        _, end = period_bounds(gw.clocks.wall, "hour")
        assert int(refused.headers["retry-after"]) == math.ceil(
            (end - gw.clocks.wall).total_seconds()
        )
    rows = gw.decisions()
    assert [(r["tenant"], r["arm_id"]) for r in rows] == [
        ("team-a", "cheap"),
        ("team-b", "dear"),
        ("team-a", "cheap"),
        ("team-a", "cheap"),
    ]


def test_requests_in_flight_hold_their_dearest_arm_until_settled(engine, keys):
    usd = 1.5 * cost("dear")
    gw = gateway(engine, config(api_keys=keys, budgets=[{"key": "evals", "usd": usd}]))
    admission, arms = gw.admission, ["cheap", "dear"]
    key = gw.core.config.api_keys[0]
    learner = gw.core.policy.learner

    async def admit():
        return await admission.admit(key, BODY, arms, learner, uuid.uuid4())

    first = asyncio.run(admit())  # may go to either arm: holds the dear one's cost
    assert first.exclude == frozenset()
    second = asyncio.run(admit())  # what is left fits the cheap arm only
    assert second.exclude == {"dear"}
    spent = admission.budgets.report()[0]["spent_usd"]
    assert spent == pytest.approx(cost("dear") + cost("cheap"))
    admission.settle(first, {"usage": {"total_tokens": TOKENS},
                             "banditctl": {"cost_usd": cost("cheap"), "energy_j": 1.0}})  # fmt: skip
    admission.settle(second, None)  # failed before it was served: nothing spent
    assert admission.budgets.report()[0]["spent_usd"] == pytest.approx(cost("cheap"))


def _served(engine, at, key_id, tenant, usd, joules):
    rid = uuid.uuid4()
    d = DecisionRecord(
        rid, at, "auto", "cheap", np.zeros(32, np.float32), 1.0, 0, "fixed", tenant, None, key_id
    )
    o = OutcomeRecord(rid, at, "ok", 10.0, cost_usd=usd, energy_j=joules)
    with engine.begin() as conn:
        request_log.write_decisions(conn, [d])
        request_log.write_outcomes(conn, [o])


def test_spend_is_seeded_from_postgres_and_never_counted_twice(engine, keys):
    budgets = [
        {"key": "evals", "usd": 10.0, "period": "day"},
        {"tenant": "team-a", "joules": 1e6, "usd": 5.0, "period": "hour"},
    ]
    gw = gateway(engine, config(api_keys=keys, budgets=budgets))
    now = gw.clocks.wall
    day, hour = period_bounds(now, "day")[0], period_bounds(now, "hour")[0]
    _served(engine, hour + timedelta(microseconds=1), "evals", "team-a", 1.0, 100.0)
    _served(engine, day + timedelta(microseconds=1), "evals", None, 2.0, 0.0)
    _served(engine, day - timedelta(seconds=1), "evals", "team-a", 4.0, 400.0)  # yesterday
    _served(engine, hour - timedelta(microseconds=1), "other", "team-a", 8.0, 800.0)  # last hour
    seeded_team = (1.0, 100.0)
    with gw.http:  # the app's start reads the spend of the current periods
        evals = _budget(gw, "key:evals/day")
        assert evals["spent_usd"] == pytest.approx(3.0)
        assert evals["remaining_usd"] == pytest.approx(7.0)
        assert evals["period_start"] == day.isoformat()
        team = _budget(gw, "tenant:team-a/hour")
        assert (team["spent_usd"], team["spent_joules"]) == pytest.approx(seeded_team)

        for _ in range(3):
            assert gw.chat(EVALS, metadata={"tenant": "team-a"}).status_code == 200
        expect = 3.0 + 3 * cost("dear")  # both budgets have room for the dear arm
        assert _budget(gw, "key:evals/day")["spent_usd"] == pytest.approx(expect)
        gw.admission.budgets.refresh()  # before the log is written: still held here
        assert _budget(gw, "key:evals/day")["spent_usd"] == pytest.approx(expect)
        gw.decisions()  # writes the log
        gw.admission.budgets.refresh()  # now Postgres has them: let go here, counted there
        assert not gw.admission.budgets._held
        assert _budget(gw, "key:evals/day")["spent_usd"] == pytest.approx(expect)
        team = _budget(gw, "tenant:team-a/hour")
        assert team["spent_joules"] == pytest.approx(
            seeded_team[1] + 3 * JOULES_PER_TOKEN["dear"] * TOKENS
        )


def test_learned_costs_stand_in_for_missing_prices():
    cfg = config(
        arms=[{"name": "priced", "model": "p", "usd_per_1k_prompt_tokens": 2.0},
              {"name": "unpriced", "model": "u"}, {"name": "new", "model": "n"}],
        learner={"kind": "epsilon_greedy"},
    )  # fmt: skip
    learner = make_learner(cfg.learner, cfg.featurizer.dim)
    x = np.zeros(cfg.featurizer.dim)
    learner.update(
        [RewardEvent(x, "unpriced", np.array([1.0, 30.0, 100.0, c])) for c in (0.1, 0.3)]
    )
    costs = ArmCosts(cfg).expected(["priced", "unpriced", "new"], 500, 100, learner)
    assert costs["priced"] == (pytest.approx(1.0), 0.0)
    assert costs["unpriced"] == (pytest.approx(0.2), pytest.approx(30.0))
    assert costs["new"] == (0.0, 0.0)  # never served: nothing known, nothing excluded


def test_periods_are_calendar_aligned_in_utc():
    t = datetime(2026, 12, 31, 23, 30, 5, tzinfo=UTC)
    assert period_bounds(t, "hour") == (
        t.replace(minute=0, second=0),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert period_bounds(t, "day") == (
        datetime(2026, 12, 31, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert period_bounds(t, "month") == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    feb = datetime(2028, 2, 29, 12, tzinfo=UTC)
    assert period_bounds(feb, "month") == (datetime(2028, 2, 1, tzinfo=UTC), datetime(2028, 3, 1, tzinfo=UTC))  # fmt: skip


@pytest.mark.parametrize(
    ("budget", "needle"),
    [
        ({"key": "nobody", "usd": 1}, "unknown API key"),
        ({"tenant": "t"}, "usd, joules or both"),
        ({"key": "k", "tenant": "t", "usd": 1}, "exactly one of key, tenant"),
        ({"tenant": "t", "usd": 0}, "greater than 0"),
        ({"tenant": "t", "usd": 1, "period": "week"}, "period"),
    ],
)
def test_budget_config_is_checked(budget, needle):
    with pytest.raises(ConfigError, match=needle):
        config(api_keys=[{"name": "k", "key_env": "K"}], budgets=[budget])
    with pytest.raises(ConfigError, match="one budget per key or tenant and period"):
        config(budgets=[{"tenant": "t", "usd": 1}, {"tenant": "t", "joules": 1}])


def test_streamed_answers_spend_the_budget_as_whole_ones_do(engine, keys):
    usd = 2.5 * cost("cheap")
    gw = gateway(engine, config(api_keys=keys, budgets=[{"key": "evals", "usd": usd}]))
    with gw.http:
        for _ in range(2):
            streamed = gw.chat(EVALS, stream=True)
            assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
            assert streamed.headers["x-banditctl-arm"] == "cheap"
        assert _budget(gw, "key:evals/day")["spent_usd"] == pytest.approx(2 * cost("cheap"))
        refused = gw.chat(EVALS, stream=True)  # what is left fits no arm
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "budget_exceeded"
