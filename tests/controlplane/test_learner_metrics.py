"""The learner's own figures for ``/metrics``: credits tallied as they are applied, the
update rate over a window, and the lag (measured only while behind)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import numpy as np
import pytest

from controlplane.learner_loop import LearnerLoop
from controlplane.learner_metrics import CreditTally, Progress
from feedback.records import RewardRow
from tests.controlplane.learning import N, learning_config, write_traffic


def row(arm: str, kind: str, quality: float | None, seq: int) -> RewardRow:
    return RewardRow(credit_seq=seq, request_id=uuid.uuid4(), created_at=datetime.now(UTC),
                     arm_id=arm, context=np.zeros(2, np.float32), propensity=0.5,
                     policy_version=1, credit_kind=kind, quality=quality, latency_ms=100.0,
                     energy_j=2.0, cost_usd=0.01)  # fmt: skip


def test_credit_tally_sums_per_arm_and_kind():
    tally = CreditTally()
    rows = [row("a", "feedback", 1.0, 1), row("a", "feedback", 0.5, 2), row("b", "skip", None, 3)]
    tally.add(rows, rows[:2], np.array([0.9, 0.4]))
    tally.add([row("a", "prior", 0.5, 4)], [], [])
    assert tally.rows() == [
        {"arm": "a", "kind": "feedback", "events": 2.0, "reward": pytest.approx(1.3),
         "quality": 1.5, "energy_j": 4.0, "latency_ms": 200.0, "cost_usd": 0.02},
        {"arm": "a", "kind": "prior", "events": 1.0, "reward": 0.0,
         "quality": 0.5, "energy_j": 2.0, "latency_ms": 100.0, "cost_usd": 0.01},
        {"arm": "b", "kind": "skip", "events": 1.0, "reward": 0.0,
         "quality": 0.0, "energy_j": 2.0, "latency_ms": 100.0, "cost_usd": 0.01},
    ]  # fmt: skip


def test_progress_rate_over_the_window_and_lag_schedule():
    p = Progress(window_s=60.0, lag_every_s=5.0)
    assert p.rate(0.0) == 0.0
    for t in range(0, 121, 10):  # 100 events every 10 s
        p.stepped(float(t), t * 10)
    assert p.rate(120.0) == pytest.approx(10.0)
    assert p.rate(180.0) == pytest.approx(600 / 120)  # idle since t=120: the rate falls
    assert p.lag_due(0.0)
    p.measured(10.0, {"events_behind": 7.0, "seconds_behind": 3.0})
    assert not p.lag_due(14.0) and p.lag_due(15.0)
    p.caught_up(16.0)
    assert p.lag == {"events_behind": 0.0, "seconds_behind": 0.0}
    p.measured(20.0, {"events_behind": 9.0, "seconds_behind": 4.0}, took_s=1.0)
    assert not p.lag_due(39.0) and p.lag_due(40.0)  # a 1 s count: at most 5% of the time


def test_the_loop_reports_its_lag_while_behind_and_none_once_caught_up(engine):
    cfg = learning_config()  # batches of 25
    write_traffic(engine, cfg, 5)
    now = [1000.0]
    loop = LearnerLoop(engine, cfg, monotonic=lambda: now[0])
    loop.start()
    try:
        assert loop.step() == 25  # a full batch: behind, so the lag is measured
        m = loop.metrics()
        ready = m["lag_events"]
        assert 100 < ready < N and m["lag_seconds"] > 0
        now[0] += 1.0
        loop.step()  # within lag_every_s: not measured again
        assert loop.metrics()["lag_events"] == ready
        now[0] += 10.0
        loop.run_until_idle()
        m = loop.metrics()
        assert m["lag_events"] == m["lag_seconds"] == 0
        # the claim made ahead may have been counted as credited already, or not
        assert loop.events_applied - 25 - ready in (0, 25)
        assert sum(r["events"] for r in m["rewards"]) == loop.events_applied
        assert m["events_per_s"] == pytest.approx(loop.events_applied / 11.0)
    finally:
        loop.stop(snapshot=False)
