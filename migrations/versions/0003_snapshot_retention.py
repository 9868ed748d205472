"""snapshot retention: compacted versions and decisions by policy version

``policy_snapshots.state`` becomes nullable: retention compacts an old version by
deleting its state and keeping the row. ``ix_decisions_policy_version_created_at``
lets retention find when a version last served traffic with one index descent per
version (built concurrently, so a large ``decisions`` table keeps taking writes).

Downgrading deletes the compacted versions' rows: the old schema requires a state.

Revision ID: 0003
Revises: 0002_key_id
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002_key_id"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column(
        "policy_snapshots",
        "state",
        existing_type=sa.LargeBinary(),
        nullable=True,
        comment="null once compacted by retention",
    )
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_decisions_policy_version_created_at",
            "decisions",
            ["policy_version", "created_at"],
            unique=False,
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_decisions_policy_version_created_at",
            table_name="decisions",
            postgresql_concurrently=True,
        )
    op.execute("DELETE FROM policy_snapshots WHERE state IS NULL")
    op.alter_column(
        "policy_snapshots",
        "state",
        existing_type=sa.LargeBinary(),
        nullable=False,
        comment=None,
        existing_comment="null once compacted by retention",
    )
