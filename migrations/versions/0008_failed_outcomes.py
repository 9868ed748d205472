"""failed outcomes by time: the learner's claim finds new failures without a scan

``ix_outcomes_failed`` indexes the outcomes whose status is not ``ok`` by
``created_at`` (a partial index: a served request's outcome does not enter it).
The learner's bounded claim (``reward_stream.claim_reward_events`` with a
``ClaimFrontier``) reads the failures logged since its last claims through it,
instead of walking every decision still inside its feedback window on each poll.
Built concurrently, so a large ``outcomes`` table keeps taking writes.

Revision ID: 0008_failed_outcomes
Revises: 0007_policy_candidates
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_failed_outcomes"
down_revision: str | None = "0007_policy_candidates"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_outcomes_failed",
            "outcomes",
            ["created_at"],
            unique=False,
            postgresql_where=sa.text("status <> 'ok'"),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ix_outcomes_failed", table_name="outcomes", postgresql_concurrently=True)
