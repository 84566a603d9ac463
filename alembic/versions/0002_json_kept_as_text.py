"""JSON columns keep the exact text the store writes, on both databases.

PostgreSQL: ``jsonb`` becomes ``json``. ``jsonb`` re-renders numbers as ``numeric`` (``1e16``
read back as the int ``10000000000000000``, ``-0.0`` as ``0.0``) and sorts object keys;
``json`` keeps the text. Values already stored keep jsonb's rendering.

SQLite: columns declared ``JSON`` (NUMERIC affinity) become ``TEXT``. NUMERIC affinity
turned a top-level number into an INTEGER or REAL (``2**63`` read back as a float). SQLite
cannot change a column's type in place, and rebuilding a table would cascade-delete the
rows referencing it (foreign keys are enforced, and cannot be switched off inside the
migration's transaction), so each column is replaced: add a TEXT column, copy, drop the old
one, rename. The column moves to the end of its table. Numbers stored as INTEGER or REAL
are written back as their JSON text.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, column, nullable) of every JSON column.
JSON_COLUMNS = (
    ("tenants", "policy", True),
    ("tenants", "limits", True),
    ("workflow_definitions", "ir", False),
    ("workflow_executions", "initial_input", False),
    ("workflow_executions", "current_state", False),
    ("events", "kind", False),
    ("snapshots", "state", False),
    ("work_items", "payload", False),
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _retype_postgres(old=postgresql.JSONB(), new=postgresql.JSON(), cast="json")
    else:
        _retype_sqlite("TEXT")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _retype_postgres(old=postgresql.JSON(), new=postgresql.JSONB(), cast="jsonb")
    else:
        _retype_sqlite("JSON")


def _retype_postgres(
    old: sa.types.TypeEngine[object], new: sa.types.TypeEngine[object], cast: str
) -> None:
    for table, column, nullable in JSON_COLUMNS:
        op.alter_column(
            table,
            column,
            type_=new,
            existing_type=old,
            existing_nullable=nullable,
            postgresql_using=f"{column}::{cast}",
        )


def _retype_sqlite(declared: str) -> None:
    """Replace each JSON column by one declared ``declared``, keeping every value."""
    connection = op.get_bind()
    for table, column, nullable in JSON_COLUMNS:
        new = f"{column}__retyped"
        # ADD COLUMN ... NOT NULL needs a default; every write gives a value anyway.
        constraint = "" if nullable else " NOT NULL DEFAULT 'null'"
        op.execute(f"ALTER TABLE {table} ADD COLUMN {new} {declared}{constraint}")
        op.execute(f"UPDATE {table} SET {new} = {column}")
        # A number stored as REAL would be copied as SQLite's 15-digit text: write its
        # exact JSON text instead (INTEGERs convert exactly; TEXT is copied as is).
        reals = connection.execute(
            sa.text(f"SELECT rowid, {column} FROM {table} WHERE typeof({column}) = 'real'")
        ).all()
        for rowid, number in reals:
            connection.execute(
                sa.text(f"UPDATE {table} SET {new} = :text WHERE rowid = :rowid"),
                {"text": json.dumps(number), "rowid": rowid},
            )
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        op.execute(f"ALTER TABLE {table} RENAME COLUMN {new} TO {column}")
