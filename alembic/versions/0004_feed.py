"""The feed: ``events.position`` and consumer checkpoints.

- ``events.position``: an event's place in the database-wide feed (see docs/architecture.md,
  "The feed"), unique, with an index per tenant. Events already stored get positions
  ``1 … n`` in an order consistent with (execution, sequence): by the latest ``created_at``
  up to that event in its execution, then execution and sequence. On PostgreSQL every later
  position is at least ``(transaction id << 24)``, which is above ``n`` (checked).
- ``events_feed_seq`` (PostgreSQL): the low bits of a position.
- ``feed_checkpoints``: a consumer's place in the feed, per tenant.

Only a column is added to ``events`` (no table is rebuilt: on SQLite a rebuild of a table
that others reference would cascade-delete their rows).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from statestore.db.types import UTCDateTime

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FEED_TX_SHIFT = 24

NUMBER_EXISTING = """
UPDATE events SET position = ranked.n
FROM (
    SELECT id, row_number() OVER (ORDER BY upto, execution_id, sequence) AS n
    FROM (
        SELECT id, execution_id, sequence,
               max(created_at) OVER (PARTITION BY execution_id ORDER BY sequence) AS upto
        FROM events
    ) AS ordered
) AS ranked
WHERE events.id = ranked.id
"""


def upgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    if postgres:
        op.execute("CREATE SEQUENCE events_feed_seq")
    op.add_column("events", sa.Column("position", sa.BigInteger(), nullable=True))
    op.execute(NUMBER_EXISTING)
    if postgres:
        count, floor = bind.execute(
            sa.text("SELECT count(*), pg_current_xact_id()::text::bigint << :shift FROM events"),
            {"shift": FEED_TX_SHIFT},
        ).one()
        if count >= floor:  # pragma: no cover - needs 2**24 events per transaction so far
            raise RuntimeError(f"{count} events: too many to number below {floor}")
    op.create_index("ix_events_position", "events", ["position"], unique=True)
    op.create_index("ix_events_tenant_id_position", "events", ["tenant_id", "position"])
    op.create_table(
        "feed_checkpoints",
        sa.Column(
            "tenant_id",
            sa.String(64).with_variant(sa.String(64, collation="C"), "postgresql"),
            sa.ForeignKey(
                "tenants.id", ondelete="RESTRICT", name="fk_feed_checkpoints_tenant_id_tenants"
            ),
            nullable=False,
        ),
        sa.Column(
            "consumer",
            sa.String(255).with_variant(sa.String(255, collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "consumer", name="pk_feed_checkpoints"),
    )


def downgrade() -> None:
    op.drop_table("feed_checkpoints")
    op.drop_index("ix_events_tenant_id_position", table_name="events")
    op.drop_index("ix_events_position", table_name="events")
    op.drop_column("events", "position")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP SEQUENCE events_feed_seq")
