"""decisions.attempt and decisions.fallback_of: the attempts of a request that fell back

A request whose arm failed is retried on the next arm the policy picks; each attempt is
its own decision (its own propensity, credited on its own outcome), numbered by
``attempt``, and a fallback's ``fallback_of`` is the request id of the first attempt.
``attempt`` defaults to 1 (a constant default: adding it rewrites nothing on
PostgreSQL 11+); ``fallback_of`` is nullable, indexed where set.

Revision ID: 0004_attempts
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_attempts"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "decisions",
        sa.Column(
            "attempt",
            sa.SmallInteger(),
            server_default=sa.text("1"),
            nullable=False,
            comment="1, or the fallback attempt this decision was (2, 3, ...)",
        ),
    )
    op.add_column(
        "decisions",
        sa.Column(
            "fallback_of",
            postgresql.UUID(as_uuid=True),
            nullable=True,
            comment="a fallback's first attempt (the client request's id); null on a first attempt",
        ),
    )
    op.create_index(
        "ix_decisions_fallback_of",
        "decisions",
        ["fallback_of"],
        postgresql_where=sa.text("fallback_of IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_decisions_fallback_of", table_name="decisions")
    op.drop_column("decisions", "fallback_of")
    op.drop_column("decisions", "attempt")
