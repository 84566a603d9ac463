"""Tenants: the operator's CRUD, and the checks other repositories make before new work."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from statestore.db import queries
from statestore.db.schema import TenantRow
from statestore.errors import (
    ConflictError,
    NotFoundError,
    TenantError,
    TenantSuspendedError,
    ValidationError,
)
from statestore.models import Tenant, TenantLimits, TenantStatus
from statestore.repositories.base import Repository, row_columns, select_row, update_rows
from statestore.validation import check_identifier, check_json, check_tenant_id, coerce_model


def tenant_from_row(row: Any) -> Tenant:
    return Tenant(
        id=row.id,
        name=row.name,
        status=TenantStatus(row.status),
        policy=row.policy,
        limits=None if row.limits is None else TenantLimits.model_validate(row.limits),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def require_active_tenant(session: Session, tenant_id: str, *, lock: bool = False) -> Any:
    """The tenant's (id, status, limits), if it exists and takes new work; ``lock`` holds its
    row until commit (serialising limit checks on PostgreSQL; SQLite already holds the write
    lock)."""
    row = queries.select_tenant(session, tenant_id, lock=lock)
    if row is None:
        raise TenantError(f"tenant {tenant_id!r} does not exist")
    if not row.active:
        raise TenantSuspendedError(f"tenant {tenant_id!r} is {row.status}; new work is refused")
    return row


def _checked_limits(limits: TenantLimits) -> dict[str, Any]:
    values = limits.model_dump()
    for name, value in values.items():
        if value is not None and (value < 0 or value != value or value == float("inf")):
            raise ValidationError(f"limit {name} must be a finite number >= 0, got {value}")
    return values


def tenant_limits(row: Any) -> TenantLimits:
    return TenantLimits() if row.limits is None else TenantLimits.model_validate(row.limits)


class TenantRepository(Repository):
    """Tenant management. An operator action: refused on a scoped store, except reading
    its own tenant."""

    def create(self, session: Session, tenant: Tenant) -> None:
        self._require_operator("create_tenant")
        values = self._validated(tenant)
        now = self.context.now()
        if queries.select_tenant(session, values["id"]) is not None:
            raise ConflictError(f"tenant {values['id']!r} already exists")
        session.execute(insert(TenantRow).values(**values, created_at=now, updated_at=now))

    def get(self, session: Session, tenant_id: str) -> Tenant | None:
        tenant_id = check_tenant_id(tenant_id)
        scoped = self.context.scope.tenant_id
        if scoped is not None and tenant_id != scoped:
            raise TenantError(f"a store scoped to {scoped!r} cannot read tenant {tenant_id!r}")
        row = select_row(session, TenantRow, TenantRow.id == tenant_id)
        return None if row is None else tenant_from_row(row)

    def list(self, session: Session) -> list[Tenant]:
        self._require_operator("list_tenants")
        rows = session.execute(select(*row_columns(TenantRow)).order_by(TenantRow.id))
        return [tenant_from_row(row) for row in rows]

    def update(self, session: Session, tenant: Tenant) -> None:
        self._require_operator("update_tenant")
        values = self._validated(tenant)
        now = self.context.now()
        if not update_rows(
            session, TenantRow, TenantRow.id == values["id"], **values, updated_at=now
        ):
            raise NotFoundError(f"tenant {values['id']!r} does not exist")

    def _validated(self, tenant: Tenant) -> dict[str, Any]:
        tenant = coerce_model("tenant", Tenant, tenant)
        max_bytes = self.context.max_json_bytes
        return {
            "id": check_tenant_id(tenant.id),
            "name": check_identifier("tenant name", tenant.name),
            "status": tenant.status.value,
            "policy": None
            if tenant.policy is None
            else check_json("policy", tenant.policy, max_bytes),
            "limits": None if tenant.limits is None else _checked_limits(tenant.limits),
        }

    def _require_operator(self, method: str) -> None:
        if self.context.scope.tenant_id is not None:
            raise TenantError(f"{method} is an operator action; not allowed on a scoped store")
