"""adapter load times: what paging an adapter in costs, as the replicas measured it

One row per (replica, adapter): the median of the replica's recent real loads of the
adapter and how many loads it has measured. The cache controller writes it every
epoch from the pools' statistics; the controller and the gateways price paging
from it (``CacheConfig.paging_model``), falling back to the configured rank's
estimate for an adapter no replica has loaded yet.

Revision ID: 0004_load_times
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_load_times"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "adapter_load_times",
        sa.Column("replica", sa.Text(), nullable=False),
        sa.Column("adapter", sa.Text(), nullable=False),
        sa.Column(
            "median_ms",
            sa.Float(),
            nullable=False,
            comment="median of the replica's recent loads",
        ),
        sa.Column("loads", sa.Integer(), nullable=False, comment="loads the replica has measured"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("replica", "adapter", name=op.f("pk_adapter_load_times")),
        sa.CheckConstraint(
            "median_ms >= 0", name=op.f("ck_adapter_load_times_median_ms_nonnegative")
        ),
        sa.CheckConstraint("loads > 0", name=op.f("ck_adapter_load_times_loads_positive")),
    )


def downgrade() -> None:
    op.drop_table("adapter_load_times")
