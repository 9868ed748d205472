"""Residency epochs: which adapters each replica holds, epoch by epoch, and their traffic."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from feedback import models as m


def record_residency_epoch(
    conn: Connection,
    *,
    epoch: int,
    replica: str,
    adapters: Sequence[str],
    started_at: datetime,
    reason: str,
    status: str,
    error: str | None = None,
) -> None:
    stmt = pg_insert(m.residency_epochs).values(
        epoch=epoch,
        replica=replica,
        adapters=list(adapters),
        started_at=started_at,
        reason=reason,
        status=status,
        error=error,
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["epoch", "replica"],
        set_={
            "adapters": stmt.excluded.adapters,
            "status": stmt.excluded.status,
            "error": stmt.excluded.error,
        },
    )
    conn.execute(stmt)


def close_residency_epoch(
    conn: Connection,
    *,
    epoch: int,
    replica: str,
    ended_at: datetime,
    page_ins: int,
    hits: int,
    misses: int,
) -> None:
    conn.execute(
        m.residency_epochs.update()
        .where((m.residency_epochs.c.epoch == epoch) & (m.residency_epochs.c.replica == replica))
        .values(ended_at=ended_at, page_ins=page_ins, hits=hits, misses=misses)
    )


def add_epoch_traffic(
    conn: Connection, *, epoch: int, replica: str, hits: int, misses: int
) -> None:
    """Add an epoch's request traffic; each miss was a page-in on the request path."""
    conn.execute(
        m.residency_epochs.update()
        .where((m.residency_epochs.c.epoch == epoch) & (m.residency_epochs.c.replica == replica))
        .values(
            hits=m.residency_epochs.c.hits + hits,
            misses=m.residency_epochs.c.misses + misses,
            page_ins=m.residency_epochs.c.page_ins + misses,
        )
    )


def list_residency_epochs(conn: Connection, limit: int = 500) -> list[dict[str, Any]]:
    q = (
        select(m.residency_epochs)
        .order_by(m.residency_epochs.c.epoch.desc(), m.residency_epochs.c.replica)
        .limit(limit)
    )
    return [dict(r._mapping) for r in conn.execute(q)]


def resident_adapters(conn: Connection) -> dict[str, list[str]]:
    """Per replica, the adapters of its latest applied epoch."""
    rows = conn.execute(
        text(
            "SELECT DISTINCT ON (replica) replica, adapters FROM residency_epochs "
            "WHERE status = 'applied' ORDER BY replica, epoch DESC"
        )
    ).all()
    return {r[0]: list(r[1]) for r in rows}


def record_load_times(
    conn: Connection, replica: str, measured: Mapping[str, tuple[float, int]], at: datetime
) -> None:
    """Upsert a replica's measured adapter loads: adapter -> (median ms, loads)."""
    rows = [
        {"replica": replica, "adapter": a, "median_ms": ms, "loads": n, "updated_at": at}
        for a, (ms, n) in measured.items()
        if n > 0
    ]
    if not rows:
        return
    stmt = pg_insert(m.adapter_load_times).values(rows)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["replica", "adapter"],
            set_={
                "median_ms": stmt.excluded.median_ms,
                "loads": stmt.excluded.loads,
                "updated_at": stmt.excluded.updated_at,
            },
        )
    )


def load_times_s(conn: Connection) -> dict[str, float]:
    """Per adapter, its measured load time in seconds: the median over the replicas
    that measured it of their medians (a replica that loads it slowly counts once,
    however often it loaded it)."""
    rows = conn.execute(
        text(
            "SELECT adapter, percentile_cont(0.5) WITHIN GROUP (ORDER BY median_ms) "
            "FROM adapter_load_times GROUP BY adapter"
        )
    ).all()
    return {str(r[0]): float(r[1]) / 1e3 for r in rows}
