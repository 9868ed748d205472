"""decisions.key_id: the API key (its name in the config) a decision was made for

Nullable and without a default, so adding it rewrites nothing. Budgets sum the spend of
a key's decisions in the current period through ``ix_decisions_created_at``.

Revision ID: 0002_key_id
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_key_id"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "decisions",
        sa.Column("key_id", sa.Text(), nullable=True, comment="the API key's name (never the key)"),
    )


def downgrade() -> None:
    op.drop_column("decisions", "key_id")
