"""SQLAlchemy table definitions: the one schema every part of the loop shares.

Alembic migrations are generated from and checked against :data:`metadata`.

Reward crediting lives on ``decisions``: the learner claims a ready decision by
setting ``credit_seq`` from the ``reward_credit_seq`` sequence (see
``feedback.repositories.reward_stream.claim_reward_events``). A snapshot stores
the highest ``credit_seq`` it has applied as its watermark, so a restarted
learner un-claims everything above its last snapshot and every event is applied
once.

Old policy versions are compacted by retention
(``feedback.repositories.snapshots.prune_snapshots``): their ``state`` is set to
null and the row stays, so versions can still be listed by time with their event
counts, but no longer loaded or rolled back to.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Sequence,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

reward_credit_seq = Sequence("reward_credit_seq", metadata=metadata)

arms = Table(
    "arms",
    metadata,
    Column("id", Text, primary_key=True, comment="arm name: model or model:adapter"),
    Column("model", Text, nullable=False),
    Column("adapter", Text, nullable=True),
    Column("backend", Text, nullable=False),
    Column("active", Boolean, nullable=False, server_default=text("true")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("retired_at", DateTime(timezone=True), nullable=True),
    Column("meta", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
)

decisions = Table(
    "decisions",
    metadata,
    Column("request_id", UUID(as_uuid=True), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("route", Text, nullable=False),
    Column("arm_id", Text, ForeignKey("arms.id"), nullable=False),
    Column("context", LargeBinary, nullable=False, comment="float32 little-endian vector"),
    Column("context_dim", SmallInteger, nullable=False),
    Column("propensity", Float, nullable=False),
    Column("policy_version", Integer, nullable=False),
    Column("learner", Text, nullable=False),
    Column("tenant", Text, nullable=True),
    Column("task", Text, nullable=True),
    Column("key_id", Text, nullable=True, comment="the API key's name (never the key)"),
    Column(
        "attempt",
        SmallInteger,
        nullable=False,
        server_default=text("1"),
        comment="1, or the fallback attempt this decision was (2, 3, ...)",
    ),
    Column(
        "fallback_of",
        UUID(as_uuid=True),
        nullable=True,
        comment="a fallback's first attempt (the client request's id); null on a first attempt",
    ),
    Column(
        "client_request_id",
        Text,
        nullable=True,
        comment="the client's x-request-id, for correlation only (not unique)",
    ),
    Column("credit_seq", BigInteger, nullable=True),
    Column("credit_kind", Text, nullable=True),
    Column("credit_quality", Float, nullable=True),
    CheckConstraint("propensity > 0 AND propensity <= 1", name="propensity_range"),
    Index("ix_decisions_created_at", "created_at"),
    Index("ix_decisions_arm_id_created_at", "arm_id", "created_at"),
    Index("ix_decisions_policy_version_created_at", "policy_version", "created_at"),
    Index(
        "ix_decisions_uncredited",
        "created_at",
        "request_id",
        postgresql_where=text("credit_seq IS NULL"),
    ),
    Index("uq_decisions_credit_seq", "credit_seq", unique=True),
    Index(
        "ix_decisions_fallback_of",
        "fallback_of",
        postgresql_where=text("fallback_of IS NOT NULL"),
    ),
)

outcomes = Table(
    "outcomes",
    metadata,
    Column(
        "request_id",
        UUID(as_uuid=True),
        ForeignKey("decisions.request_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("status", Text, nullable=False, comment="ok | error | timeout"),
    Column("error", Text, nullable=True),
    Column("latency_ms", Float, nullable=False),
    Column("ttft_ms", Float, nullable=True),
    Column("prompt_tokens", Integer, nullable=False, server_default=text("0")),
    Column("completion_tokens", Integer, nullable=False, server_default=text("0")),
    Column("energy_j", Float, nullable=False, server_default=text("0")),
    Column("cost_usd", Float, nullable=False, server_default=text("0")),
    CheckConstraint("status IN ('ok', 'error', 'timeout')", name="status_known"),
    Index("ix_outcomes_failed", "created_at", postgresql_where=text("status <> 'ok'")),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("request_id", UUID(as_uuid=True), nullable=False),
    Column("source", Text, nullable=False),
    Column("quality", Float, nullable=False),
    Column("raw_rating", Text, nullable=True),
    Column("comment", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("request_id", "source"),
    CheckConstraint("quality >= 0 AND quality <= 1", name="quality_range"),
)

policy_snapshots = Table(
    "policy_snapshots",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("learner_kind", Text, nullable=False),
    Column("config", JSONB, nullable=False),
    Column("state", LargeBinary, nullable=True, comment="null once compacted by retention"),
    Column("watermark", BigInteger, nullable=False, comment="highest credit_seq applied"),
    Column("events_applied", BigInteger, nullable=False, server_default=text("0")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("reason", Text, nullable=False, server_default=text("'update'")),
    Column("parent_version", Integer, nullable=True),
    Column("summary", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
)

residency_epochs = Table(
    "residency_epochs",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("epoch", Integer, nullable=False),
    Column("replica", Text, nullable=False),
    Column("adapters", ARRAY(Text), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True), nullable=True),
    Column("reason", Text, nullable=False),
    Column("status", Text, nullable=False, comment="planned | applied | failed"),
    Column("error", Text, nullable=True),
    Column("page_ins", Integer, nullable=False, server_default=text("0")),
    Column("hits", Integer, nullable=False, server_default=text("0")),
    Column("misses", Integer, nullable=False, server_default=text("0")),
    UniqueConstraint("epoch", "replica"),
    CheckConstraint("status IN ('planned', 'applied', 'failed')", name="status_known"),
)

adapter_load_times = Table(
    "adapter_load_times",
    metadata,
    Column("replica", Text, primary_key=True),
    Column("adapter", Text, primary_key=True),
    Column("median_ms", Float, nullable=False, comment="median of the replica's recent loads"),
    Column("loads", Integer, nullable=False, comment="loads the replica has measured"),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("median_ms >= 0", name="median_ms_nonnegative"),
    CheckConstraint("loads > 0", name="loads_positive"),
)

# -- policy releases (issue #12): candidates, their shadows' picks, the release log ---------

policy_candidates = Table(
    "policy_candidates",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", Text, nullable=False),
    Column("spec", JSONB, nullable=False, comment="learner config and/or objective weights"),
    Column("status", Text, nullable=False, server_default=text("'shadow'")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("created_by", Text, nullable=True, comment="the API key's name"),
    Column("state", LargeBinary, nullable=True, comment="the shadow's state at its watermark"),
    Column("watermark", BigInteger, nullable=True, comment="highest credit_seq it applied"),
    Column("events_applied", BigInteger, nullable=False, server_default=text("0")),
    Column("started_at_seq", BigInteger, nullable=True, comment="the stream position it began at"),
    UniqueConstraint("name"),
    CheckConstraint("status IN ('shadow', 'promoted', 'retired')", name="status_known"),
)

shadow_decisions = Table(
    "shadow_decisions",
    metadata,
    Column(
        "candidate_id",
        Integer,
        ForeignKey("policy_candidates.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("request_id", UUID(as_uuid=True), primary_key=True),
    Column("credit_seq", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, comment="the decision's"),
    Column("arm", Text, nullable=False, comment="the arm the shadow would have picked"),
    Column("propensity", Float, nullable=False, comment="its probability of that arm"),
    Column("logged_arm", Text, nullable=False),
    Column("logged_propensity", Float, nullable=False),
    Column("probs", JSONB, nullable=False, comment="the shadow's probability of every arm"),
    Column("reward", Float, nullable=True, comment="the logged arm's reward; null: skip credit"),
    Index("ix_shadow_decisions_candidate_id_credit_seq", "candidate_id", "credit_seq"),
)

policy_releases = Table(
    "policy_releases",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("action", Text, nullable=False),
    Column("candidate_id", Integer, nullable=True),
    Column("from_version", Integer, nullable=True),
    Column("to_version", Integer, nullable=True),
    Column("key_id", Text, nullable=True, comment="who: the API key's name, or 'auto'"),
    Column("reason", Text, nullable=True),
    Column("forced", Boolean, nullable=False, server_default=text("false")),
    Column("estimates", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("watch", Text, nullable=True, comment="promotions: watching | passed | rolled_back"),
    CheckConstraint(
        "action IN ('register', 'promote', 'refuse', 'rollback', 'retire')", name="action_known"
    ),
    Index("ix_policy_releases_created_at", "created_at"),
)
