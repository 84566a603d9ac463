"""Declarative ORM models: the one source of truth for the schema.

Alembic revisions are written against these models, and a test proves that a database
upgraded to head matches them exactly. ORM rows never leave a repository.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Sequence,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from statestore.db.types import UTCDateTime, identifier_type, json_type

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ID_LENGTH = 255
TENANT_ID_LENGTH = 64
STATUS_LENGTH = 32


class Base(DeclarativeBase):
    """Declarative base with a naming convention (batch mode on SQLite needs named
    constraints to drop them)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _tenant_fk(*, primary_key: bool = False) -> Mapped[str]:
    return mapped_column(
        identifier_type(TENANT_ID_LENGTH),
        ForeignKey("tenants.id", ondelete="RESTRICT"),
        nullable=False,
        primary_key=primary_key,
    )


class TenantOwned:
    """Mixin of every table whose rows belong to one tenant; the tenant filter targets it."""

    tenant_id: Mapped[str] = _tenant_fk()


class TenantRow(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(identifier_type(TENANT_ID_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(String(ID_LENGTH))
    status: Mapped[str] = mapped_column(String(STATUS_LENGTH))
    policy: Mapped[Any] = mapped_column(json_type(nullable=True), nullable=True)
    limits: Mapped[Any] = mapped_column(json_type(nullable=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WorkflowDefinitionRow(TenantOwned, Base):
    __tablename__ = "workflow_definitions"

    # The key is (tenant, workflow_id, version): the tenant leads it, so every lookup and
    # listing within one tenant is an index range.
    tenant_id: Mapped[str] = _tenant_fk(primary_key=True)
    workflow_id: Mapped[str] = mapped_column(identifier_type(ID_LENGTH), primary_key=True)
    version: Mapped[str] = mapped_column(identifier_type(ID_LENGTH), primary_key=True)
    ir: Mapped[Any] = mapped_column(json_type())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


HAS_IDEMPOTENCY_KEY = text("idempotency_key IS NOT NULL")


class ExecutionRow(TenantOwned, Base):
    __tablename__ = "workflow_executions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True)
    workflow_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    workflow_version: Mapped[str] = mapped_column(String(ID_LENGTH))
    status: Mapped[str] = mapped_column(String(STATUS_LENGTH))
    initial_input: Mapped[Any] = mapped_column(json_type())
    current_state: Mapped[Any] = mapped_column(json_type())
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The latest event sequence: appends bump it in the same transaction as the insert,
    # which serialises appends per execution and keeps sequences gapless.
    last_sequence: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # start_execution's idempotency key: unique per tenant, forever.
    idempotency_key: Mapped[str | None] = mapped_column(String(ID_LENGTH), nullable=True)
    # Continue-as-new: the previous segment (no foreign key: only columns are added to
    # this table, see alembic/versions/0005_segments.py) and the place in the chain.
    parent_execution_id: Mapped[uuid.UUID | None] = mapped_column(Uuid(), nullable=True)
    segment: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))

    __table_args__ = (
        Index(
            "ix_workflow_executions_idempotency",
            "tenant_id",
            "idempotency_key",
            unique=True,
            sqlite_where=HAS_IDEMPOTENCY_KEY,
            postgresql_where=HAS_IDEMPOTENCY_KEY,
        ),
        Index(None, "tenant_id", "updated_at", "id"),
        Index(None, "tenant_id", "status", "updated_at"),
        Index(None, "tenant_id", "workflow_id", "updated_at"),
        Index(None, "parent_execution_id"),
    )


class EventRow(TenantOwned, Base):
    __tablename__ = "events"

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True)
    execution_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(), ForeignKey("workflow_executions.id", ondelete="CASCADE")
    )
    sequence: Mapped[int] = mapped_column(BigInteger)
    event_type: Mapped[str] = mapped_column(String(ID_LENGTH))
    kind: Mapped[Any] = mapped_column(json_type())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The event's place in the database-wide feed, assigned by the insert statement
    # (statestore.db.queries.feed_position); see docs/architecture.md, "The feed".
    position: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    __table_args__ = (
        UniqueConstraint("execution_id", "sequence"),
        Index(None, "position", unique=True),
        Index(None, "tenant_id", "position"),
    )


FEED_SEQUENCE = Sequence("events_feed_seq", metadata=Base.metadata)
"""PostgreSQL: the low bits of a feed position (see ``feed_position``); unused on SQLite."""


class FeedCheckpointRow(TenantOwned, Base):
    """A feed consumer's place in the feed, per tenant."""

    __tablename__ = "feed_checkpoints"

    tenant_id: Mapped[str] = _tenant_fk(primary_key=True)
    consumer: Mapped[str] = mapped_column(identifier_type(ID_LENGTH), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SnapshotRow(TenantOwned, Base):
    __tablename__ = "snapshots"

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True)
    execution_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(), ForeignKey("workflow_executions.id", ondelete="CASCADE")
    )
    at_sequence: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[Any] = mapped_column(json_type())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The rest of the materialized state (a resume point); defaults for rows written
    # before these columns existed.
    status: Mapped[str] = mapped_column(String(STATUS_LENGTH), server_default="pending")
    completed_nodes: Mapped[Any] = mapped_column(json_type(), server_default="{}")
    active_nodes: Mapped[Any] = mapped_column(json_type(), server_default="[]")
    last_sequence: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))

    __table_args__ = (UniqueConstraint("execution_id", "at_sequence"),)


