"""Snapshots of materialised execution state, one per (execution, at_sequence)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from statestore.db import queries
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
        other_tenant = self.context.other_tenant(snapshot)
        if other_tenant is not None:
            raise other_tenant
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
        queries.upsert_snapshot(session, values)

    def latest(self, session: Session, execution_id: uuid.UUID | str) -> Snapshot | None:
        row = session.execute(
            select(*row_columns(SnapshotRow))
            .where(SnapshotRow.execution_id == check_uuid("execution_id", execution_id))
            .order_by(SnapshotRow.at_sequence.desc())
            .limit(1)
        ).first()
        return None if row is None else snapshot_from_row(row)
