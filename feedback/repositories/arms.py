"""Arms: the models and adapters traffic can be routed to."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from feedback import models as m
from feedback.errors import NotFound
from feedback.records import ArmRecord


def upsert_arms(conn: Connection, arms: Iterable[ArmRecord]) -> None:
    rows = [
        {
            "id": a.id,
            "model": a.model,
            "adapter": a.adapter,
            "backend": a.backend,
            "active": a.active,
            "meta": a.meta,
        }
        for a in arms
    ]
    if not rows:
        return
    stmt = pg_insert(m.arms).values(rows)
    stmt = stmt.on_conflict_do_update(
        index_elements=[m.arms.c.id],
        set_={
            "model": stmt.excluded.model,
            "adapter": stmt.excluded.adapter,
            "backend": stmt.excluded.backend,
            "active": stmt.excluded.active,
            "meta": stmt.excluded.meta,
            "retired_at": None,
        },
    )
    conn.execute(stmt)


def retire_arm(conn: Connection, arm_id: str) -> None:
    result = conn.execute(
        m.arms.update().where(m.arms.c.id == arm_id).values(active=False, retired_at=func.now())
    )
    if result.rowcount == 0:
        raise NotFound("arm", arm_id)


def list_arms(conn: Connection, active_only: bool = False) -> list[ArmRecord]:
    q = select(m.arms).order_by(m.arms.c.id)
    if active_only:
        q = q.where(m.arms.c.active.is_(True))
    return [
        ArmRecord(
            id=r.id,
            model=r.model,
            adapter=r.adapter,
            backend=r.backend,
            active=r.active,
            meta=r.meta,
        )
        for r in conn.execute(q)
    ]
