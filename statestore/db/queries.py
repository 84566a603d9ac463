"""Hot-path statements, prebuilt once as SQLAlchemy Core constructs (design decision 1).

The ORM layer costs 2-4x the Core statement on these small statements (building the
statement, the ORM-enabled execution path and its bulk-persistence bookkeeping on every
call), and SQLAlchemy's execution machinery costs as much again as the driver. Each
statement here is built once per tenant mode, compiled once per dialect, and run on the
session connection's DBAPI cursor with fresh parameters (:mod:`statestore.db.driver`).

The session-level tenant filter does not see Core statements, so this module is the one
reviewed place where the tenant predicate is written by hand: every function takes the
session, reads its :class:`~statestore.db.tenancy.Scope` (failing closed like the filter),
and uses the statement variant that carries ``tenant_id = :tenant`` unless the scope is the
unscoped store's "all tenants". The tenant-isolation property test exercises every function.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Executable,
    Table,
    Text,
    Update,
    and_,
    bindparam,
    cast,
    func,
    insert,
    literal_column,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.orm import Session

from statestore.db.driver import DriverStatement, RawValue
from statestore.db.schema import (
    ApiTokenRow,
    EffectRow,
    EventRow,
    ExecutionRow,
    TenantRow,
    WorkItemRow,
)
from statestore.db.tenancy import session_scope
from statestore.db.types import UTCDateTime
from statestore.models import TenantStatus, WorkflowStatus

_executions: Table = ExecutionRow.__table__  # type: ignore[assignment]
_events: Table = EventRow.__table__  # type: ignore[assignment]
_tokens: Table = ApiTokenRow.__table__  # type: ignore[assignment]
_tenants: Table = TenantRow.__table__  # type: ignore[assignment]


class _Variants(NamedTuple):
    all_tenants: DriverStatement
    one_tenant: DriverStatement


TenantPredicate = Callable[[Table], list[ColumnElement[bool]]]
"""Given a table, the WHERE terms confining it to the tenant (none for all tenants)."""


def _variants(build: Callable[[TenantPredicate], Executable]) -> _Variants:
    """Build a statement twice: without a tenant predicate, and with ``tenant_id = :tenant``."""

    def no_tenant(_table: Table) -> list[ColumnElement[bool]]:
        return []

    def one_tenant(table: Table) -> list[ColumnElement[bool]]:
        return [table.c.tenant_id == bindparam("p_tenant")]

    return _Variants(DriverStatement(build(no_tenant)), DriverStatement(build(one_tenant)))


def _connection(session: Session) -> Connection:
    # The SQLite runner binds each session to the connection whose transaction it opened;
    # asking the session for it would begin (and later close) a session transaction.
    bind = session.bind
    if isinstance(bind, Connection):
        return bind
    return session.connection()


def _run(session: Session, variants: _Variants, params: dict[str, Any]) -> list[Any]:
    tenant_id = session_scope(session).tenant_id
    if tenant_id is None:
        return variants.all_tenants.execute(_connection(session), params)
    return variants.one_tenant.execute(_connection(session), {**params, "p_tenant": tenant_id})


def _first(rows: list[Any]) -> Any:
    return rows[0] if rows else None


def _reserve(tenant: TenantPredicate, expecting: bool) -> Update:
    """Bump an execution's ``last_sequence`` by ``:p_count`` (only if it is ``:p_expected``,
    when ``expecting``), returning the new value and the execution's tenant."""
    conditions = [_executions.c.id == bindparam("p_execution_id"), *tenant(_executions)]
    if expecting:
        conditions.append(_executions.c.last_sequence == bindparam("p_expected", type_=BigInteger))
    return (
        update(_executions)
        .where(*conditions)
        .values(last_sequence=_executions.c.last_sequence + bindparam("p_count", type_=BigInteger))
        .returning(_executions.c.last_sequence, _executions.c.tenant_id)
    )


_RESERVE = {
    expecting: _variants(lambda tenant, e=expecting: _reserve(tenant, e))  # type: ignore[misc]
    for expecting in (False, True)
}


