"""``banditctl db prune-log`` on the test database: the cutoffs it refuses, a dry run,
then a run that archives and deletes in batches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from controlplane.cli import main
from controlplane.cli.commands.db import log_cutoff_refusal
from controlplane.config import Budget
from feedback.objective import Objective
from feedback.records import FeedbackInput
from feedback.repositories import arms, feedback, request_log, reward_stream, snapshots
from tests.feedback.factories import ARMS, decision, outcome

DAY = 86400.0


def test_a_cutoff_inside_snapshot_retention_or_a_budget_period_is_refused():
    now = datetime(2026, 12, 20, 10, tzinfo=UTC)
    week = 7 * DAY
    assert "keep_served_s" in (log_cutoff_refusal(now, 6 * DAY, week, ()) or "")
    assert log_cutoff_refusal(now, 8 * DAY, week, ()) is None
    monthly = Budget(tenant="acme", usd=100.0, period="month")
    refusal = log_cutoff_refusal(now, 8 * DAY, week, (monthly,))  # Dec 12: inside December
    assert refusal is not None and "tenant acme" in refusal and "month" in refusal
    assert log_cutoff_refusal(now, 20 * DAY, week, (monthly,)) is None  # Nov 30
    daily = Budget(key="k", usd=1.0, period="day")
    assert log_cutoff_refusal(now, 8 * DAY, week, (daily,)) is None


def test_prune_log_dry_run_then_archived_batches(engine, db_url, monkeypatch, capsys, tmp_path):
    now = datetime.now(UTC)
    old = [decision(at=now - timedelta(days=30, seconds=i), seed=i) for i in range(5)]
    young = [decision(at=now - timedelta(days=1), seed=9)]
    with engine.begin() as conn:
        arms.upsert_arms(conn, ARMS)
        request_log.write_decisions(conn, old + young)
        request_log.write_outcomes(conn, [outcome(d) for d in old + young])
        feedback.record_feedback_many(
            conn, [FeedbackInput.validated(str(d.request_id), 0.5) for d in old]
        )
        rows = reward_stream.claim_reward_events(conn, Objective(feedback_window_s=60), now)
        snapshots.save_snapshot(
            conn, learner_kind="linucb", config={}, state=b"s",
            watermark=max(r.credit_seq for r in rows), events_applied=len(rows), summary={},
        )  # fmt: skip
    monkeypatch.setenv("DATABASE_URL", db_url)

    assert main(["db", "prune-log", "--older-than", "3d"]) == 2
    assert "keep_served_s" in capsys.readouterr().err

    args = ["db", "prune-log", "--older-than", "14d", "--batch", "2"]
    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "5 credited at or below the latest snapshot's watermark" in out
    assert "would delete: 5 decisions" in out

    assert main([*args, "--archive", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "deleted: 5 decisions, 5 outcomes, 5 feedback, 0 shadow picks in 3 batches" in out
    assert out.count("archived: ") == 4
    with engine.connect() as conn:
        left = conn.execute(text("SELECT request_id FROM decisions")).scalars().all()
    assert left == [young[0].request_id]
    assert main(args) == 0
    assert "deleted: 0 decisions" in capsys.readouterr().out
