"""The learner service's loop on real Postgres: exactly-once through a crash."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from controlplane.learner_loop import LearnerBusy, LearnerLoop
from tests.controlplane.learning import (
    N,
    assert_same_learner,
    final_state,
    learning_config,
    reset_learning,
    write_traffic,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crash_and_restart_applies_every_event_once(engine, seed):
    cfg = learning_config()
    write_traffic(engine, cfg, seed)
    now = lambda: datetime.now(UTC)  # noqa: E731  (feedback window 30 s: unrated ones wait)

    # the reference: one uninterrupted learner
    ref = LearnerLoop(engine, cfg, clock=now)
    ref.start()
    ref.run_until_idle()
    ref.stop()
    ref_snap, ref_credited = final_state(ref)
    rated = ref_credited[0]
    assert rated == ref_snap["events_applied"] and 0.7 * N < rated < 0.9 * N

    reset_learning(engine)
    first = LearnerLoop(engine, cfg, clock=now)
    first.start()
    for _ in range(5):  # 125 events claimed, snapshots at 60 and 120: 5 claimed past it
        first.step()
    assert first.pending > 0
    unapplied = first.pending + first.claimed_ahead()  # a full batch also claimed the next
    # crash: the process dies holding claims past its last snapshot, no stop()
    first._lock_conn.invalidate()  # type: ignore[union-attr]

    second = LearnerLoop(engine, cfg, clock=now)
    second.start(wait_s=10)  # the server drops the dead session's lock
    assert second.stats["released_on_start"] == unapplied
    second.run_until_idle()
    second.stop()
    snap, credited = final_state(second)
    assert credited == (rated, rated)  # each rated decision credited once, none lost
    assert snap["events_applied"] == rated
    assert_same_learner(ref_snap["state"], snap["state"], cfg.featurizer.dim)


def test_only_one_learner_consumes_a_database(engine):
    cfg = learning_config()
    a = LearnerLoop(engine, cfg)
    a.start()
    with pytest.raises(LearnerBusy):
        LearnerLoop(engine, cfg).start()
    a.stop()


def test_snapshots_publish_on_event_count_and_on_time(engine):
    cfg = learning_config(snapshot_every_events=100, snapshot_every_s=5.0)
    write_traffic(engine, cfg, 3)
    t = {"now": 0.0}
    loop = LearnerLoop(engine, cfg, clock=lambda: datetime.now(UTC), monotonic=lambda: t["now"])
    loop.start()
    assert loop.version == 1  # the initial policy
    for _ in range(4):
        loop.step()  # 100 events: one snapshot by count
    assert loop.version == 2
    loop.step()
    assert loop.version == 2 and loop.pending == 25
    t["now"] += 5.0
    loop.step()  # due by time
    assert loop.version == 3 and loop.pending == 0
    loop.stop()


def _spied_claims(monkeypatch):
    """The frontier each claim is given from now on (None: a sweep), in order."""
    from feedback.repositories import reward_stream

    seen: list[reward_stream.ClaimFrontier | None] = []
    real = reward_stream.claim_reward_events

    def spy(*args, since=None, **kw):
        seen.append(since)
        return real(*args, since=since, **kw)

    monkeypatch.setattr(reward_stream, "claim_reward_events", spy)
    return seen


def test_claims_read_only_what_arrived_between_sweeps(engine, monkeypatch):
    """A keeping-up loop sweeps at its start, then claims from a frontier ``FRONTIER_LAG``
    claims back and ``frontier_age_s`` old (feedback and failures that arrived since),
    sweeping again after a full batch and every ``claim_sweep_every_s``; feedback posted
    between steps is credited at the next step either way, and every rated decision once."""
    from controlplane.learner_loop import FRONTIER_LAG
    from feedback.records import FeedbackInput
    from feedback.repositories import feedback

    cfg = learning_config(batch_size=1000, claim_sweep_every_s=30.0)
    write_traffic(engine, cfg, 4)
    with engine.begin() as conn:  # the feedback not posted yet: it arrives between steps
        late = [r[0] for r in conn.execute(text("SELECT request_id FROM decisions WHERE request_id NOT IN (SELECT request_id FROM feedback) ORDER BY request_id"))]  # fmt: skip
    t = {"now": 0.0}
    seen = _spied_claims(monkeypatch)
    loop = LearnerLoop(engine, cfg, clock=lambda: datetime.now(UTC), monotonic=lambda: t["now"])
    loop.start()
    credited = [loop.step() for _ in range(FRONTIER_LAG)]  # sweeps: too few frontiers yet
    for rid in late[:6]:  # feedback between steps: the bounded claims find it
        with engine.begin() as conn:
            feedback.record_feedback(conn, FeedbackInput.validated(rid, 0.5))
        t["now"] += loop.frontier_age_s
        credited.append(loop.step())
    t["now"] += 30.0
    credited.append(loop.step())  # a sweep is due
    loop.stop()
    assert [s is None for s in seen] == [True] * FRONTIER_LAG + [False] * 6 + [True]
    first, last = seen[FRONTIER_LAG], seen[-2]
    assert first is not None and last is not None
    assert last.feedback_after > first.feedback_after  # the frontier moves on
    rated = N - len(late)
    assert credited == [rated] + [0] * (FRONTIER_LAG - 1) + [1] * 6 + [0]

    cut = learning_config(batch_size=25)  # a full batch: the next claim sweeps
    reset_learning(engine)
    seen.clear()
    loop = LearnerLoop(engine, cut, clock=lambda: datetime.now(UTC))
    loop.start()
    loop.run_until_idle()
    loop.stop()
    assert all(s is None for s in seen[: (rated + 6) // 25 + 1])
    assert final_state(loop)[1] == (rated + 6, rated + 6)


def test_feedback_whose_outcome_lands_a_flush_later_is_credited_without_a_sweep(
    engine, monkeypatch
):
    """The client's feedback can arrive before the gateway's writer flushes the answer's
    outcome (``gateway.log_flush_s``). A learner polling faster than that flush passes the
    feedback's id in ``FRONTIER_LAG`` claims; its frontier is also ``frontier_age_s`` old,
    so the outcome landing within that time is claimed at the next step, not by the next
    sweep (``claim_sweep_every_s`` later)."""
    from controlplane.learner_loop import FRONTIER_LAG
    from feedback.records import FeedbackInput
    from feedback.repositories import feedback

    cfg = learning_config(batch_size=1000, claim_sweep_every_s=30.0)
    write_traffic(engine, cfg, 5)
    with engine.begin() as conn:  # a decision without feedback: its outcome, held back
        rid = conn.execute(text("SELECT request_id FROM decisions WHERE request_id NOT IN (SELECT request_id FROM feedback) ORDER BY request_id LIMIT 1")).scalar_one()  # fmt: skip
        held = conn.execute(text("DELETE FROM outcomes WHERE request_id = :r RETURNING *"), {"r": rid}).mappings().one()  # fmt: skip
    seen = _spied_claims(monkeypatch)
    t = {"now": 0.0}
    loop = LearnerLoop(engine, cfg, clock=lambda: datetime.now(UTC), monotonic=lambda: t["now"])
    loop.start()
    poll = 0.1  # faster than the flush: FRONTIER_LAG claims pass in less than a flush
    assert FRONTIER_LAG * poll < cfg.gateway.log_flush_s < loop.frontier_age_s
    while len(seen) < FRONTIER_LAG or seen[-1] is None:  # to the first bounded claim
        loop.step()
        t["now"] += poll
    before = loop.metrics()["feedback_waits"]  # the traffic's ratings, credited by the sweeps
    with engine.begin() as conn:
        feedback.record_feedback(conn, FeedbackInput.validated(rid, 0.75))
    credited = []
    for _ in range(FRONTIER_LAG + 1):  # the feedback's id is passed: no outcome yet
        credited.append(loop.step())
        t["now"] += poll
    time.sleep(0.3)  # the rating waits for its outcome: its credit says how long (real time)
    with engine.begin() as conn:  # the writer's flush: the outcome lands
        cols = ", ".join(held)
        conn.execute(text(f"INSERT INTO outcomes ({cols}) VALUES ({', '.join(':' + c for c in held)})"), dict(held))  # fmt: skip
    credited.append(loop.step())
    loop.stop()
    assert seen[-1] is not None  # a bounded claim, no sweep
    assert credited == [0] * (FRONTIER_LAG + 1) + [1]
    with engine.begin() as conn:
        row = conn.execute(text("SELECT credit_kind, credit_quality FROM decisions WHERE request_id = :r"), {"r": rid}).one()  # fmt: skip
    assert tuple(row) == ("feedback", 0.75)
    waits = loop.metrics()["feedback_waits"]
    assert waits["count"] == before["count"] + 1
    assert 0.3 <= waits["sum"] - before["sum"] < 30.0


def test_the_frontiers_kept_are_bounded_when_every_claim_sweeps(engine):
    """Frontiers are read at every claim that is not cut short and dropped once a newer one
    is old enough, also when no claim uses one (a sweep due at every claim)."""
    from controlplane.learner_loop import FRONTIER_LAG

    cfg = learning_config(batch_size=1000, claim_sweep_every_s=0.01)
    t = {"now": 0.0}
    loop = LearnerLoop(engine, cfg, clock=lambda: datetime.now(UTC), monotonic=lambda: t["now"])
    loop.start()
    poll = 0.1
    for _ in range(100):
        loop.step()
        t["now"] += poll
    kept = list(loop._frontiers)
    loop.stop()
    assert FRONTIER_LAG <= len(kept) <= FRONTIER_LAG + loop.frontier_age_s / poll + 1
    assert t["now"] - kept[0][0] < loop.frontier_age_s + 2 * poll


def test_the_runner_waits_a_poll_after_any_batch_that_was_not_full():
    """A step that claimed fewer than a batch drained what was ready: the runner waits
    ``poll_interval_s`` before the next, instead of claiming again at once for the few
    decisions that became ready meanwhile; after a full batch it goes on at once."""
    import threading

    from controlplane.learner_runner import LearnerRunner

    cfg = learning_config(batch_size=100, poll_interval_s=0.25)
    claimed = iter([100, 100, 3, 0, 1, 100])
    waits: list[float] = []

    class Loop:
        config = cfg
        holding = True
        version = 1

        def step(self) -> int:
            n = next(claimed, None)
            if n is None:
                runner._stop.set()
                return 0
            return n

        def stop(self) -> None:
            pass

    class Waits(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(timeout or 0.0)
            return self.is_set()

    runner = LearnerRunner(Loop())  # type: ignore[arg-type]
    runner._stop = Waits()
    runner._run()
    assert waits[:3] == [0.25, 0.25, 0.25]  # after 3, 0 and 1; none after the full batches
    assert len(waits) == 4  # and the last turn's (0, after the script)


def test_a_policy_that_reads_another_task_layout_is_named_at_resume(engine, caplog):
    """A ``greenserv`` policy saved with 8 task slots, resumed under a featurizer of 12 (the
    same dimension), still reads the 8: the learner says so when it resumes, and not
    when the layout is the one the policy reads."""
    from controlplane.config import BanditConfig

    data = learning_config().model_dump(mode="json")
    data["learner"] = {"kind": "greenserv"}
    eight = BanditConfig.model_validate(data)
    data["featurizer"]["task_slots"] = 12
    twelve = BanditConfig.model_validate(data)
    assert eight.featurizer.dim == twelve.featurizer.dim
    with caplog.at_level("WARNING", logger="controlplane.learner_loop"):
        first = LearnerLoop(engine, eight)
        first.start()  # publishes version 1: greenserv over 8 slots
        first.stop()
        again = LearnerLoop(engine, eight)
        again.start()
        again.stop()
        assert "task slots" not in caplog.text
        later = LearnerLoop(engine, twelve)
        later.start()
        later.stop()
    assert (
        "the policy reads 8 task slots (positions 0-8), the featurizer now writes 12" in caplog.text
    )
