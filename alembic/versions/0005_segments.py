"""Continue-as-new segments: ``workflow_executions.parent_execution_id`` and ``segment``.

Executions already stored are roots (no parent, segment 0). Only columns are added (no
table is rebuilt: on SQLite a rebuild of ``workflow_executions`` would cascade-delete its
events and items), so the parent is a plain column with an index, not a foreign key.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("workflow_executions", sa.Column("parent_execution_id", sa.Uuid()))
    op.add_column(
        "workflow_executions",
        sa.Column("segment", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    )
    op.create_index(
        "ix_workflow_executions_parent_execution_id",
        "workflow_executions",
        ["parent_execution_id"],
    )


def downgrade() -> None:
    op.drop_index("ix_workflow_executions_parent_execution_id", table_name="workflow_executions")
    op.drop_column("workflow_executions", "segment")
    op.drop_column("workflow_executions", "parent_execution_id")
