"""Atomic turns: effects, idempotent starts, dedupe keys, materialized snapshots.

- ``effects``: a side effect recorded by ``commit_turn`` under a key (first writer wins).
- ``workflow_executions.idempotency_key``: ``start_execution``'s key, unique per tenant
  (a partial unique index over the rows that have one).
- ``work_items.dedupe_key``: unique per tenant and queue type among active (pending or
  claimed) items — a partial unique index, so the database itself refuses a second active
  item, also under concurrent enqueues.
- ``snapshots``: ``status``, ``completed_nodes``, ``active_nodes`` and ``last_sequence``;
  rows written before read back as pending, no nodes, ``last_sequence = at_sequence``.

Only columns are added (no table is rebuilt: on SQLite a rebuild of
``workflow_executions`` would cascade-delete its events and items).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from statestore.db.types import UTCDateTime

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HAS_IDEMPOTENCY_KEY = sa.text("idempotency_key IS NOT NULL")
ACTIVE_DEDUPE_KEY = sa.text("dedupe_key IS NOT NULL AND status IN ('pending', 'claimed')")


def _json() -> sa.types.TypeEngine[object]:
    # As revision 0002 left every JSON column: TEXT on SQLite, json on PostgreSQL.
    return sa.Text().with_variant(postgresql.JSON(), "postgresql")


def _key() -> sa.types.TypeEngine[str]:
    return sa.String(255).with_variant(sa.String(255, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "effects",
        sa.Column(
            "tenant_id",
            sa.String(64).with_variant(sa.String(64, collation="C"), "postgresql"),
            sa.ForeignKey("tenants.id", ondelete="RESTRICT", name="fk_effects_tenant_id_tenants"),
            nullable=False,
        ),
        sa.Column("key", _key(), nullable=False),
        sa.Column("value", _json(), nullable=False),
        sa.Column(
            "execution_id",
            sa.Uuid(),
            sa.ForeignKey(
                "workflow_executions.id",
                ondelete="CASCADE",
                name="fk_effects_execution_id_workflow_executions",
            ),
            nullable=False,
        ),
        sa.Column("item_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "key", name="pk_effects"),
    )
    op.create_index("ix_effects_execution_id", "effects", ["execution_id"])

    op.add_column("workflow_executions", sa.Column("idempotency_key", sa.String(255)))
    op.create_index(
        "ix_workflow_executions_idempotency",
        "workflow_executions",
        ["tenant_id", "idempotency_key"],
        unique=True,
        sqlite_where=HAS_IDEMPOTENCY_KEY,
        postgresql_where=HAS_IDEMPOTENCY_KEY,
    )

    op.add_column("work_items", sa.Column("dedupe_key", sa.String(255)))
    op.create_index(
        "ix_work_items_dedupe",
        "work_items",
        ["tenant_id", "queue_type", "dedupe_key"],
        unique=True,
        sqlite_where=ACTIVE_DEDUPE_KEY,
        postgresql_where=ACTIVE_DEDUPE_KEY,
    )

    op.add_column(
        "snapshots",
        sa.Column("status", sa.String(32), nullable=False, server_default="pending"),
    )
    op.add_column(
        "snapshots", sa.Column("completed_nodes", _json(), nullable=False, server_default="{}")
    )
    op.add_column(
        "snapshots", sa.Column("active_nodes", _json(), nullable=False, server_default="[]")
    )
    op.add_column(
        "snapshots",
        sa.Column("last_sequence", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    )
    op.execute("UPDATE snapshots SET last_sequence = at_sequence")


def downgrade() -> None:
    for column in ("last_sequence", "active_nodes", "completed_nodes", "status"):
        op.drop_column("snapshots", column)
    op.drop_index("ix_work_items_dedupe", table_name="work_items")
    op.drop_column("work_items", "dedupe_key")
    op.drop_index("ix_workflow_executions_idempotency", table_name="workflow_executions")
    op.drop_column("workflow_executions", "idempotency_key")
    op.drop_index("ix_effects_execution_id", table_name="effects")
    op.drop_table("effects")
