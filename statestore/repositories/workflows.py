"""Workflow definitions: versioned, immutable once published (unless replaced on purpose)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, insert, select
from sqlalchemy.orm import Session

from statestore.db.schema import WorkflowDefinitionRow
from statestore.db.tenancy import narrowed_to
from statestore.errors import ConflictError, TenantLimitExceededError, ValidationError
from statestore.models import WorkflowDefinition
from statestore.repositories.base import Repository, row_columns, select_row, update_rows
from statestore.repositories.tenants import require_active_tenant, tenant_limits
from statestore.validation import (
    check_identifier,
    check_json,
    check_optional_identifier,
    coerce_model,
)


def definition_from_row(row: Any) -> WorkflowDefinition:
    return WorkflowDefinition(
        workflow_id=row.workflow_id,
        version=row.version,
        ir=row.ir,
        created_at=row.created_at,
        tenant_id=row.tenant_id,
    )


class WorkflowRepository(Repository):
    """Published workflow versions, keyed by (tenant, workflow_id, version)."""

    def store(self, session: Session, definition: WorkflowDefinition, replace: bool) -> None:
        definition = coerce_model("definition", WorkflowDefinition, definition)
        workflow_id = check_identifier("workflow_id", definition.workflow_id)
        version = check_identifier("version", definition.version)
        ir = check_json("ir", definition.ir, self.context.max_json_bytes)
        if not isinstance(replace, bool):
            raise ValidationError("replace must be a bool")
        tenant_id = self.context.tenant_for(definition)
        tenant = require_active_tenant(session, tenant_id)

        key = (
            WorkflowDefinitionRow.tenant_id == tenant_id,
            WorkflowDefinitionRow.workflow_id == workflow_id,
            WorkflowDefinitionRow.version == version,
        )
        existing = select_row(session, WorkflowDefinitionRow, *key, lock=True)
        if existing is not None:
            if existing.ir == ir:
                return
            if not replace:
                raise ConflictError(
                    f"workflow {workflow_id!r} version {version!r} is published with a "
                    "different ir; versions are immutable (pass replace=True to overwrite)"
                )
            update_rows(session, WorkflowDefinitionRow, *key, ir=ir)
            return

        limit = tenant_limits(tenant).max_workflows
        if limit is not None:
            # Re-read the tenant under a row lock: concurrent creates at the limit serialise.
            require_active_tenant(session, tenant_id, lock=True)
            self._check_workflow_limit(session, tenant_id, workflow_id, limit)
        session.execute(
            insert(WorkflowDefinitionRow).values(
                tenant_id=tenant_id,
                workflow_id=workflow_id,
                version=version,
                ir=ir,
                created_at=self.context.stamp(definition, "created_at"),
            )
        )

    def _check_workflow_limit(
        self, session: Session, tenant_id: str, workflow_id: str, limit: int
    ) -> None:
        with narrowed_to(session, tenant_id):
            ids = set(session.scalars(select(WorkflowDefinitionRow.workflow_id).distinct()))
        if workflow_id not in ids and len(ids) >= limit:
            raise TenantLimitExceededError(
                f"tenant {tenant_id!r} has reached max_workflows={limit}"
            )

    def get(self, session: Session, workflow_id: str, version: str) -> WorkflowDefinition | None:
        """On the unscoped store the ``default`` tenant's definition wins, then the first
        tenant by id."""
        statement = (
            select(*row_columns(WorkflowDefinitionRow))
            .where(
                WorkflowDefinitionRow.workflow_id == check_identifier("workflow_id", workflow_id),
                WorkflowDefinitionRow.version == check_identifier("version", version),
            )
            .order_by(
                case((WorkflowDefinitionRow.tenant_id == "default", 0), else_=1),
                WorkflowDefinitionRow.tenant_id,
            )
            .limit(1)
        )
        row = session.execute(statement).first()
        return None if row is None else definition_from_row(row)

    def list(self, session: Session, workflow_id: str | None) -> list[WorkflowDefinition]:
        statement = select(*row_columns(WorkflowDefinitionRow)).order_by(
            WorkflowDefinitionRow.workflow_id,
            WorkflowDefinitionRow.version,
            WorkflowDefinitionRow.tenant_id,
        )
        workflow_id = check_optional_identifier("workflow_id", workflow_id)
        if workflow_id is not None:
            statement = statement.where(WorkflowDefinitionRow.workflow_id == workflow_id)
        return [definition_from_row(row) for row in session.execute(statement)]
