"""Read-only reports on the real server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from feedback.objective import Objective
from feedback.records import FeedbackInput
from feedback.repositories import feedback, reports, request_log, reward_stream, snapshots
from tests.feedback.factories import decision, outcome


def test_counts_since_counts_only_what_came_after(db):
    since = datetime.now(UTC) - timedelta(minutes=1)
    old, new = decision(at=since - timedelta(hours=1)), decision(at=since + timedelta(seconds=1))
    with db.begin() as conn:
        request_log.write_decisions(conn, [old, new])
        request_log.write_outcomes(conn, [outcome(old), outcome(new, status="error")])
        feedback.record_feedback(conn, FeedbackInput.validated(str(old.request_id), 0.5))
        claimed = reward_stream.claim_reward_events(conn, Objective(), since + timedelta(seconds=2))
        snapshots.save_snapshot(
            conn,
            learner_kind="linucb",
            config={},
            state=b"",
            watermark=1,
            events_applied=1,
            summary={},
        )
    assert len(claimed) == 2  # the old decision too, but it was made before ``since``
    with db.connect() as conn:
        assert reports.counts_since(conn, since) == {
            "decisions": 1,
            "outcomes": 1,  # by the time of their decision
            "feedback_rows": 1,  # stored just now, for the old decision
            "policy_versions": 1,
            "events_credited": 1,
        }
