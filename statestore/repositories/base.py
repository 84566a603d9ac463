"""What every repository shares: the operation context (scope, clock, settings)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from pydantic import BaseModel
from sqlalchemy import ColumnElement, inspect, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from statestore.db import queries
from statestore.db.schema import Base
from statestore.db.tenancy import Scope
from statestore.errors import ConfigurationError, NotFoundError, TenantError
from statestore.validation import check_tenant_id

NO_SYNC = {"synchronize_session": False}
"""Execution options of ORM-enabled UPDATEs: the session holds no objects to synchronise."""

# Design decision 12: a repository operation leaves no ORM object in the session. Operations
# are composed in one transaction (``store.run``), and most of them run statements straight
# on the connection: an object changed in the session would only be written at the final
# flush (after, and over, the statements that ran later), and an object loaded into the
# identity map would be handed back unchanged by later ORM reads. So repositories read
# plain rows (the columns below, still confined by the tenant filter) and write with
# INSERT and UPDATE statements, never through loaded objects.


@cache
def row_columns(entity: type[Base]) -> tuple[InstrumentedAttribute[Any], ...]:
    """Every mapped column of ``entity`` as an ORM attribute, in table order: selecting them
    gives rows with the same attribute names as the ORM object, but loads no object."""
    return tuple(getattr(entity, column.key) for column in inspect(entity).column_attrs)


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
        update(entity).where(*conditions).values(**values).execution_options(**NO_SYNC)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class StoreContext:
    """The scope, clock and limits an operation runs with. Immutable; one per store view."""

    scope: Scope
    clock: Callable[[], datetime]
    max_json_bytes: int
    lease_duration: timedelta

    def now(self) -> datetime:
        """The store clock's current time, as aware UTC."""
        value = self.clock()
        if not isinstance(value, datetime) or value.utcoffset() is None:
            raise ConfigurationError("the store's clock must return timezone-aware datetimes")
        return value.astimezone(UTC)

    def tenant_for(self, model: BaseModel) -> str:
        """The tenant a model is written under: the scope's on a scoped store (a model whose
        ``tenant_id`` was explicitly set to another tenant is refused), else the model's."""
        requested = check_tenant_id(getattr(model, "tenant_id", "default"))
        scoped = self.scope.tenant_id
        if scoped is None:
            return requested
        if "tenant_id" in model.model_fields_set and requested != scoped:
            raise TenantError(
                f"this store is scoped to tenant {scoped!r}; cannot write for {requested!r}"
            )
        return scoped

    def check_child_tenant(self, model: BaseModel, execution_tenant: str) -> str:
        """Events, snapshots and work items belong to their execution's tenant. On a scoped
        store, a model explicitly naming another tenant is refused."""
        self.check_model_tenant(model)
        return execution_tenant

    def check_model_tenant(self, model: BaseModel) -> None:
        """On a scoped store, refuse a model explicitly naming another tenant."""
        if self.scope.tenant_id is not None:
            self.tenant_for(model)

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


def refuse_foreign_child(
    context: StoreContext, session: Session, model: BaseModel, execution_id: uuid.UUID
) -> None:
    """Events and work items take their execution's tenant. On a scoped store, a model
    explicitly naming another tenant is refused with :class:`TenantError`, but only once the
    execution is known to be visible: otherwise :class:`NotFoundError`, as the write itself
    would have said."""
    try:
        context.check_model_tenant(model)
    except TenantError:
        if queries.select_sequence_if_exists(session, execution_id) is None:
            raise NotFoundError(f"execution {execution_id} not found") from None
        raise
