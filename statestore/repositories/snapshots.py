"""Snapshots of materialised execution state, one per (execution, at_sequence)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from statestore.db.schema import SnapshotRow
from statestore.models import Snapshot
from statestore.repositories.base import Repository, row_columns
from statestore.repositories.executions import execution_tenant
from statestore.validation import (
    check_identifier,
    check_int,
    check_json,
    check_uuid,
    coerce_model,
)

# INSERT ... ON CONFLICT DO UPDATE: the same construct exists in both dialects.
_UPSERT: dict[str, Callable[..., Any]] = {
    "sqlite": sqlite.insert,
    "postgresql": postgresql.insert,
}


# The snapshot's identity: (execution, at_sequence), and its tenant (the execution's).
_KEY = frozenset({"tenant_id", "execution_id", "at_sequence"})


def snapshot_from_row(row: Any) -> Snapshot:
    return Snapshot(
        id=row.id,
        execution_id=row.execution_id,
        at_sequence=row.at_sequence,
        state=row.state,
        status=row.status,
        completed_nodes=row.completed_nodes,
        active_nodes=row.active_nodes,
        last_sequence=row.last_sequence,
        created_at=row.created_at,
        tenant_id=row.tenant_id,
    )


class SnapshotRepository(Repository):
    """Writes and reads of snapshots."""

    def write(self, session: Session, snapshot: Snapshot) -> None:
        """Writing the same (execution, at_sequence) again replaces the snapshot."""
        snapshot = coerce_model("snapshot", Snapshot, snapshot)
        at_sequence = check_int("at_sequence", snapshot.at_sequence, minimum=0)
        max_bytes = self.context.max_json_bytes
        state = check_json("state", snapshot.state, max_bytes)
        completed = check_json("completed_nodes", snapshot.completed_nodes, max_bytes)
        active = [check_identifier("active_nodes", node) for node in snapshot.active_nodes]
        last_sequence = check_int("last_sequence", snapshot.last_sequence, minimum=0)
        tenant_id = execution_tenant(session, snapshot.execution_id)
        self.context.check_child_tenant(snapshot, tenant_id)
        values = {
            "id": snapshot.id,
            "tenant_id": tenant_id,
            "execution_id": snapshot.execution_id,
            "at_sequence": at_sequence,
            "state": state,
            "status": snapshot.status.value,
            "completed_nodes": completed,
            "active_nodes": active,
            "last_sequence": last_sequence,
            "created_at": self.context.stamp(snapshot, "created_at"),
        }
        insert = _UPSERT[session.get_bind().dialect.name](SnapshotRow).values(**values)
        session.execute(
            insert.on_conflict_do_update(
                index_elements=[SnapshotRow.execution_id, SnapshotRow.at_sequence],
                set_={key: values[key] for key in values if key not in _KEY},
            )
        )

    def latest(self, session: Session, execution_id: uuid.UUID | str) -> Snapshot | None:
        row = session.execute(
            select(*row_columns(SnapshotRow))
            .where(SnapshotRow.execution_id == check_uuid("execution_id", execution_id))
            .order_by(SnapshotRow.at_sequence.desc())
            .limit(1)
        ).first()
        return None if row is None else snapshot_from_row(row)
