"""Workflow executions: creation, status transitions, current state, listing."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from statestore.db import queries
from statestore.db.schema import ExecutionRow, WorkItemRow
from statestore.db.tenancy import narrowed_to
from statestore.errors import (
    InvalidTransitionError,
    NotFoundError,
    TenantLimitExceededError,
    ValidationError,
)
from statestore.json_patch import merge_patch
from statestore.models import (
    ACTIVE_STATUSES,
    WorkflowExecution,
    WorkflowStatus,
    WorkItemStatus,
    from_database,
)
from statestore.repositories.base import Repository, row_columns, select_row, update_rows
from statestore.repositories.tenants import require_active_tenant, tenant_limits
from statestore.validation import (
    check_enum,
    check_identifier,
    check_int,
    check_json,
    check_optional_identifier,
    check_text,
    check_uuid,
    coerce_model,
    json_text,
)

MAX_LIST_LIMIT = 1000


def execution_from_row(row: Any) -> WorkflowExecution:
    """A model from an ORM row or a Core row of ``workflow_executions`` (not re-validated:
    see :func:`statestore.models.from_database`)."""
    return from_database(
        WorkflowExecution,
        execution_id=row.id,
        workflow_id=row.workflow_id,
        workflow_version=row.workflow_version,
        status=WorkflowStatus(row.status),
        initial_input=row.initial_input,
        current_state=row.current_state,
        started_at=row.started_at,
        updated_at=row.updated_at,
        completed_at=row.completed_at,
        tenant_id=row.tenant_id,
        parent_execution_id=row.parent_execution_id,
        segment=row.segment,
    )


def execution_tenant(session: Session, execution_id: uuid.UUID) -> str:
    """The tenant owning an execution visible in this scope; :class:`NotFoundError` if none
    (another tenant's execution is indistinguishable from a missing one)."""
    tenant_id = session.scalar(
        select(ExecutionRow.tenant_id).where(ExecutionRow.id == execution_id)
    )
    if tenant_id is None:
        raise NotFoundError(f"execution {execution_id} not found")
    return tenant_id


class ExecutionRepository(Repository):
    """Executions of workflows."""

    def create(
        self,
        session: Session,
        execution: WorkflowExecution,
        *,
        idempotency_key: str | None = None,
    ) -> None:
        """Insert ``execution`` (``idempotency_key``: ``start_execution``'s key, already
        checked; unique per tenant)."""
        execution = coerce_model("execution", WorkflowExecution, execution)
        max_bytes = self.context.max_json_bytes
        values: dict[str, Any] = {
            "id": execution.execution_id,
            "workflow_id": check_identifier("workflow_id", execution.workflow_id),
            "workflow_version": check_identifier("workflow_version", execution.workflow_version),
            "status": execution.status.value,
            "initial_input": json_text("initial_input", execution.initial_input, max_bytes),
            "current_state": json_text("current_state", execution.current_state, max_bytes),
            "started_at": self.context.stamp(execution, "started_at"),
            "updated_at": self.context.stamp(execution, "updated_at"),
            "completed_at": execution.completed_at,
            "last_sequence": 0,
            "idempotency_key": idempotency_key,
            "parent_execution_id": execution.parent_execution_id,
            "segment": check_int("segment", execution.segment, minimum=0),
        }
        tenant_id = self.context.tenant_for(execution)
        values["tenant_id"] = tenant_id
        tenant = require_active_tenant(session, tenant_id)
        limit = tenant_limits(tenant).max_concurrent_executions
        if limit is not None and execution.status.is_active:
            # Re-read the tenant under a row lock: concurrent creates at the limit serialise.
            require_active_tenant(session, tenant_id, lock=True)
            with narrowed_to(session, tenant_id):
                active = session.scalar(
                    select(func.count())
                    .select_from(ExecutionRow)
                    .where(ExecutionRow.status.in_([s.value for s in ACTIVE_STATUSES]))
                )
            if (active or 0) >= limit:
                raise TenantLimitExceededError(
                    f"tenant {tenant_id!r} has reached max_concurrent_executions={limit}"
                )
        queries.insert_execution(session, values)

    def get(self, session: Session, execution_id: uuid.UUID | str) -> WorkflowExecution | None:
        row = queries.select_execution(session, check_uuid("execution_id", execution_id))
        return None if row is None else execution_from_row(row)

    def update_status(
        self,
        session: Session,
        execution_id: uuid.UUID | str,
        status: WorkflowStatus | str,
        expected: WorkflowStatus | str | None,
    ) -> None:
        execution_id = check_uuid("execution_id", execution_id)
        new = check_enum("status", WorkflowStatus, status)
        wanted = None if expected is None else check_enum("expected", WorkflowStatus, expected)
        row = self._locked(session, execution_id)
        current = WorkflowStatus(row.status)
        if wanted is not None and current != wanted:
            raise InvalidTransitionError(
                f"execution {execution_id} is {current}, expected {wanted}; nothing changed"
            )
        if current == new:
            return
        if current.is_terminal:
            raise InvalidTransitionError(
                f"execution {execution_id} is {current} (terminal); cannot move to {new}"
            )
        now = self.context.now()
        values: dict[str, Any] = {"status": new.value, "updated_at": now}
        if new.is_terminal:
            values["completed_at"] = now
        update_rows(session, ExecutionRow, ExecutionRow.id == execution_id, **values)
        if new.is_terminal:
            self._settle_open_work(session, execution_id, new)

    def _settle_open_work(
        self, session: Session, execution_id: uuid.UUID, status: WorkflowStatus
    ) -> None:
        """A finished execution's pending and claimed items fail in the same transaction,
        so no worker is handed work of a finished execution."""
        update_rows(
            session,
            WorkItemRow,
            WorkItemRow.execution_id == execution_id,
            WorkItemRow.status.in_([WorkItemStatus.PENDING.value, WorkItemStatus.CLAIMED.value]),
            status=WorkItemStatus.FAILED.value,
            last_error=f"execution {status.value}",
            worker_id=None,
            lease_expires_at=None,
            updated_at=self.context.now(),
        )

    def update_current_state(
        self, session: Session, execution_id: uuid.UUID | str, state: Any
    ) -> None:
        execution_id = check_uuid("execution_id", execution_id)
        state = check_json("state", state, self.context.max_json_bytes)
        changed = update_rows(
            session,
            ExecutionRow,
            ExecutionRow.id == execution_id,
            current_state=state,
            updated_at=self.context.now(),
        )
        if changed == 0:
            raise NotFoundError(f"execution {execution_id} not found")

    def merge_state(self, session: Session, execution_id: uuid.UUID, patch: Any) -> None:
        """Apply ``patch`` (already checked JSON) to the execution's ``current_state`` as a
        JSON merge patch, under the row lock (a read-modify-write: concurrent patches never
        lose one another's keys)."""
        row = self._locked(session, execution_id)
        self.update_current_state(session, execution_id, merge_patch(row.current_state, patch))

    def patch_append_array(
        self, session: Session, execution_id: uuid.UUID | str, key: str, value: Any
    ) -> None:
        """Append ``value`` to the list at ``current_state[key]``. The execution row is
        locked for the read-modify-write (FOR UPDATE on PostgreSQL; SQLite's writer holds
        the database write lock), so concurrent appends never lose an item."""
        execution_id = check_uuid("execution_id", execution_id)
        key = check_text("key", key)
        max_bytes = self.context.max_json_bytes
        value = check_json("value", value, max_bytes)
        state = self._locked(session, execution_id).current_state
        if not isinstance(state, dict):
            raise ValidationError(f"current_state of execution {execution_id} is not an object")
        existing = state.get(key, [])
        if not isinstance(existing, list):
            raise ValidationError(f"current_state[{key!r}] is not a list")
        new_state = check_json("current_state", {**state, key: [*existing, value]}, max_bytes)
        update_rows(
            session,
            ExecutionRow,
            ExecutionRow.id == execution_id,
            current_state=new_state,
            updated_at=self.context.now(),
        )

    @staticmethod
    def _locked(session: Session, execution_id: uuid.UUID) -> Any:
        """The execution's row, locked until commit for a read-modify-write (FOR UPDATE on
        PostgreSQL; SQLite's writer holds the database write lock); NotFoundError if it is
        missing in this scope."""
        row = select_row(session, ExecutionRow, ExecutionRow.id == execution_id, lock=True)
        if row is None:
            raise NotFoundError(f"execution {execution_id} not found")
        return row

    def list(
        self,
        session: Session,
        status: WorkflowStatus | str | None,
        limit: int,
        offset: int,
        workflow_id: str | None,
    ) -> list[WorkflowExecution]:
        limit = check_int("limit", limit, minimum=1, maximum=MAX_LIST_LIMIT)
        offset = check_int("offset", offset, minimum=0)
        statement = select(*row_columns(ExecutionRow)).order_by(
            ExecutionRow.updated_at.desc(), ExecutionRow.id
        )
        if status is not None:
            statement = statement.where(
                ExecutionRow.status == check_enum("status", WorkflowStatus, status).value
            )
        workflow_id = check_optional_identifier("workflow_id", workflow_id)
        if workflow_id is not None:
            statement = statement.where(ExecutionRow.workflow_id == workflow_id)
        rows = session.execute(statement.limit(limit).offset(offset))
        return [execution_from_row(row) for row in rows]
