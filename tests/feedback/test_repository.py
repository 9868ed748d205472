"""Repositories on the real server: batches, idempotent feedback, the credit stream, snapshots."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from feedback import models as m
from feedback import repository as repo
from feedback.errors import InvalidInput, NotFound
from feedback.objective import Objective
from feedback.records import FeedbackInput
from tests.feedback.factories import ARMS, decision, outcome

WINDOW = 60.0
OBJ = Objective(feedback_window_s=WINDOW, prior_quality=0.4)


def _count(conn, table) -> int:
    return conn.execute(select(func.count()).select_from(table)).scalar_one()


@pytest.fixture
def arms(engine):
    with engine.begin() as conn:
        repo.upsert_arms(conn, ARMS)
    return engine


def test_batch_write_round_trips_context_and_is_idempotent(arms):
    ds = [decision(seed=i, dim=16) for i in range(50)]
    os_ = [outcome(d) for d in ds]
    with arms.begin() as conn:
        assert repo.write_decisions(conn, ds) == 50
        assert repo.write_outcomes(conn, os_) == 50
    with arms.begin() as conn:  # a retried batch writes nothing twice
        assert repo.write_decisions(conn, ds) == 0
        assert repo.write_outcomes(conn, os_) == 0
    with arms.connect() as conn:
        assert _count(conn, m.decisions) == 50
        row = conn.execute(
            select(m.decisions.c.context, m.decisions.c.context_dim).where(
                m.decisions.c.request_id == ds[7].request_id
            )
        ).one()
    assert row.context_dim == 16
    np.testing.assert_array_equal(np.frombuffer(row.context, dtype="<f4"), ds[7].context)


def test_batch_failing_midway_writes_none_of_it(arms):
    good = [decision(seed=i) for i in range(10)]
    bad = decision(arm="no-such-arm")
    with pytest.raises(IntegrityError, match="fk_decisions_arm_id_arms"), arms.begin() as conn:
        repo.write_decisions(conn, good[:5] + [bad] + good[5:])
    with arms.connect() as conn:
        assert _count(conn, m.decisions) == 0


def test_arms_upsert_retire_and_list(arms):
    with arms.begin() as conn:
        repo.retire_arm(conn, "large")
        assert [a.id for a in repo.list_arms(conn, active_only=True)] == ["base:sql", "small"]
        repo.upsert_arms(conn, [a for a in ARMS if a.id == "large"])  # re-adding revives it
        assert len(repo.list_arms(conn, active_only=True)) == 3
        with pytest.raises(NotFound):
            repo.retire_arm(conn, "ghost")


# ---------------------------------------------------------------- feedback


def _one_decision(engine, at=None):
    d = decision(at=at or datetime.now(UTC))
    with engine.begin() as conn:
        repo.write_decisions(conn, [d])
        repo.write_outcomes(conn, [outcome(d)])
    return d


def test_feedback_is_stored_once_and_repeat_reports_duplicate(arms):
    d = _one_decision(arms)
    fb = FeedbackInput.validated(str(d.request_id), 0.8, "user")
    with arms.begin() as conn:
        first = repo.record_feedback(conn, fb)
    with arms.begin() as conn:
        second = repo.record_feedback(conn, FeedbackInput.validated(str(d.request_id), 0.1, "user"))
        other_source = repo.record_feedback(
            conn, FeedbackInput.validated(str(d.request_id), 0.3, "judge")
        )
    assert not first.duplicate and first.feedback_id is not None
    assert second.duplicate and second.feedback_id is None
    assert not other_source.duplicate
    with arms.connect() as conn:
        qs = conn.execute(
            select(m.feedback.c.source, m.feedback.c.quality).order_by(m.feedback.c.id)
        ).all()
    assert [tuple(r) for r in qs] == [("user", 0.8), ("judge", 0.3)]


@pytest.mark.parametrize(
    ("request_id", "quality", "source", "field"),
    [
        ("not-a-uuid", 0.5, "user", "request_id"),
        (123, 0.5, "user", "request_id"),
        (None, 1.5, "user", "quality"),
        (None, -0.01, "user", "quality"),
        (None, float("nan"), "user", "quality"),
        (None, "0.5", "user", "quality"),
        (None, True, "user", "quality"),
        (None, 0.5, "", "source"),
        (None, 0.5, "x" * 65, "source"),
    ],
)
def test_bad_feedback_names_the_field_and_writes_nothing(arms, request_id, quality, source, field):
    d = _one_decision(arms)
    with pytest.raises(InvalidInput) as err:
        FeedbackInput.validated(
            request_id if request_id is not None else str(d.request_id), quality, source
        )
    assert err.value.field == field
    with arms.connect() as conn:
        assert _count(conn, m.feedback) == 0


def test_feedback_for_unknown_request_is_not_found_and_writes_nothing(arms):
    _one_decision(arms)
    unknown = FeedbackInput.validated(str(uuid.uuid4()), 0.5)
    with pytest.raises(NotFound) as err, arms.begin() as conn:
        repo.record_feedback(conn, unknown)
    assert err.value.resource == "request_id"
    with pytest.raises(NotFound), arms.begin() as conn:
        repo.record_feedback_many(conn, [unknown])
    with arms.connect() as conn:
        assert _count(conn, m.feedback) == 0


def test_feedback_batch_reports_duplicates_within_and_across_calls(arms):
    a, b = _one_decision(arms), _one_decision(arms)
    items = [
        FeedbackInput.validated(str(a.request_id), 1.0),
        FeedbackInput.validated(str(b.request_id), 0.0),
        FeedbackInput.validated(str(a.request_id), 0.2),  # same (request, source) within the batch
    ]
    with arms.begin() as conn:
        res = repo.record_feedback_many(conn, items)
    assert [r.duplicate for r in res] == [False, False, True]
    with arms.begin() as conn:
        again = repo.record_feedback_many(conn, items[:2])
    assert [r.duplicate for r in again] == [True, True]
    with arms.connect() as conn:
        assert _count(conn, m.feedback) == 2


# ---------------------------------------------------------------- the credit stream


def test_claims_follow_the_documented_rule_and_credit_each_decision_once(arms):
    now = datetime.now(UTC)
    fresh_fb = _one_decision(arms, at=now - timedelta(seconds=5))  # feedback within window
    fresh_none = _one_decision(arms, at=now - timedelta(seconds=5))  # still waiting
    expired = _one_decision(arms, at=now - timedelta(seconds=2 * WINDOW))  # no feedback: prior
    late_fb = _one_decision(arms, at=now - timedelta(seconds=2 * WINDOW))  # feedback after deadline
    failed = decision(at=now - timedelta(seconds=1))
    no_outcome = decision(at=now - timedelta(seconds=2 * WINDOW))  # outcome never arrived
    with arms.begin() as conn:
        repo.write_decisions(conn, [failed, no_outcome])
        repo.write_outcomes(conn, [outcome(failed, status="error")])
        # out of order: the second source arrives first; the first by id wins
        repo.record_feedback(conn, FeedbackInput.validated(str(fresh_fb.request_id), 0.9, "judge"))
        repo.record_feedback(conn, FeedbackInput.validated(str(fresh_fb.request_id), 0.1, "user"))
        repo.record_feedback(conn, FeedbackInput.validated(str(late_fb.request_id), 1.0, "user"))

    with arms.begin() as conn:
        events = repo.claim_reward_events(conn, OBJ, now)
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

    with arms.begin() as conn:  # nothing is credited twice
        assert repo.claim_reward_events(conn, OBJ, now) == []
        repo.record_feedback(conn, FeedbackInput.validated(str(fresh_none.request_id), 0.7, "user"))
        late = repo.claim_reward_events(conn, OBJ, now)
    assert [(e.request_id, e.credit_kind, e.quality) for e in late] == [
        (fresh_none.request_id, "feedback", 0.7)
    ]
    assert late[0].credit_seq > max(seqs)


def test_skip_rule_consumes_without_quality(arms):
    now = datetime.now(UTC)
    d = _one_decision(arms, at=now - timedelta(seconds=2 * WINDOW))
    with arms.begin() as conn:
        (e,) = repo.claim_reward_events(
            conn, OBJ.model_copy(update={"missing_quality": "skip"}), now
        )
    assert (e.request_id, e.credit_kind, e.quality) == (d.request_id, "skip", None)


def test_release_after_watermark_makes_events_claimable_again(arms):
    now = datetime.now(UTC)
    ds = [
        _one_decision(arms, at=now - timedelta(seconds=2 * WINDOW, milliseconds=i))
        for i in range(6)
    ]
    with arms.begin() as conn:
        first = repo.claim_reward_events(conn, OBJ, now, limit=2)
        rest = repo.claim_reward_events(conn, OBJ, now, limit=10)
        lag = repo.learner_lag(conn, OBJ, now)
    assert len(first) == 2 and len(rest) == 4 and lag["events_behind"] == 0
    watermark = first[-1].credit_seq
    with arms.begin() as conn:
        assert repo.release_claims_after(conn, watermark) == 4
        assert repo.learner_lag(conn, OBJ, now)["events_behind"] == 4
        again = repo.claim_reward_events(conn, OBJ, now)
    assert {e.request_id for e in again} == {e.request_id for e in rest}
    assert {e.request_id for e in first} | {e.request_id for e in again} == {
        d.request_id for d in ds
    }


def test_learner_lock_admits_one_holder(engine):
    with engine.connect() as a, engine.connect() as b:
        assert repo.try_learner_lock(a)
        assert not repo.try_learner_lock(b)
        repo.release_learner_lock(a)
        assert repo.try_learner_lock(b)
        repo.release_learner_lock(b)


# ---------------------------------------------------------------- snapshots


def _snap(conn, state: bytes, wm: int, **kw) -> int:
    return repo.save_snapshot(
        conn,
        learner_kind="linucb",
        config={"alpha": 1.0},
        state=state,
        watermark=wm,
        events_applied=wm,
        summary={"arms": {}},
        **kw,
    )


def test_snapshot_versions_increase_and_load_back(engine):
    with engine.begin() as conn:
        v1 = _snap(conn, b"one", 10)
        v2 = _snap(conn, b"two", 25)
    assert (v1, v2) == (1, 2)
    with engine.connect() as conn:
        latest = repo.latest_snapshot(conn)
        assert latest is not None
        assert (latest["version"], latest["state"], latest["watermark"]) == (2, b"two", 25)
        assert repo.get_snapshot(conn, 1)["state"] == b"one"
        assert [s["version"] for s in repo.list_snapshots(conn)] == [2, 1]
        with pytest.raises(NotFound):
            repo.get_snapshot(conn, 99)


def test_state_and_watermark_commit_together_or_not_at_all(engine):
    with pytest.raises(RuntimeError), engine.begin() as conn:
        _snap(conn, b"half", 7)
        raise RuntimeError("crash between state and commit")
    with engine.connect() as conn:
        assert repo.latest_snapshot(conn) is None
        assert conn.execute(text("SELECT count(*) FROM policy_snapshots")).scalar() == 0


def test_residency_epochs_record_plan_and_close(engine):
    t = datetime.now(UTC)
    with engine.begin() as conn:
        repo.record_residency_epoch(
            conn,
            epoch=1,
            replica="r0",
            adapters=["a", "b"],
            started_at=t,
            reason="fixed",
            status="planned",
        )
        repo.record_residency_epoch(
            conn,
            epoch=1,
            replica="r0",
            adapters=["a", "b"],
            started_at=t,
            reason="fixed",
            status="applied",
        )
        repo.close_residency_epoch(
            conn, epoch=1, replica="r0", ended_at=t, page_ins=2, hits=40, misses=2
        )
        (row,) = repo.list_residency_epochs(conn)
    assert (row["status"], row["adapters"], row["hits"]) == ("applied", ["a", "b"], 40)