def reserve_sequences(
    session: Session, execution_id: uuid.UUID, count: int, expected: int | None
) -> Any:
    """Bump an execution's ``last_sequence`` by ``count`` if it is at ``expected`` (when
    given); returns the row (last_sequence, tenant_id) with the new value, or ``None`` if the
    execution is missing in this scope or not at ``expected`` (nothing changed then)."""
    params = {"p_execution_id": execution_id, "p_count": count}
    if expected is not None:
        params["p_expected"] = expected
    return _first(_run(session, _RESERVE[expected is not None], params))


def _append_one(tenant: TenantPredicate, expecting: bool) -> Executable:
    """PostgreSQL: reserve the sequence and insert the event in one statement, ``WITH
    reserved AS (UPDATE … RETURNING) INSERT INTO events SELECT … FROM reserved``. If the
    execution is missing (or not at the expected sequence) nothing is inserted or bumped."""
    reserved = _reserve(tenant, expecting).cte("reserved")
    values = select(
        bindparam("p_id", type_=_events.c.id.type),
        reserved.c.tenant_id,
        bindparam("p_execution_id", type_=_events.c.execution_id.type),
        reserved.c.last_sequence,
        bindparam("p_event_type", type_=_events.c.event_type.type),
        bindparam("p_kind", type_=_events.c.kind.type),
        bindparam("p_created_at", type_=_events.c.created_at.type),
    ).select_from(reserved)
    columns = ["id", "tenant_id", "execution_id", "sequence", "event_type", "kind", "created_at"]
    return (
        insert(_events)
        .from_select(columns, values)
        .add_cte(reserved)
        .returning(_events.c.sequence, _events.c.tenant_id)
    )


_APPEND_ONE = {
    expecting: _variants(lambda tenant, e=expecting: _append_one(tenant, e))  # type: ignore[misc]
    for expecting in (False, True)
}


def append_event(
    session: Session, values: dict[str, Any], expected: int | None
) -> tuple[int, str] | None:
    """Append one event: ``values`` has ``p_id``, ``p_execution_id``, ``p_event_type``,
    ``p_kind`` and ``p_created_at``. Returns (sequence, tenant_id), or ``None`` if the
    execution is missing in this scope or not at ``expected`` (then nothing changed).

    One statement on PostgreSQL (no transaction needed around it); on SQLite, whose CTEs
    cannot hold an UPDATE, the reserve and the insert run in the caller's transaction."""
    params = {**values, "p_count": 1}
    if expected is not None:
        params["p_expected"] = expected
    if _connection(session).dialect.name == "postgresql":
        row = _first(_run(session, _APPEND_ONE[expected is not None], params))
        return None if row is None else (row.sequence, row.tenant_id)
    reserved = reserve_sequences(session, values["p_execution_id"], 1, expected)
    if reserved is None:
        return None
    insert_events(
        session,
        [
            {
                "id": values["p_id"],
                "tenant_id": reserved.tenant_id,
                "execution_id": values["p_execution_id"],
                "sequence": reserved.last_sequence,
                "event_type": values["p_event_type"],
                "kind": values["p_kind"],
                "created_at": values["p_created_at"],
            }
        ],
    )
    return reserved.last_sequence, reserved.tenant_id


_INSERT_EVENT = DriverStatement(
    insert(_events).values(
        {column.name: bindparam(column.name, type_=column.type) for column in _events.c}
    )
)


