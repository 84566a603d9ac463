"""Content-addressed artifacts: ``artifacts`` (bytea on PostgreSQL, BLOB on SQLite), keyed by
tenant and SHA-256.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from statestore.db.types import UTCDateTime

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _key(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "artifacts",
        sa.Column(
            "tenant_id",
            _key(64),
            sa.ForeignKey("tenants.id", ondelete="RESTRICT", name="fk_artifacts_tenant_id_tenants"),
            nullable=False,
        ),
        sa.Column("hash", _key(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("media_type", sa.String(255), nullable=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "hash", name="pk_artifacts"),
    )


def downgrade() -> None:
    op.drop_table("artifacts")
