"""The learner's reward stream on the real server: the credit rule, claims, restarts, the lock.

The claim query is the production form of the missing-quality rule that
:meth:`Objective.resolve_quality` states in Python;
``test_claim_query_credits_exactly_what_the_python_rule_says`` checks, on
seeded random traffic, that the two credit the same decisions with the same
kind and quality.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Connection, event, select, text

from feedback import models as m
from feedback.objective import CreditKind, Objective
from feedback.records import DecisionRecord, FeedbackInput, OutcomeRecord, RewardRow
from feedback.repositories import feedback, request_log, reward_stream
from tests.feedback.factories import T0, decision, outcome, write_served

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


# ---------------------------------------------------------------- the SQL rule is the Python rule

SOURCES = ("user", "judge", "auto")
CASES = {
    "error outcome credited at once",
    "feedback within the window",
    "several feedback rows: the first by id, not the earliest",
    "feedback after the window: missing-quality rule",
    "feedback at the deadline: missing-quality rule",
    "no feedback before the window: waits",
    "no feedback after the window: missing-quality rule",
    "age exactly the window: missing-quality rule",
    "no outcome yet: waits",
    "feedback after the credit: not applied again",
}


@dataclass(frozen=True)
class _Served:
    decision: DecisionRecord
    outcome: OutcomeRecord | None  # None: the outcome never arrives
    feedback: tuple[tuple[str, float, datetime], ...]  # (source, quality, arrival)


@dataclass(frozen=True)
class _FeedbackRow:
    id: int
    quality: float
    created_at: datetime


def _draw_traffic(rng: np.random.Generator, n: int, window_ms: int) -> list[_Served]:
    """``n`` decisions over four feedback windows from T0, some exactly one window
    before a round's claim; outcomes that come late or never; 0 to 3 feedback rows
    each, arriving within the window, on its last millisecond, on the deadline or after."""

    def ms(k: int) -> timedelta:
        return timedelta(milliseconds=int(k))

    out = []
    for _ in range(n):
        at_ms = rng.choice(
            [int(rng.integers(0, 4 * window_ms + 1)), window_ms, window_ms + 1, 3 * window_ms]
        )
        d = decision(at=T0 + ms(at_ms), request_id=uuid.UUID(bytes=rng.bytes(16)))
        status = str(rng.choice(["ok"] * 6 + ["error", "timeout"]))
        late = rng.random() < 0.2
        delay_ms = rng.integers(0, 2 * window_ms if late else window_ms // 10 + 1)
        o = outcome(d, status=status, after_s=int(delay_ms) / 1000)
        sources = rng.choice(SOURCES, size=rng.choice(4, p=[0.3, 0.3, 0.2, 0.2]), replace=False)
        rows = []
        for source in sources:
            within = int(rng.integers(0, window_ms))
            after = int(rng.integers(window_ms, 2 * window_ms))
            offset_ms = rng.choice(
                [within, window_ms - 1, window_ms, after], p=[0.55, 0.1, 0.15, 0.2]
            )
            rows.append((str(source), round(float(rng.uniform()), 3), d.created_at + ms(offset_ms)))
        out.append(_Served(d, o if rng.random() < 0.95 else None, tuple(rows)))
    return out


def _python_credit(
    objective: Objective,
    now: datetime,
    d: DecisionRecord,
    o: OutcomeRecord | None,
    rows: list[_FeedbackRow],
) -> tuple[CreditKind, float | None] | None:
    """The rule as ``feedback.objective`` states it: once the outcome is logged,
    :meth:`Objective.resolve_quality` with the quality of the first feedback row (lowest
    id) that arrived before the deadline; None while the decision is not ready."""
    if o is None:
        return None
    deadline = d.created_at + timedelta(seconds=objective.feedback_window_s)
    early = [r for r in rows if r.created_at < deadline]
    first = min(early, key=lambda r: r.id) if early else None
    return objective.resolve_quality(
        status=o.status,
        feedback_quality=None if first is None else first.quality,
        age_s=(now - d.created_at).total_seconds(),
    )


def _cases(
    objective: Objective,
    now: datetime,
    s: _Served,
    arrived: bool,
    rows: list[_FeedbackRow],
    credit: tuple[CreditKind, float | None] | None,
) -> set[str]:
    """Which of :data:`CASES` deciding ``s`` at ``now`` exercises."""
    deadline = s.decision.created_at + timedelta(seconds=objective.feedback_window_s)
    age_s = (now - s.decision.created_at).total_seconds()
    early = [r for r in rows if r.created_at < deadline]
    kind = None if credit is None else credit[0]
    missing = kind == objective.missing_quality
    found = set()
    if not arrived:
        found.add("no outcome yet: waits")
    if kind == "error" and age_s < objective.feedback_window_s:
        found.add("error outcome credited at once")
    if kind == "feedback":
        found.add("feedback within the window")
        if min(early, key=lambda r: r.id) != min(early, key=lambda r: r.created_at):
            found.add("several feedback rows: the first by id, not the earliest")
    if missing and rows and not early:
        found.add("feedback after the window: missing-quality rule")
        if any(r.created_at == deadline for r in rows):
            found.add("feedback at the deadline: missing-quality rule")
    if missing and not rows:
        found.add("no feedback after the window: missing-quality rule")
    if missing and age_s == objective.feedback_window_s:
        found.add("age exactly the window: missing-quality rule")
    if arrived and credit is None and not early:
        found.add("no feedback before the window: waits")
    return found


@pytest.mark.parametrize("bounded", [False, True], ids=["sweep", "bounded"])
@pytest.mark.parametrize("missing_quality", ["prior", "skip"])
@pytest.mark.parametrize("seed", range(3))
def test_claim_query_credits_exactly_what_the_python_rule_says(db, seed, missing_quality, bounded):
    """Seeded traffic in two rounds (claims at two points in time, rows arriving in
    between): each round, the SQL claim path credits exactly the decisions
    ``Objective.resolve_quality`` says are ready, with the same kind and quality, and
    a decision credited once keeps its credit whatever feedback arrives later. The
    bounded claim, from a frontier read before the round's rows arrived, credits the
    same as the sweep."""
    rng = np.random.default_rng(seed)
    window_s = float(rng.choice([1.0, 30.0, 300.0]))
    objective = Objective(
        feedback_window_s=window_s,
        missing_quality=missing_quality,
        prior_quality=round(float(rng.uniform()), 3),
        error_quality=round(float(rng.uniform(0.0, 0.2)), 3),
    )
    served = _draw_traffic(rng, 150, int(window_s * 1000))
    window = timedelta(seconds=window_s)
    credited: dict[uuid.UUID, tuple[CreditKind, float | None]] = {}
    covered: set[str] = set()
    since = T0 - timedelta(days=1)
    for now in (T0 + 2 * window, T0 + 4 * window):
        new_feedback = [
            {"request_id": s.decision.request_id, "source": src, "quality": q, "created_at": t}
            for s in served
            for src, q, t in s.feedback
            if since < t <= now
        ]
        rng.shuffle(new_feedback)  # ids in another order than arrival times
        with db.connect() as conn:
            frontier = reward_stream.frontier_now(conn, since) if bounded else None
        with db.begin() as conn:
            request_log.write_decisions(
                conn, [s.decision for s in served if since < s.decision.created_at <= now]
            )
            outcomes = [s.outcome for s in served if s.outcome is not None]
            request_log.write_outcomes(conn, [o for o in outcomes if since < o.created_at <= now])
            if new_feedback:
                conn.execute(m.feedback.insert(), new_feedback)
        if any(f["request_id"] in credited for f in new_feedback):
            covered.add("feedback after the credit: not applied again")
        with db.connect() as conn:
            rows_of: dict[uuid.UUID, list[_FeedbackRow]] = defaultdict(list)
            for r in conn.execute(select(m.feedback)):
                rows_of[r.request_id].append(_FeedbackRow(r.id, r.quality, r.created_at))

        expected = {}
        for s in served:
            rid = s.decision.request_id
            if s.decision.created_at > now or rid in credited:
                continue
            arrived = s.outcome is not None and s.outcome.created_at <= now
            credit = _python_credit(
                objective, now, s.decision, s.outcome if arrived else None, rows_of[rid]
            )
            covered |= _cases(objective, now, s, arrived, rows_of[rid], credit)
            if credit is not None:
                expected[rid] = credit

        with db.begin() as conn:
            lag = reward_stream.learner_lag(conn, objective, now)
            events = reward_stream.claim_reward_events(
                conn, objective, now, limit=10_000, since=frontier
            )
        assert lag["events_behind"] == len(expected)
        assert {e.request_id: (e.credit_kind, e.quality) for e in events} == expected
        # a feedback credit says how long its rating waited (the server's clock; this test's
        # rows carry made-up times, so only its presence is checked here); no other
        assert all((e.feedback_wait_s is not None) == (e.credit_kind == "feedback") for e in events)
        assert all(e.feedback_wait_s is None or e.feedback_wait_s >= 0 for e in events)
        credited |= expected
        since = now

    with db.connect() as conn:
        d = m.decisions.c
        stored = conn.execute(
            select(d.request_id, d.credit_kind, d.credit_quality).where(d.credit_seq.is_not(None))
        ).all()
    assert {r.request_id: (r.credit_kind, r.credit_quality) for r in stored} == credited
    assert covered == CASES, f"seed {seed} leaves {sorted(CASES - covered)} unexercised"


def _decision_rows_scanned(
    db, claim: Callable[[Connection], object], statement_start: str = "WITH ready"
) -> int:
    """Rows of ``decisions`` that ``claim``'s statement (the one that starts with
    ``statement_start``) reads, by its plan's actual row counts (EXPLAIN ANALYZE, rolled
    back), planned as on a large log: by index."""
    plans: list[Any] = []

    def explain(conn: Connection, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().startswith(statement_start):
            with conn.connection.dbapi_connection.cursor() as raw:  # type: ignore[union-attr]
                raw.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", params)
                plans.append(raw.fetchone()[0])

    with db.begin() as conn:
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        event.listen(conn, "before_cursor_execute", explain)
        claim(conn)
        event.remove(conn, "before_cursor_execute", explain)
        conn.rollback()

    def scanned(node: dict[str, Any]) -> int:
        own = (
            node["Actual Rows"] * node["Actual Loops"]
            if node.get("Relation Name") == "decisions"
            else 0
        )
        return int(own) + sum(scanned(child) for child in node.get("Plans", []))  # fmt: skip

    (plan,) = plans
    return scanned(plan[0]["Plan"])


def test_a_bounded_claim_reads_no_waiting_decision(db):
    """500 decisions inside their feedback window wait; a bounded claim finds the three
    that became ready (feedback after the frontier, a failure after it, a deadline
    passed) reading only those decision rows, where a sweep reads every waiting one; the
    dashboard's lag (``overdue``) reads only the one past its deadline.
    Feedback that arrived before the frontier waits for the deadline or a sweep."""
    now = datetime.now(UTC)
    waiting = [decision(at=now - timedelta(seconds=5), seed=i) for i in range(500)]
    old_feedback, new_feedback, failed = (
        decision(at=now - timedelta(seconds=4), seed=600 + i) for i in range(3)
    )
    past_deadline = decision(at=now - timedelta(seconds=2 * WINDOW))
    served = [*waiting, old_feedback, new_feedback, past_deadline]
    with db.begin() as conn:
        request_log.write_decisions(conn, [*served, failed])
        request_log.write_outcomes(conn, [outcome(d) for d in served])
        feedback.record_feedback(
            conn, FeedbackInput.validated(str(old_feedback.request_id), 0.7, "user")
        )
    with db.connect() as conn:
        frontier = reward_stream.frontier_now(conn, now - timedelta(seconds=3))
    with db.begin() as conn:
        request_log.write_outcomes(conn, [outcome(failed, status="error", after_s=2)])
        feedback.record_feedback(
            conn, FeedbackInput.validated(str(new_feedback.request_id), 0.9, "user")
        )
    with db.connect() as conn:
        conn.execute(text("ANALYZE decisions, outcomes, feedback"))  # plans as on a live log
        conn.commit()

    def bounded(conn: Connection) -> list[RewardRow]:
        return reward_stream.claim_reward_events(conn, OBJ, now, since=frontier)

    def sweep(conn: Connection) -> list[RewardRow]:
        return reward_stream.claim_reward_events(conn, OBJ, now)

    assert _decision_rows_scanned(db, bounded) <= 10  # its candidates
    assert _decision_rows_scanned(db, sweep) >= len(waiting)  # every waiting decision
    with db.connect() as conn:  # the dashboard's lag: only the overdue one, read alone
        late = reward_stream.overdue(conn, OBJ, now)
    assert late["events_behind"] == 1 and late["seconds_behind"] == pytest.approx(WINDOW, abs=1)

    def overdue(conn: Connection) -> dict[str, float]:
        return reward_stream.overdue(conn, OBJ, now)

    assert _decision_rows_scanned(db, overdue, "SELECT count(*)") <= 2
    with db.begin() as conn:
        got = {e.request_id: (e.credit_kind, e.quality) for e in bounded(conn)}
    assert got == {
        new_feedback.request_id: ("feedback", 0.9),
        failed.request_id: ("error", 0.0),
        past_deadline.request_id: ("prior", 0.4),
    }
    with db.begin() as conn:
        (swept,) = sweep(conn)
    assert (swept.request_id, swept.credit_kind, swept.quality) == (
        old_feedback.request_id, "feedback", 0.7,
    )  # fmt: skip