def insert_events(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert event rows (their ``tenant_id`` already taken from the execution). ``kind``
    may be a :class:`~statestore.db.driver.RawValue` holding the JSON text."""
    session_scope(session)  # fail closed, like every statement of a scoped session
    if len(rows) == 1:
        _INSERT_EVENT.execute(_connection(session), rows[0])
    else:
        _INSERT_EVENT.execute_many(_connection(session), rows)


_EVENT_COLUMNS = (
    _events.c.id,
    _events.c.sequence,
    _events.c.event_type,
    # As text on both databases: the typed kind model parses it directly, which is faster
    # than the driver decoding JSONB and the model validating the decoded objects.
    cast(_events.c.kind, Text).label("kind"),
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
    ),
)
NO_LIMIT = 2**62


def select_events(
    session: Session, execution_id: uuid.UUID, since: int, limit: int | None
) -> list[Any]:
    """Events of an execution with sequence > ``since``, ascending, at most ``limit``: rows
    of (id, sequence, event_type, kind, created_at, tenant_id), ``kind`` as JSON text (see
    :func:`statestore.event_kinds.load_stored_kind`)."""
    params = {"p_id": execution_id, "p_since": since, "p_limit": limit or NO_LIMIT}
    return _run(session, _EVENTS_SINCE, params)


_LATEST_SEQUENCE = _variants(
    lambda tenant: select(_executions.c.last_sequence).where(
        _executions.c.id == bindparam("p_id"), *tenant(_executions)
    )
)


def select_latest_sequence(session: Session, execution_id: uuid.UUID) -> int:
    """An execution's latest sequence (0 if missing in this scope)."""
    latest = select_sequence_if_exists(session, execution_id)
    return latest or 0


def select_sequence_if_exists(session: Session, execution_id: uuid.UUID) -> int | None:
    """An execution's latest sequence, or ``None`` if it is missing in this scope."""
    row = _first(_run(session, _LATEST_SEQUENCE, {"p_id": execution_id}))
    return None if row is None else int(row.last_sequence)


_EXECUTION = _variants(
    lambda tenant: select(_executions).where(
        _executions.c.id == bindparam("p_id"), *tenant(_executions)
    )
)


def select_execution(session: Session, execution_id: uuid.UUID) -> Any:
    """An execution's row, or ``None`` if missing in this scope."""
    return _first(_run(session, _EXECUTION, {"p_id": execution_id}))


_INSERT_EXECUTION = DriverStatement(
    insert(_executions).values(
        {column.name: bindparam(column.name, type_=column.type) for column in _executions.c}
    )
)


def insert_execution(session: Session, values: dict[str, Any]) -> None:
    """Insert an execution row (its ``tenant_id`` already resolved by the caller). JSON
    columns may be :class:`~statestore.db.driver.RawValue` text."""
    session_scope(session)
    _INSERT_EXECUTION.execute(_connection(session), values)


# ---------------------------------------------------------------- the queue

_items: Table = WorkItemRow.__table__  # type: ignore[assignment]
# Literals, not bound parameters: PostgreSQL then plans the claim on the partial index
# (a bound status makes a generic plan skip it).
PENDING: ColumnElement[str] = literal_column("'pending'")
CLAIMED: ColumnElement[str] = literal_column("'claimed'")
DEAD_LETTERED: ColumnElement[str] = literal_column("'dead_lettered'")
ACTIVE: ColumnElement[str] = literal_column(f"'{TenantStatus.ACTIVE.value}'")


def _tenant_is_active(tenant_id: ColumnElement[str]) -> ColumnElement[bool]:
    """The one SQL definition of "the tenant of this row takes new work" (enqueue, claim):
    ``(SELECT status FROM tenants WHERE id = <row>.tenant_id) = 'active'``. A scalar
    subquery is evaluated per candidate row as one primary-key probe; PostgreSQL would turn
    an ``EXISTS`` into a join, which can cost the claim its ordered scan of the partial
    index."""
    status = select(_tenants.c.status).where(_tenants.c.id == tenant_id).scalar_subquery()
    return status == ACTIVE


def _enqueue(tenant: TenantPredicate) -> Executable:
    """Insert a pending work item, taking its tenant from its execution, only if the
    execution is visible in this scope, not finished, and its tenant is active: ``INSERT
    INTO work_items … SELECT …, e.tenant_id FROM workflow_executions e WHERE … RETURNING
    id``. One statement, so it needs no transaction around it."""
    given = {
        column.name: bindparam(column.name, type_=column.type)
        for column in _items.c
        if column.name not in ("execution_id", "tenant_id")
    }
    source = select(*given.values(), _executions.c.id, _executions.c.tenant_id).where(
        _executions.c.id == bindparam("p_execution_id"),
        _executions.c.status.not_in(
            [literal_column(f"'{s.value}'") for s in WorkflowStatus if s.is_terminal]
        ),
        _tenant_is_active(_executions.c.tenant_id),
        *tenant(_executions),
    )
    return (
        insert(_items)
        .from_select([*given, "execution_id", "tenant_id"], source)
        .returning(_items.c.id)
    )


def enqueue_item(session: Session, values: dict[str, Any], execution_id: uuid.UUID) -> bool:
    """Insert a work item for ``execution_id`` (``values``: every other column; the payload
    may be :class:`~statestore.db.driver.RawValue` JSON text). ``False`` if nothing was
    inserted: the execution is missing in this scope, finished, or its tenant not active."""
    return bool(_run(session, _ENQUEUE, {**values, "p_execution_id": execution_id}))


def _claim(tenant: TenantPredicate, type_count: int) -> Executable:
    eligible = (
        select(_items.c.id)
        .where(
            _items.c.status == PENDING,
            _items.c.queue_type.in_([bindparam(f"p_type{i}") for i in range(type_count)]),
            _items.c.available_at <= bindparam("p_now", type_=UTCDateTime()),
            # Items of a suspended or archived tenant stay pending until it is active again.
            _tenant_is_active(_items.c.tenant_id),
            *tenant(_items),
        )
        .order_by(_items.c.priority.desc(), _items.c.created_at)
        .limit(bindparam("p_limit", type_=BigInteger))
        .with_for_update(skip_locked=True)
        .cte("eligible")
        .prefix_with("MATERIALIZED")
    )
    return (
        update(_items)
        .where(_items.c.id.in_(select(eligible.c.id)), _items.c.status == PENDING)
        .values(
            status=CLAIMED,
            worker_id=bindparam("p_worker"),
            lease_expires_at=bindparam("p_expires", type_=UTCDateTime()),
            attempt=_items.c.attempt + 1,
            lease_fence=_items.c.lease_fence + 1,
            updated_at=bindparam("p_now", type_=UTCDateTime()),
        )
        .returning(*_items.c)
    )


_CLAIM: dict[int, _Variants] = {}
"""Claim statements by number of queue types (at most 100), built on first use."""


def _claim_variants(type_count: int) -> _Variants:
    variants = _CLAIM.get(type_count)
    if variants is None:  # a race builds it twice; both are equal
        variants = _CLAIM[type_count] = _variants(lambda tenant: _claim(tenant, type_count))
    return variants


def claim_items(
    session: Session,
    worker_id: str,
    queue_types: Sequence[str],
    limit: int,
    now: datetime,
    expires: datetime,
) -> list[Any]:
    """One statement: ``WITH eligible AS MATERIALIZED (SELECT … ORDER BY priority DESC,
    created_at LIMIT n FOR UPDATE SKIP LOCKED) UPDATE … WHERE id IN (SELECT id FROM eligible)
    RETURNING …``. The CTE is evaluated exactly once: as a plain ``IN`` subquery PostgreSQL
    may re-scan it, and each re-scan with SKIP LOCKED finds other rows, claiming more than
    ``n``. SQLite ignores the row lock (its writer holds the database write lock). Rows come
    back in no particular order."""
    params: dict[str, Any] = {
        "p_now": now,
        "p_limit": limit,
        "p_worker": worker_id,
        "p_expires": expires,
    }
    for i, queue_type in enumerate(queue_types):
        params[f"p_type{i}"] = queue_type
    return _run(session, _claim_variants(len(queue_types)), params)


def _held(tenant: TenantPredicate, by_worker: bool, by_fence: bool) -> list[ColumnElement[bool]]:
    """The item ``:p_id``, claimed, and held by ``:p_worker`` / ``:p_fence`` (when asked)."""
    conditions = [_items.c.id == bindparam("p_id"), _items.c.status == CLAIMED, *tenant(_items)]
    if by_worker:
        conditions.append(_items.c.worker_id == bindparam("p_worker"))
    if by_fence:
        conditions.append(_items.c.lease_fence == bindparam("p_fence", type_=BigInteger))
    return conditions


def _complete(tenant: TenantPredicate, by_worker: bool, by_fence: bool) -> Executable:
    return (
        update(_items)
        .where(*_held(tenant, by_worker, by_fence))
        .values(
            status=literal_column("'completed'"),
            lease_expires_at=None,
            updated_at=bindparam("p_now", type_=UTCDateTime()),
        )
        .returning(_items.c.id)
    )


def _renew(tenant: TenantPredicate, by_fence: bool) -> Executable:
    unexpired = _items.c.lease_expires_at > bindparam("p_now", type_=UTCDateTime())
    return (
        update(_items)
        .where(*_held(tenant, True, by_fence), unexpired)
        .values(
            lease_expires_at=bindparam("p_expires", type_=UTCDateTime()),
            updated_at=bindparam("p_now", type_=UTCDateTime()),
        )
        .returning(_items.c.id)
    )


_RENEW = {
    by_fence: _variants(lambda tenant, f=by_fence: _renew(tenant, f))  # type: ignore[misc]
    for by_fence in (False, True)
}


def renew_lease(
    session: Session,
    item_id: uuid.UUID,
    worker_id: str,
    lease_fence: int | None,
    now: datetime,
    expires: datetime,
) -> bool:
    """Extend the unexpired lease ``worker_id`` (and ``lease_fence``, when given) holds on a
    claimed item to ``expires``, in one conditional UPDATE; ``False`` if it holds none."""
    params: dict[str, Any] = {"p_id": item_id, "p_worker": worker_id, "p_now": now}
    params["p_expires"] = expires
    if lease_fence is not None:
        params["p_fence"] = lease_fence
    return bool(_run(session, _RENEW[lease_fence is not None], params))


_COMPLETE = {
    (by_worker, by_fence): _variants(
        lambda tenant, w=by_worker, f=by_fence: _complete(tenant, w, f)  # type: ignore[misc]
    )
    for by_worker in (False, True)
    for by_fence in (False, True)
}


def complete_claimed(
    session: Session,
    item_id: uuid.UUID,
    worker_id: str | None,
    lease_fence: int | None,
    now: datetime,
) -> bool:
    """Complete a claimed item held by ``worker_id`` / ``lease_fence`` (when given) in one
    conditional UPDATE; ``False`` if it is not claimed or not held that way."""
    variants = _COMPLETE[(worker_id is not None, lease_fence is not None)]
    params: dict[str, Any] = {"p_id": item_id, "p_now": now}
    if worker_id is not None:
        params["p_worker"] = worker_id
    if lease_fence is not None:
        params["p_fence"] = lease_fence
    return bool(_run(session, variants, params))


def _complete_each(tenant: TenantPredicate, count: int) -> Executable:
    """Complete ``count`` claimed items, each guarded by its own worker and fence:
    ``… WHERE status = 'claimed' AND (id, worker_id, lease_fence) IN ((…), …)``."""
    held = [
        tuple_(
            bindparam(f"p_id{i}", type_=_items.c.id.type),
            bindparam(f"p_worker{i}", type_=_items.c.worker_id.type),
            bindparam(f"p_fence{i}", type_=BigInteger),
        )
        for i in range(count)
    ]
    return (
        update(_items)
        .where(
            tuple_(_items.c.id, _items.c.worker_id, _items.c.lease_fence).in_(held),
            _items.c.status == CLAIMED,
            *tenant(_items),
        )
        .values(
            status=literal_column("'completed'"),
            lease_expires_at=None,
            updated_at=bindparam("p_now", type_=UTCDateTime()),
        )
        .returning(_items.c.id, _items.c.worker_id, _items.c.lease_fence)
    )


COMPLETE_CHUNK = 128
"""Items per bulk completion statement. Statements exist for 1, 2, 4 … 128 items (a
shorter list is padded by repeating its first entry, harmless in ``IN``), so there are
eight of them however callers batch."""
_COMPLETE_EACH = {
    count: _variants(lambda tenant, n=count: _complete_each(tenant, n))  # type: ignore[misc]
    for count in (2**k for k in range(8))
}


def complete_each_claimed(
    session: Session, held: Sequence[tuple[uuid.UUID, str, int]], now: datetime
) -> set[tuple[uuid.UUID, str, int]]:
    """Complete the claimed items among ``held`` (id, worker_id, lease_fence) still held
    exactly that way, ``COMPLETE_CHUNK`` per statement; returns the triples completed."""
    done: set[tuple[uuid.UUID, str, int]] = set()
    for start in range(0, len(held), COMPLETE_CHUNK):
        chunk = list(held[start : start + COMPLETE_CHUNK])
        size = 1 << (len(chunk) - 1).bit_length()
        chunk += [chunk[0]] * (size - len(chunk))
        params: dict[str, Any] = {"p_now": now}
        for i, (item_id, worker_id, fence) in enumerate(chunk):
            params[f"p_id{i}"] = item_id
            params[f"p_worker{i}"] = worker_id
            params[f"p_fence{i}"] = fence
        rows = _run(session, _COMPLETE_EACH[size], params)
        done.update((row.id, row.worker_id, row.lease_fence) for row in rows)
    return done


# ---------------------------------------------------------------- tenants and tokens

# Tenants are not tenant-owned rows: every scope may read its tenant's status and limits.
_TENANT_ROW = select(_tenants.c.id, _tenants.c.status, _tenants.c.limits).where(
    _tenants.c.id == bindparam("p_id")
)
_TENANT = {
    False: DriverStatement(_TENANT_ROW),
    True: DriverStatement(_TENANT_ROW.with_for_update()),
}


_ENQUEUE = _variants(_enqueue)


def select_tenant(session: Session, tenant_id: str, *, lock: bool = False) -> Any:
    """A tenant's (id, status, limits), or ``None``; ``lock`` takes its row lock until
    commit on PostgreSQL (SQLite's writer already holds the database write lock)."""
    session_scope(session)
    return _first(_TENANT[lock].execute(_connection(session), {"p_id": tenant_id}))


def _token(tenant: TenantPredicate) -> Executable:
    """Exactly one row whatever the id: the token's, with its tenant's status, or, for an id
    missing in this scope, the stand-in token's (``:s_<column>``, its nullable columns
    NULL), with ``found`` false. ``FROM (SELECT :p_id AS id) wanted LEFT JOIN api_tokens …
    LEFT JOIN tenants …``: both cases probe both primary keys and decode one row of the same
    columns, so an unknown id costs what an existing one does."""
    wanted = select(bindparam("p_id", type_=_tokens.c.id.type).label("id")).subquery("wanted")

    def or_stand_in(column: ColumnElement[Any], name: str) -> ColumnElement[Any]:
        stand_in = bindparam(f"s_{name}", type_=column.type)
        return func.coalesce(column, stand_in).label(name)

    columns = [
        column if column.nullable else or_stand_in(column, column.name) for column in _tokens.c
    ]
    token = and_(_tokens.c.id == wanted.c.id, *tenant(_tokens))
    its_tenant = _tenants.c.id == or_stand_in(_tokens.c.tenant_id, "tenant_id").element
    return select(
        _tokens.c.id.is_not(None).label("found"),
        *columns,
        or_stand_in(_tenants.c.status, "tenant_status"),
    ).select_from(wanted.outerjoin(_tokens, token).outerjoin(_tenants, its_tenant))


_TOKEN = _variants(_token)


def select_token(session: Session, token_id: uuid.UUID, stand_in: dict[str, Any]) -> Any:
    """The one statement of token validation: the token's row with its tenant's status
    (``tenant_status``) and ``found`` true; for an id missing in this scope, the same
    columns taken from ``stand_in`` (``s_<column>`` for every non-nullable column of
    ``api_tokens`` and ``s_tenant_status``) with ``found`` false."""
    return _run(session, _TOKEN, {**stand_in, "p_id": token_id})[0]


# ---------------------------------------------------------------- effects

_effects: Table = EffectRow.__table__  # type: ignore[assignment]
# Both databases spell "keep the existing row" the same, INSERT … ON CONFLICT (key) DO
# NOTHING, so one statement serves both (Core's insert() has no ON CONFLICT; the dialects'
# own insert constructs would be two statements). The columns come from the table.
_EFFECT_COLUMNS = [column.name for column in _effects.c]
_RECORD_EFFECT = DriverStatement(
    text(
        f"INSERT INTO {_effects.name} ({', '.join(_EFFECT_COLUMNS)}) "
        f"VALUES ({', '.join(':' + name for name in _EFFECT_COLUMNS)}) "
        f"ON CONFLICT ({_effects.c.tenant_id.name}, {_effects.c.key.name}) DO NOTHING"
    ).bindparams(*(bindparam(column.name, type_=column.type) for column in _effects.c))
)


def record_effect(session: Session, values: dict[str, Any]) -> None:
    """Record an effect (``values``: every column, the tenant resolved by the caller, the
    value as checked JSON text); an existing key keeps its first value (first writer wins)."""
    session_scope(session)
    values = {**values, "value": RawValue(values["value"])}
    _RECORD_EFFECT.execute(_connection(session), values)
