"""The learner's own figures for ``/metrics``: credits tallied as they are applied, how long
ratings waited for their credit, the update rate over a window, and the lag (measured only
while behind)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import numpy as np
import pytest

from controlplane.learner_loop import LearnerLoop
from controlplane.learner_metrics import CreditTally, Progress, WaitHistogram
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


def test_wait_histogram_counts_each_wait_in_the_first_bucket_that_holds_it():
    h = WaitHistogram((0.5, 1.0, 30.0))
    h.add([0.0, 0.5, 0.50001, 1.0, 29.0, 31.0])
    h.add([])
    snap = h.snapshot()
    assert snap["le"] == [[0.5, 2], [1.0, 4], [30.0, 5]]  # cumulative, "at or under"
    assert snap["count"] == 6 and snap["sum"] == pytest.approx(62.00001)
    assert WaitHistogram().snapshot() == {
        "le": [[b, 0] for b in WaitHistogram().buckets], "count": 0, "sum": 0.0,
    }  # fmt: skip


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
        # every rating credited is timed (the traffic was written before the loop started)
        rated = sum(r["events"] for r in m["rewards"] if r["kind"] == "feedback")
        assert rated > 0 and m["feedback_waits"]["count"] == rated
        assert m["feedback_waits"]["sum"] > 0
        # ... and rendered as a Prometheus histogram, the same on every gateway's /metrics
        from controlplane.metrics import learner_families

        (hist,) = [f for f in learner_families(m, True) if f.type == "histogram"]
        assert hist.name == "banditctl_learner_feedback_wait_seconds"
        got = {(s.name, s.labels.get("le")): s.value for s in hist.samples}
        assert got[(hist.name + "_bucket", "+Inf")] == got[(hist.name + "_count", None)] == rated
        assert got[(hist.name + "_bucket", "0.1")] <= got[(hist.name + "_bucket", "300.0")]
        assert m["events_per_s"] == pytest.approx(loop.events_applied / 11.0)
    finally:
        loop.stop(snapshot=False)