PENDING_ONLY = text("status = 'pending'")
CLAIMED_ONLY = text("status = 'claimed'")
DEAD_LETTERED_ONLY = text("status = 'dead_lettered'")
ACTIVE_DEDUPE_KEY = text("dedupe_key IS NOT NULL AND status IN ('pending', 'claimed')")


class WorkItemRow(TenantOwned, Base):
    """A work item. Dead letters are items with status ``dead_lettered`` (no table of their
    own: ``list_dead_letters`` reads them through a partial index)."""

    __tablename__ = "work_items"

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True)
    execution_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(), ForeignKey("workflow_executions.id", ondelete="CASCADE")
    )
    node_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    queue_type: Mapped[str] = mapped_column(String(ID_LENGTH))
    payload: Mapped[Any] = mapped_column(json_type())
    status: Mapped[str] = mapped_column(String(STATUS_LENGTH))
    priority: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    max_attempts: Mapped[int] = mapped_column(Integer)
    available_at: Mapped[datetime] = mapped_column(UTCDateTime())
    worker_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    lease_fence: Mapped[int] = mapped_column(BigInteger)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    dead_lettered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    dedupe_key: Mapped[str | None] = mapped_column(String(ID_LENGTH), nullable=True)

    __table_args__ = (
        # One active (pending or claimed) item per tenant, queue type and dedupe key: the
        # database refuses the second, so concurrent enqueues cannot both insert.
        Index(
            "ix_work_items_dedupe",
            "tenant_id",
            "queue_type",
            "dedupe_key",
            unique=True,
            sqlite_where=ACTIVE_DEDUPE_KEY,
            postgresql_where=ACTIVE_DEDUPE_KEY,
        ),
        # The claim: pending items of some queue types, highest priority first, then oldest.
        # Partial, so finished items never slow it down; matches the claim's ORDER BY.
        Index(
            "ix_work_items_claim",
            "queue_type",
            text("priority DESC"),
            "created_at",
            sqlite_where=PENDING_ONLY,
            postgresql_where=PENDING_ONLY,
        ),
        # Reclaim: claimed items by lease expiry.
        Index(
            "ix_work_items_lease",
            "lease_expires_at",
            sqlite_where=CLAIMED_ONLY,
            postgresql_where=CLAIMED_ONLY,
        ),
        Index(
            "ix_work_items_dead_letters",
            "tenant_id",
            "dead_lettered_at",
            sqlite_where=DEAD_LETTERED_ONLY,
            postgresql_where=DEAD_LETTERED_ONLY,
        ),
        Index(None, "tenant_id", "execution_id", "created_at"),
        Index(None, "tenant_id", "queue_type", "status"),
    )


class ApiTokenRow(TenantOwned, Base):
    __tablename__ = "api_tokens"

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True)
    name: Mapped[str] = mapped_column(String(ID_LENGTH))
    role: Mapped[str] = mapped_column(String(STATUS_LENGTH))
    secret_hash: Mapped[str] = mapped_column(String(ID_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (Index(None, "tenant_id", "created_at"),)


class EffectRow(TenantOwned, Base):
    """A recorded side effect (``commit_turn``'s ``effect_key``): first writer wins."""

    __tablename__ = "effects"

    tenant_id: Mapped[str] = _tenant_fk(primary_key=True)
    key: Mapped[str] = mapped_column(identifier_type(ID_LENGTH), primary_key=True)
    value: Mapped[Any] = mapped_column(json_type())
    execution_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(), ForeignKey("workflow_executions.id", ondelete="CASCADE")
    )
    item_id: Mapped[uuid.UUID | None] = mapped_column(Uuid(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index(None, "execution_id"),)


class ArtifactRow(TenantOwned, Base):
    """Content-addressed bytes, stored once per tenant under their SHA-256 (hex)."""

    __tablename__ = "artifacts"

    tenant_id: Mapped[str] = _tenant_fk(primary_key=True)
    hash: Mapped[str] = mapped_column(identifier_type(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    media_type: Mapped[str | None] = mapped_column(String(ID_LENGTH), nullable=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


TENANT_OWNED_MODELS: tuple[type[Base], ...] = (
    WorkflowDefinitionRow,
    ExecutionRow,
    EventRow,
    SnapshotRow,
    WorkItemRow,
    ApiTokenRow,
    EffectRow,
    FeedCheckpointRow,
    ArtifactRow,
)
