"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(sa.schema.CreateSequence(sa.Sequence("reward_credit_seq")))
    op.create_table(
        "arms",
        sa.Column("id", sa.Text(), nullable=False, comment="arm name: model or model:adapter"),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("adapter", sa.Text(), nullable=True),
        sa.Column("backend", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "meta",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_arms")),
    )
    op.create_table(
        "feedback",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.UUID(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("quality", sa.Float(), nullable=False),
        sa.Column("raw_rating", sa.Text(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("quality >= 0 AND quality <= 1", name=op.f("ck_feedback_quality_range")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
        sa.UniqueConstraint("request_id", "source", name=op.f("uq_feedback_request_id_source")),
    )
    op.create_table(
        "policy_snapshots",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("learner_kind", sa.Text(), nullable=False),
        sa.Column("config", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=False),
        sa.Column(
            "watermark", sa.BigInteger(), nullable=False, comment="highest credit_seq applied"
        ),
        sa.Column("events_applied", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("reason", sa.Text(), server_default=sa.text("'update'"), nullable=False),
        sa.Column("parent_version", sa.Integer(), nullable=True),
        sa.Column(
            "summary",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_policy_snapshots")),
    )
    op.create_table(
        "residency_epochs",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("replica", sa.Text(), nullable=False),
        sa.Column("adapters", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, comment="planned | applied | failed"),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("page_ins", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("hits", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("misses", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.CheckConstraint(
            "status IN ('planned', 'applied', 'failed')",
            name=op.f("ck_residency_epochs_status_known"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_residency_epochs")),
        sa.UniqueConstraint("epoch", "replica", name=op.f("uq_residency_epochs_epoch_replica")),
    )
    op.create_table(
        "decisions",
        sa.Column("request_id", sa.UUID(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("route", sa.Text(), nullable=False),
        sa.Column("arm_id", sa.Text(), nullable=False),
        sa.Column(
            "context", sa.LargeBinary(), nullable=False, comment="float32 little-endian vector"
        ),
        sa.Column("context_dim", sa.SmallInteger(), nullable=False),
        sa.Column("propensity", sa.Float(), nullable=False),
        sa.Column("policy_version", sa.Integer(), nullable=False),
        sa.Column("learner", sa.Text(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=True),
        sa.Column("task", sa.Text(), nullable=True),
        sa.Column("credit_seq", sa.BigInteger(), nullable=True),
        sa.Column("credit_kind", sa.Text(), nullable=True),
        sa.Column("credit_quality", sa.Float(), nullable=True),
        sa.CheckConstraint(
            "propensity > 0 AND propensity <= 1", name=op.f("ck_decisions_propensity_range")
        ),
        sa.ForeignKeyConstraint(["arm_id"], ["arms.id"], name=op.f("fk_decisions_arm_id_arms")),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_decisions")),
    )
    op.create_index(
        "ix_decisions_arm_id_created_at", "decisions", ["arm_id", "created_at"], unique=False
    )
    op.create_index("ix_decisions_created_at", "decisions", ["created_at"], unique=False)
    op.create_index(
        "ix_decisions_uncredited",
        "decisions",
        ["created_at", "request_id"],
        unique=False,
        postgresql_where=sa.text("credit_seq IS NULL"),
    )
    op.create_index("uq_decisions_credit_seq", "decisions", ["credit_seq"], unique=True)
    op.create_table(
        "outcomes",
        sa.Column("request_id", sa.UUID(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, comment="ok | error | timeout"),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("energy_j", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.Column("cost_usd", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.CheckConstraint(
            "status IN ('ok', 'error', 'timeout')", name=op.f("ck_outcomes_status_known")
        ),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["decisions.request_id"],
            name=op.f("fk_outcomes_request_id_decisions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_outcomes")),
    )


def downgrade() -> None:
    op.drop_table("outcomes")
    op.drop_index("uq_decisions_credit_seq", table_name="decisions")
    op.drop_index(
        "ix_decisions_uncredited",
        table_name="decisions",
        postgresql_where=sa.text("credit_seq IS NULL"),
    )
    op.drop_index("ix_decisions_created_at", table_name="decisions")
    op.drop_index("ix_decisions_arm_id_created_at", table_name="decisions")
    op.drop_table("decisions")
    op.drop_table("residency_epochs")
    op.drop_table("policy_snapshots")
    op.drop_table("feedback")
    op.drop_table("arms")
    op.execute(sa.schema.DropSequence(sa.Sequence("reward_credit_seq")))
