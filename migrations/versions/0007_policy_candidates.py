"""policy releases: candidates, their shadows' picks and the release log (issue #12)

``policy_candidates``: candidate configs registered on the live system, each with its
shadow learner's state and watermark (saved in the live learner's snapshot
transaction). ``shadow_decisions``: per credited decision and candidate, the arm the
shadow would have picked, its probabilities and the logged reward (what off-policy
evaluation needs). ``policy_releases``: every registration, promotion, refusal and
rollback, with who, why and the estimates.

Revision ID: 0007_policy_candidates
Revises: 0006_client_request_id
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007_policy_candidates"
down_revision: str | None = "0006_client_request_id"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "policy_candidates",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column(
            "spec",
            postgresql.JSONB(astext_type=sa.Text()),
            nullable=False,
            comment="learner config and/or objective weights",
        ),
        sa.Column("status", sa.Text(), server_default=sa.text("'shadow'"), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("created_by", sa.Text(), nullable=True, comment="the API key's name"),
        sa.Column(
            "state", sa.LargeBinary(), nullable=True, comment="the shadow's state at its watermark"
        ),
        sa.Column(
            "watermark", sa.BigInteger(), nullable=True, comment="highest credit_seq it applied"
        ),
        sa.Column("events_applied", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "started_at_seq",
            sa.BigInteger(),
            nullable=True,
            comment="the stream position it began at",
        ),
        sa.CheckConstraint(
            "status IN ('shadow', 'promoted', 'retired')",
            name=op.f("ck_policy_candidates_status_known"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_candidates")),
        sa.UniqueConstraint("name", name=op.f("uq_policy_candidates_name")),
    )
    op.create_table(
        "shadow_decisions",
        sa.Column("candidate_id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.UUID(), nullable=False),
        sa.Column("credit_seq", sa.BigInteger(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, comment="the decision's"
        ),
        sa.Column("arm", sa.Text(), nullable=False, comment="the arm the shadow would have picked"),
        sa.Column("propensity", sa.Float(), nullable=False, comment="its probability of that arm"),
        sa.Column("logged_arm", sa.Text(), nullable=False),
        sa.Column("logged_propensity", sa.Float(), nullable=False),
        sa.Column(
            "probs",
            postgresql.JSONB(astext_type=sa.Text()),
            nullable=False,
            comment="the shadow's probability of every arm",
        ),
        sa.Column(
            "reward",
            sa.Float(),
            nullable=True,
            comment="the logged arm's reward; null: skip credit",
        ),
        sa.ForeignKeyConstraint(
            ["candidate_id"],
            ["policy_candidates.id"],
            name=op.f("fk_shadow_decisions_candidate_id_policy_candidates"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("candidate_id", "request_id", name=op.f("pk_shadow_decisions")),
    )
    op.create_index(
        "ix_shadow_decisions_candidate_id_credit_seq",
        "shadow_decisions",
        ["candidate_id", "credit_seq"],
        unique=False,
    )
    op.create_table(
        "policy_releases",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("candidate_id", sa.Integer(), nullable=True),
        sa.Column("from_version", sa.Integer(), nullable=True),
        sa.Column("to_version", sa.Integer(), nullable=True),
        sa.Column("key_id", sa.Text(), nullable=True, comment="who: the API key's name, or 'auto'"),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("forced", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column(
            "estimates",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "watch",
            sa.Text(),
            nullable=True,
            comment="promotions: watching | passed | rolled_back",
        ),
        sa.CheckConstraint(
            "action IN ('register', 'promote', 'refuse', 'rollback', 'retire')",
            name=op.f("ck_policy_releases_action_known"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_releases")),
    )
    op.create_index(
        "ix_policy_releases_created_at", "policy_releases", ["created_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_policy_releases_created_at", table_name="policy_releases")
    op.drop_table("policy_releases")
    op.drop_index("ix_shadow_decisions_candidate_id_credit_seq", table_name="shadow_decisions")
    op.drop_table("shadow_decisions")
    op.drop_table("policy_candidates")
