"""The learner's reward stream on the real server: the credit rule, claims, restarts, the lock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from feedback.objective import Objective
from feedback.records import FeedbackInput
from feedback.repositories import feedback, request_log, reward_stream
from tests.feedback.factories import decision, outcome, write_served

WINDOW = 60.0
OBJ = Objective(feedback_window_s=WINDOW, prior_quality=0.4)


def test_claims_follow_the_documented_rule_and_credit_each_decision_once(db):
    now = datetime.now(UTC)
    fresh_fb = write_served(db, at=now - timedelta(seconds=5))  # feedback within window
    fresh_none = write_served(db, at=now - timedelta(seconds=5))  # still waiting
    expired = write_served(db, at=now - timedelta(seconds=2 * WINDOW))  # no feedback: prior
    late_fb = write_served(db, at=now - timedelta(seconds=2 * WINDOW))  # feedback after deadline
    failed = decision(at=now - timedelta(seconds=1))
    no_outcome = decision(at=now - timedelta(seconds=2 * WINDOW))  # outcome never arrived
    with db.begin() as conn:
        request_log.write_decisions(conn, [failed, no_outcome])
        request_log.write_outcomes(conn, [outcome(failed, status="error")])
        # out of order: the second source arrives first; the first by id wins
        feedback.record_feedback(
            conn, FeedbackInput.validated(str(fresh_fb.request_id), 0.9, "judge")
        )
        feedback.record_feedback(
            conn, FeedbackInput.validated(str(fresh_fb.request_id), 0.1, "user")
        )
        feedback.record_feedback(
            conn, FeedbackInput.validated(str(late_fb.request_id), 1.0, "user")
        )

    with db.begin() as conn:
        events = reward_stream.claim_reward_events(conn, OBJ, now)
    got = {e.request_id: (e.credit_kind, e.quality) for e in events}
    assert got == {
        fresh_fb.request_id: ("feedback", 0.9),
        expired.request_id: ("prior", 0.4),
        late_fb.request_id: ("prior", 0.4),
        failed.request_id: ("error", 0.0),
    }
    seqs = [e.credit_seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4
    by_id = {e.request_id: e for e in events}
    np.testing.assert_allclose(by_id[expired.request_id].context, expired.context)

    with db.begin() as conn:  # nothing is credited twice
        assert reward_stream.claim_reward_events(conn, OBJ, now) == []
        feedback.record_feedback(
            conn, FeedbackInput.validated(str(fresh_none.request_id), 0.7, "user")
        )
        late = reward_stream.claim_reward_events(conn, OBJ, now)
    assert [(e.request_id, e.credit_kind, e.quality) for e in late] == [
        (fresh_none.request_id, "feedback", 0.7)
    ]
    assert late[0].credit_seq > max(seqs)


def test_skip_rule_consumes_without_quality(db):
    now = datetime.now(UTC)
    d = write_served(db, at=now - timedelta(seconds=2 * WINDOW))
    with db.begin() as conn:
        (e,) = reward_stream.claim_reward_events(
            conn, OBJ.model_copy(update={"missing_quality": "skip"}), now
        )
    assert (e.request_id, e.credit_kind, e.quality) == (d.request_id, "skip", None)


def test_release_after_watermark_makes_events_claimable_again(db):
    now = datetime.now(UTC)
    ds = [
        write_served(db, at=now - timedelta(seconds=2 * WINDOW, milliseconds=i)) for i in range(6)
    ]
    with db.begin() as conn:
        first = reward_stream.claim_reward_events(conn, OBJ, now, limit=2)
        rest = reward_stream.claim_reward_events(conn, OBJ, now, limit=10)
        lag = reward_stream.learner_lag(conn, OBJ, now)
    assert len(first) == 2 and len(rest) == 4 and lag["events_behind"] == 0
    watermark = first[-1].credit_seq
    with db.begin() as conn:
        assert reward_stream.release_claims_after(conn, watermark) == 4
        assert reward_stream.learner_lag(conn, OBJ, now)["events_behind"] == 4
        again = reward_stream.claim_reward_events(conn, OBJ, now)
    assert {e.request_id for e in again} == {e.request_id for e in rest}
    assert {e.request_id for e in first} | {e.request_id for e in again} == {
        d.request_id for d in ds
    }


def test_learner_lock_admits_one_holder(engine):
    with engine.connect() as a, engine.connect() as b:
        assert reward_stream.try_learner_lock(a)
        assert not reward_stream.try_learner_lock(b)
        reward_stream.release_learner_lock(a)
        assert reward_stream.try_learner_lock(b)
        reward_stream.release_learner_lock(b)
