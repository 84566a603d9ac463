"""Initial schema: every table of the contract, and the ``default`` tenant.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from statestore.db.types import UTCDateTime

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json(*, nullable: bool = False) -> sa.types.TypeEngine[object]:
    return sa.JSON(none_as_null=nullable).with_variant(
        postgresql.JSONB(none_as_null=nullable), "postgresql"
    )


def _key(length: int) -> sa.types.TypeEngine[str]:
    # Bytewise order on PostgreSQL whatever the server's locale (SQLite's default already is).
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def _tenant_id() -> sa.Column[str]:
    return sa.Column("tenant_id", _key(64), nullable=False)


def _tenant_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["tenant_id"],
        ["tenants.id"],
        name=op.f(f"fk_{table}_tenant_id_tenants"),
        ondelete="RESTRICT",
    )


def _execution_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["execution_id"],
        ["workflow_executions.id"],
        name=op.f(f"fk_{table}_execution_id_workflow_executions"),
        ondelete="CASCADE",
    )


def _partial(status: str) -> dict[str, sa.TextClause]:
    where = sa.text(f"status = '{status}'")
    return {"sqlite_where": where, "postgresql_where": where}


def upgrade() -> None:
    tenants = op.create_table(
        "tenants",
        sa.Column("id", _key(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("policy", _json(nullable=True), nullable=True),
        sa.Column("limits", _json(nullable=True), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Uuid(), nullable=False),
        _tenant_id(),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("secret_hash", sa.String(255), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("last_used_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        _tenant_fk("api_tokens"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
    )
    op.create_index(
        op.f("ix_api_tokens_tenant_id_created_at"), "api_tokens", ["tenant_id", "created_at"]
    )
    op.create_table(
        "workflow_definitions",
        _tenant_id(),
        sa.Column("workflow_id", _key(255), nullable=False),
        sa.Column("version", _key(255), nullable=False),
        sa.Column("ir", _json(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        _tenant_fk("workflow_definitions"),
        sa.PrimaryKeyConstraint(
            "tenant_id", "workflow_id", "version", name=op.f("pk_workflow_definitions")
        ),
    )
    op.create_table(
        "workflow_executions",
        sa.Column("id", sa.Uuid(), nullable=False),
        _tenant_id(),
        sa.Column("workflow_id", sa.String(255), nullable=False),
        sa.Column("workflow_version", sa.String(255), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("initial_input", _json(), nullable=False),
        sa.Column("current_state", _json(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
        sa.Column("last_sequence", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        _tenant_fk("workflow_executions"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_executions")),
    )
    for columns in (
        ["tenant_id", "status", "updated_at"],
        ["tenant_id", "updated_at", "id"],
        ["tenant_id", "workflow_id", "updated_at"],
    ):
        op.create_index(
            op.f("ix_workflow_executions_" + "_".join(columns)), "workflow_executions", columns
        )
    op.create_table(
        "events",
        sa.Column("id", sa.Uuid(), nullable=False),
        _tenant_id(),
        sa.Column("execution_id", sa.Uuid(), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("event_type", sa.String(255), nullable=False),
        sa.Column("kind", _json(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        _execution_fk("events"),
        _tenant_fk("events"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sa.UniqueConstraint(
            "execution_id", "sequence", name=op.f("uq_events_execution_id_sequence")
        ),
    )
    op.create_table(
        "snapshots",
        sa.Column("id", sa.Uuid(), nullable=False),
        _tenant_id(),
        sa.Column("execution_id", sa.Uuid(), nullable=False),
        sa.Column("at_sequence", sa.BigInteger(), nullable=False),
        sa.Column("state", _json(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        _execution_fk("snapshots"),
        _tenant_fk("snapshots"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_snapshots")),
        sa.UniqueConstraint(
            "execution_id", "at_sequence", name=op.f("uq_snapshots_execution_id_at_sequence")
        ),
    )
    op.create_table(
        "work_items",
        sa.Column("id", sa.Uuid(), nullable=False),
        _tenant_id(),
        sa.Column("execution_id", sa.Uuid(), nullable=False),
        sa.Column("node_id", sa.String(255), nullable=False),
        sa.Column("queue_type", sa.String(255), nullable=False),
        sa.Column("payload", _json(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("available_at", UTCDateTime(), nullable=False),
        sa.Column("worker_id", sa.String(255), nullable=True),
        sa.Column("lease_expires_at", UTCDateTime(), nullable=True),
        sa.Column("lease_fence", sa.BigInteger(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("dead_lettered_at", UTCDateTime(), nullable=True),
        _execution_fk("work_items"),
        _tenant_fk("work_items"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_work_items")),
    )
    op.create_index(
        "ix_work_items_claim",
        "work_items",
        ["queue_type", sa.text("priority DESC"), "created_at"],
        **_partial("pending"),
    )
    op.create_index(
        "ix_work_items_lease", "work_items", ["lease_expires_at"], **_partial("claimed")
    )
    op.create_index(
        "ix_work_items_dead_letters",
        "work_items",
        ["tenant_id", "dead_lettered_at"],
        **_partial("dead_lettered"),
    )
    op.create_index(
        op.f("ix_work_items_tenant_id_execution_id_created_at"),
        "work_items",
        ["tenant_id", "execution_id", "created_at"],
    )
    op.create_index(
        op.f("ix_work_items_tenant_id_queue_type_status"),
        "work_items",
        ["tenant_id", "queue_type", "status"],
    )

    now = datetime.now(UTC)
    op.bulk_insert(
        tenants,
        [
            {
                "id": "default",
                "name": "Default",
                "status": "active",
                "policy": None,
                "limits": None,
                "created_at": now,
                "updated_at": now,
            }
        ],
    )


def downgrade() -> None:
    for table in (
        "work_items",
        "snapshots",
        "events",
        "workflow_executions",
        "workflow_definitions",
        "api_tokens",
        "tenants",
    ):
        op.drop_table(table)
