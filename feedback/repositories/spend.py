"""Spend: the cost and energy of served requests, by API key and by tenant, for budgets.

A request's spend is its outcome's ``cost_usd`` and ``energy_j``; it counts in the
period its decision was made in. Each query reads one period only, through
``ix_decisions_created_at``.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime

from sqlalchemy import Connection, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.types import Text

_SPEND = text(
    """
    SELECT 'key' AS kind, d.key_id AS who, sum(o.cost_usd) AS usd, sum(o.energy_j) AS joules
    FROM decisions d JOIN outcomes o ON o.request_id = d.request_id
    WHERE d.created_at >= :since AND d.key_id = ANY(:keys)
    GROUP BY d.key_id
    UNION ALL
    SELECT 'tenant', d.tenant, sum(o.cost_usd), sum(o.energy_j)
    FROM decisions d JOIN outcomes o ON o.request_id = d.request_id
    WHERE d.created_at >= :since AND d.tenant = ANY(:tenants)
    GROUP BY d.tenant
    """
).bindparams(bindparam("keys", type_=ARRAY(Text)), bindparam("tenants", type_=ARRAY(Text)))

_STORED = text("SELECT request_id FROM outcomes WHERE request_id = ANY(:ids)").bindparams(
    bindparam("ids", type_=ARRAY(UUID(as_uuid=True)))
)


def spend_since(
    conn: Connection, since: datetime, key_ids: Collection[str], tenants: Collection[str]
) -> dict[tuple[str, str], tuple[float, float]]:
    """``{("key", id) | ("tenant", name): (usd, joules)}`` of the outcomes of decisions
    made at or after ``since``, for the given key ids and tenants (absent: nothing spent)."""
    if not key_ids and not tenants:
        return {}
    rows = conn.execute(
        _SPEND, {"since": since, "keys": list(key_ids), "tenants": list(tenants)}
    ).all()
    return {(r.kind, r.who): (float(r.usd or 0.0), float(r.joules or 0.0)) for r in rows}


def outcomes_stored(conn: Connection, request_ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
    """Which of ``request_ids`` have their outcome in the table."""
    if not request_ids:
        return set()
    return {r[0] for r in conn.execute(_STORED, {"ids": list(request_ids)})}
