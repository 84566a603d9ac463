"""Hot-path statements, prebuilt once as SQLAlchemy Core constructs (design decision 1).

The ORM layer costs 2-4x the Core statement on these small statements (building the
statement, the ORM-enabled execution path and its bulk-persistence bookkeeping on every
call). Each statement here is built once per tenant mode and executed on the session's
connection with fresh parameters.

The session-level tenant filter does not see Core statements, so this module is the one
reviewed place where the tenant predicate is written by hand: every function takes the
session, reads its :class:`~statestore.db.tenancy.Scope` (failing closed like the filter),
and uses the statement variant that carries ``tenant_id = :tenant`` unless the scope is the
unscoped store's "all tenants". The tenant-isolation property test exercises every function.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Executable,
    Row,
    Table,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Session

from statestore.db.schema import EventRow, ExecutionRow
from statestore.db.tenancy import session_scope

_executions: Table = ExecutionRow.__table__  # type: ignore[assignment]
_events: Table = EventRow.__table__  # type: ignore[assignment]


class _Variants(NamedTuple):
    all_tenants: Executable
    one_tenant: Executable


def _variants(
    build: Callable[[Callable[[Table], list[ColumnElement[bool]]]], Executable],
) -> _Variants:
    """Build a statement twice: without a tenant predicate, and with ``tenant_id = :tenant``."""

    def no_tenant(_table: Table) -> list[ColumnElement[bool]]:
        return []

    def one_tenant(table: Table) -> list[ColumnElement[bool]]:
        return [table.c.tenant_id == bindparam("p_tenant")]

    return _Variants(build(no_tenant), build(one_tenant))


def _run(session: Session, variants: _Variants, params: dict[str, Any]) -> Any:
    tenant_id = session_scope(session).tenant_id
    if tenant_id is None:
        return session.connection().execute(variants.all_tenants, params)
    return session.connection().execute(variants.one_tenant, {**params, "p_tenant": tenant_id})


_RESERVE = _variants(
    lambda tenant: (
        update(_executions)
        .where(_executions.c.id == bindparam("p_id"), *tenant(_executions))
        .values(last_sequence=_executions.c.last_sequence + bindparam("p_count", type_=BigInteger))
        .returning(_executions.c.last_sequence, _executions.c.tenant_id)
    )
)


def reserve_sequences(
    session: Session, execution_id: uuid.UUID, count: int
) -> Row[tuple[int, str]] | None:
    """Bump an execution's ``last_sequence`` by ``count``; returns (new last_sequence,
    tenant_id), or ``None`` if the execution is missing in this scope."""
    result = _run(session, _RESERVE, {"p_id": execution_id, "p_count": count})
    row: Row[tuple[int, str]] | None = result.one_or_none()
    return row


_INSERT_EVENT = insert(_events)


def insert_events(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert event rows (their ``tenant_id`` already taken from the execution)."""
    session_scope(session)  # fail closed, like every statement of a scoped session
    session.connection().execute(_INSERT_EVENT, list(rows))


_EVENT_COLUMNS = (
    _events.c.id,
    _events.c.execution_id,
    _events.c.sequence,
    _events.c.kind,
    _events.c.created_at,
    _events.c.tenant_id,
)
_EVENTS_SINCE = _variants(
    lambda tenant: (
        select(*_EVENT_COLUMNS)
        .where(
            _events.c.execution_id == bindparam("p_id"),
            _events.c.sequence > bindparam("p_since", type_=BigInteger),
            *tenant(_events),
        )
        .order_by(_events.c.sequence)
        .limit(bindparam("p_limit", type_=BigInteger))
    )
)
NO_LIMIT = 2**62


def select_events(
    session: Session, execution_id: uuid.UUID, since: int, limit: int | None
) -> Sequence[Row[Any]]:
    """Events of an execution with sequence > ``since``, ascending, at most ``limit``."""
    params = {"p_id": execution_id, "p_since": since, "p_limit": limit or NO_LIMIT}
    rows: Sequence[Row[Any]] = _run(session, _EVENTS_SINCE, params).all()
    return rows


_LATEST_SEQUENCE = _variants(
    lambda tenant: select(_executions.c.last_sequence).where(
        _executions.c.id == bindparam("p_id"), *tenant(_executions)
    )
)


def select_latest_sequence(session: Session, execution_id: uuid.UUID) -> int:
    """An execution's latest sequence (0 if missing in this scope)."""
    latest = _run(session, _LATEST_SEQUENCE, {"p_id": execution_id}).scalar()
    return int(latest or 0)


_EXECUTION = _variants(
    lambda tenant: select(_executions).where(
        _executions.c.id == bindparam("p_id"), *tenant(_executions)
    )
)


def select_execution(session: Session, execution_id: uuid.UUID) -> Row[Any] | None:
    """An execution's row, or ``None`` if missing in this scope."""
    row: Row[Any] | None = _run(session, _EXECUTION, {"p_id": execution_id}).one_or_none()
    return row


_INSERT_EXECUTION = insert(_executions)


def insert_execution(session: Session, values: dict[str, Any]) -> None:
    """Insert an execution row (its ``tenant_id`` already resolved by the caller)."""
    session_scope(session)
    session.connection().execute(_INSERT_EXECUTION, values)
