"""What every repository shares: the operation context (scope, clock, settings) and the
plain-row reads and writes of the ORM paths."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from statestore.db import queries
from statestore.db.queries import row_columns
from statestore.db.schema import Base
from statestore.db.tenancy import Scope
from statestore.errors import ConfigurationError, NotFoundError, StateStoreError, TenantError
from statestore.validation import check_tenant_id

__all__ = [
    "NO_SESSION_SYNC",
    "Repository",
    "StoreContext",
    "refusal_if_visible",
    "row_columns",
    "select_row",
    "update_rows",
]

NO_SESSION_SYNC = {"synchronize_session": False}
"""Execution options of ORM-enabled UPDATEs: the session holds no objects whose attributes
would need to follow the change."""

# A repository operation leaves no ORM object in the session. Operations are composed in one
# transaction (``store.run``), and most of them run statements straight on the connection:
# an object changed in the session would only be written at the final flush (after, and
# over, the statements that ran later), and an object loaded into the identity map would be
# handed back unchanged by later ORM reads. So repositories read plain rows (the columns of
# ``row_columns``, still confined by the tenant filter) and write with INSERT and UPDATE
# statements, never through loaded objects.


def select_row(
    session: Session, entity: type[Base], *conditions: ColumnElement[bool], lock: bool = False
) -> Any:
    """The one row of ``entity`` matching ``conditions`` in this scope, or ``None``;
    ``lock`` holds its row lock until commit on PostgreSQL (SQLite's writer already holds
    the database write lock)."""
    statement = select(*row_columns(entity)).where(*conditions)
    if lock:
        statement = statement.with_for_update()
    return session.execute(statement).first()


def update_rows(
    session: Session, entity: type[Base], *conditions: ColumnElement[bool], **values: Any
) -> int:
    """``UPDATE entity SET values WHERE conditions`` in this scope; the number of rows
    changed."""
    result = session.execute(
        update(entity).where(*conditions).values(**values).execution_options(**NO_SESSION_SYNC)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class StoreContext:
    """The scope, clock and limits an operation runs with. Immutable; one per store view."""

    scope: Scope
    clock: Callable[[], datetime]
    max_json_bytes: int
    lease_duration: timedelta
    max_artifact_bytes: int = 64 * 1024 * 1024

    def now(self) -> datetime:
        """The store clock's current time, as aware UTC."""
        value = self.clock()
        if not isinstance(value, datetime) or value.utcoffset() is None:
            raise ConfigurationError("the store's clock must return timezone-aware datetimes")
        return value.astimezone(UTC)

    def tenant_for(self, model: BaseModel) -> str:
        """The tenant a model is written under: the scope's on a scoped store (a model whose
        ``tenant_id`` was explicitly set to another tenant is refused), else the model's."""
        refused = self.other_tenant(model)
        if refused is not None:
            raise refused
        return self.scope.tenant_id or check_tenant_id(getattr(model, "tenant_id", "default"))

    def other_tenant(self, model: BaseModel) -> TenantError | None:
        """On a scoped store, the refusal of a model whose ``tenant_id`` was explicitly set
        to another tenant; ``None`` if it is not refused. Events, snapshots and work items
        take their execution's tenant: their model's ``tenant_id`` matters only here."""
        scoped = self.scope.tenant_id
        if scoped is None:
            return None
        requested = check_tenant_id(getattr(model, "tenant_id", "default"))
        if "tenant_id" in model.model_fields_set and requested != scoped:
            return TenantError(
                f"this store is scoped to tenant {scoped!r}; cannot write for {requested!r}"
            )
        return None

    def stamp(self, model: BaseModel, field: str) -> datetime:
        """A timestamp field: the caller's value if they set it, else the store clock's now."""
        if field in model.model_fields_set:
            value = getattr(model, field)
            assert isinstance(value, datetime)
            return value
        return self.now()


class Repository:
    """Base of the per-aggregate repositories: sync operations over a Session."""

    def __init__(self, context: StoreContext) -> None:
        self.context = context


def refusal_if_visible(
    session: Session, execution_id: uuid.UUID, refusal: StateStoreError
) -> StateStoreError:
    """``refusal`` (of a write about an execution) if the execution is visible in this scope;
    otherwise :class:`NotFoundError`, as the write itself would have said."""
    if queries.select_latest_sequence(session, execution_id) is None:
        return NotFoundError(f"execution {execution_id} not found")
    return refusal
