"""Residency epochs on the real server: a plan is recorded, applied, then closed."""

from __future__ import annotations

from datetime import UTC, datetime

from feedback.repositories import residency


def test_residency_epochs_record_plan_and_close(engine):
    t = datetime.now(UTC)
    with engine.begin() as conn:
        residency.record_residency_epoch(
            conn,
            epoch=1,
            replica="r0",
            adapters=["a", "b"],
            started_at=t,
            reason="fixed",
            status="planned",
        )
        residency.record_residency_epoch(
            conn,
            epoch=1,
            replica="r0",
            adapters=["a", "b"],
            started_at=t,
            reason="fixed",
            status="applied",
        )
        residency.close_residency_epoch(
            conn, epoch=1, replica="r0", ended_at=t, page_ins=2, hits=40, misses=2
        )
        (row,) = residency.list_residency_epochs(conn)
    assert (row["status"], row["adapters"], row["hits"]) == ("applied", ["a", "b"], 40)
