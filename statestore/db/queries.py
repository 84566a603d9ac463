"""The store's own SQL: the hot-path statements, the rules they are guarded by, and the one
statement that differs by dialect outside the engine set-up (the snapshot upsert).

**Statements.** Each is an ORM-enabled construct on the mapped classes of
:mod:`statestore.db.schema`, built on first use for its shape (e.g. how many queue types a
claim names, whether the scope is one tenant) and kept (:func:`_prepared`), compiled once
per dialect and run on the session connection's DBAPI cursor (:mod:`statestore.db.driver`):
SQLAlchemy's per-call ORM execution costs 2-4x these small statements. Functions take plain
values; JSON columns are given as their checked JSON text (``validation.json_text``), which
is bound as is.

**Tenancy.** The scoped form of a statement is confined by
:func:`statestore.db.tenancy.confine`, the function the session filter applies to every ORM
statement, with the tenant as the bound parameter ``:p_tenant``; the unscoped store's "all
tenants" runs the statement as built. Every function reads the session's scope first, so it
fails closed like the filter.

**Rules.** Each rule is written here once, in SQL, as named terms: :func:`_tenant_active`
(a tenant takes new work), :func:`_new_work_terms` (an execution takes new work),
:func:`_lease_terms` (an item is claimed and held by a lease), :func:`_lease_expired`, and
:func:`_complete` (what completing an item writes). A guarded write changes nothing when one
term is false; it then returns :class:`Refused` with the row it was about, read back with
each term as a named boolean column, and the repository turns the first false term into its
error. That read is a second statement, on the refusal path only: SQLite cannot hold an
``UPDATE`` or ``INSERT`` in a CTE, and its writer holds the database write lock, so the read
sees exactly what the write saw. On PostgreSQL a row changed by another transaction in
between can show every term true; each caller reports that as "changed meanwhile".
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Hashable, Iterator, Sequence
from datetime import datetime
from enum import Enum
from functools import cache
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Executable,
    SQLColumnExpression,
    String,
    Text,
    Update,
    and_,
    bindparam,
    cast,
    func,
    insert,
    inspect,
    literal_column,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import InstrumentedAttribute, Session
from sqlalchemy.sql.elements import Label
from sqlalchemy.sql.functions import FunctionElement

from statestore.db.driver import DriverStatement, RawValue
from statestore.db.schema import (
    ACTIVE_DEDUPE_KEY,
    FEED_SEQUENCE,
    ApiTokenRow,
    ArtifactRow,
    Base,
    EffectRow,
    EventRow,
    ExecutionRow,
    FeedCheckpointRow,
    SnapshotRow,
    TenantRow,
    WorkItemRow,
)
from statestore.db.tenancy import confine, session_scope
from statestore.db.types import UTCDateTime
from statestore.models import TenantStatus, WorkflowStatus, WorkItemStatus

TENANT = "p_tenant"
"""The bound parameter carrying the tenant in the scoped form of a statement."""


@cache
def row_columns(entity: type[Base]) -> tuple[InstrumentedAttribute[Any], ...]:
    """Every mapped column of ``entity`` as an ORM attribute, in table order: selecting them
    gives rows with the same attribute names as the ORM object, but loads no object, and the
    statement stays ORM-enabled (so the tenant filter sees it)."""
    return tuple(getattr(entity, column.key) for column in inspect(entity).column_attrs)


# ---------------------------------------------------------------- running a statement


@cache
def _prepared(build: Callable[..., Executable], scoped: bool, *shape: Hashable) -> DriverStatement:
    """The statement ``build(*shape)``, confined to the tenant ``:p_tenant`` if ``scoped``;
    built once per shape, compiled once per dialect on first use."""
    statement = build(*shape)
    if scoped:
        statement = confine(statement, bindparam(TENANT))
    return DriverStatement(statement)


def _connection(session: Session) -> Connection:
    # The SQLite runner binds each session to the connection whose transaction it opened;
    # asking the session for it would begin (and later close) a session transaction.
    bind = session.bind
    if isinstance(bind, Connection):
        return bind
    return session.connection()


def _in_scope(
    session: Session, build: Callable[..., Executable], params: dict[str, Any], *shape: Hashable
) -> list[Any]:
    """Run ``build(*shape)`` with ``params``, confined to the session's tenant (not confined
    on the unscoped store); the rows it returns."""
    tenant_id = session_scope(session).tenant_id
    if tenant_id is not None:
        params[TENANT] = tenant_id
    statement = _prepared(build, tenant_id is not None, *shape)
    return statement.execute(_connection(session), params)


def _as_built(
    session: Session, build: Callable[..., Executable], params: dict[str, Any], *shape: Hashable
) -> list[Any]:
    """Run ``build(*shape)`` unconfined: inserts whose ``tenant_id`` the caller resolved,
    and tenants (which belong to no tenant). Still fails closed without a scope."""
    session_scope(session)
    return _prepared(build, False, *shape).execute(_connection(session), params)


# INSERT … ON CONFLICT: each dialect has its own insert construct for it.
_DIALECT_INSERT: dict[str, Callable[..., Any]] = {
    "sqlite": sqlite.insert,
    "postgresql": postgresql.insert,
}


def _first(rows: list[Any]) -> Any:
    return rows[0] if rows else None


class Refused(NamedTuple):
    """What a guarded write returns when it changed nothing. ``subject``: the row it was
    about, read back with the terms of its rule as named boolean columns (each function
    says which), or ``None`` if that row is missing in this scope."""

    subject: Any


def _literal(value: Enum) -> ColumnElement[str]:
    # Literals, not bound parameters: PostgreSQL then plans the claim on the partial index
    # of pending items (a bound status makes a generic plan skip it).
    return literal_column(f"'{value.value}'")


PENDING = _literal(WorkItemStatus.PENDING)
CLAIMED = _literal(WorkItemStatus.CLAIMED)
COMPLETED = _literal(WorkItemStatus.COMPLETED)
DEAD_LETTERED = _literal(WorkItemStatus.DEAD_LETTERED)
ACTIVE = _literal(TenantStatus.ACTIVE)
FINISHED = [_literal(status) for status in WorkflowStatus if status.is_terminal]


# ---------------------------------------------------------------- tenants


def is_active(status: SQLColumnExpression[str]) -> ColumnElement[bool]:
    """The one definition of "a tenant with this status takes new work"."""
    return status == ACTIVE


def _tenant_status(tenant_id: SQLColumnExpression[str]) -> ColumnElement[str]:
    """``(SELECT status FROM tenants WHERE id = <tenant_id>)``: one primary-key probe per
    candidate row. PostgreSQL would turn an ``EXISTS`` into a join, which can cost the claim
    its ordered scan of the partial index."""
    return select(TenantRow.status).where(TenantRow.id == tenant_id).scalar_subquery()


def _tenant_active(tenant_id: SQLColumnExpression[str]) -> ColumnElement[bool]:
    """Whether the tenant of a row takes new work (enqueue, claim)."""
    return is_active(_tenant_status(tenant_id))


def _tenant(lock: bool) -> Executable:
    statement = select(
        TenantRow.id,
        TenantRow.status,
        TenantRow.limits,
        is_active(TenantRow.status).label("active"),
    ).where(TenantRow.id == bindparam("p_id"))
    return statement.with_for_update() if lock else statement


def select_tenant(session: Session, tenant_id: str, *, lock: bool = False) -> Any:
    """A tenant's (id, status, limits, active), or ``None``; ``active``: it takes new work.
    ``lock`` takes its row lock until commit on PostgreSQL (SQLite's writer already holds
    the database write lock). Every scope may read its tenant's status and limits."""
    return _first(_as_built(session, _tenant, {"p_id": tenant_id}, lock))


# ---------------------------------------------------------------- executions


def _execution() -> Executable:
    return select(*row_columns(ExecutionRow)).where(ExecutionRow.id == bindparam("p_id"))


def select_execution(session: Session, execution_id: uuid.UUID) -> Any:
    """An execution's row, or ``None`` if missing in this scope."""
    return _first(_in_scope(session, _execution, {"p_id": execution_id}))


def _insert(entity: type[Base]) -> Executable:
    """``INSERT`` of one row, every column a bound parameter named after it (an event's
    ``position`` is :func:`feed_position`)."""
    values: dict[str, Any] = {
        attr.key: bindparam(attr.key, type_=attr.type) for attr in row_columns(entity)
    }
    if entity is EventRow:
        values["position"] = feed_position()
    return insert(entity).values(values)


def insert_execution(session: Session, values: dict[str, Any]) -> None:
    """Insert an execution row (``values``: every column, its ``tenant_id`` resolved by the
    caller, ``initial_input`` and ``current_state`` as JSON text)."""
    params = {
        **values,
        "initial_input": RawValue(values["initial_input"]),
        "current_state": RawValue(values["current_state"]),
    }
    _as_built(session, _insert, params, ExecutionRow)


# ---------------------------------------------------------------- the feed

FEED_TX_SHIFT = 24
"""PostgreSQL: a feed position is ``transaction id << 24 | (counter mod 2**24)``."""


class _FeedPosition(ColumnElement[int]):
    """The feed position of an event being inserted (docs/architecture.md, "The feed").

    PostgreSQL: the inserting transaction's id (``pg_current_xact_id()``, xid8) in the high
    bits, so positions sort by transaction, and a global sequence's value mod 2**24 in the
    low bits, so the events of one transaction are distinct. SQLite: one more than the
    highest position (its single writer inserts in commit order)."""

    type = BigInteger()
    inherit_cache = True


@compiles(_FeedPosition, "postgresql")
def _feed_position_postgresql(element: _FeedPosition, compiler: Any, **kw: Any) -> str:
    return (
        f"((pg_current_xact_id()::text::bigint << {FEED_TX_SHIFT})"
        f" | (nextval('{FEED_SEQUENCE.name}') & {2**FEED_TX_SHIFT - 1}))"
    )


@compiles(_FeedPosition, "sqlite")
def _feed_position_sqlite(element: _FeedPosition, compiler: Any, **kw: Any) -> str:
    return "(SELECT coalesce(max(position), 0) + 1 FROM events)"


def feed_position() -> ColumnElement[int]:
    """The one definition of an inserted event's feed position."""
    return _FeedPosition()


class _FeedHorizon(ColumnElement[int]):
    """Positions below this are final: no event with a lower position can still appear.

    PostgreSQL: the lowest id among the transactions still running in this statement's
    snapshot (``pg_snapshot_xip``), shifted like a position — every transaction with a
    lower id has ended, so its events are visible now or never; the snapshot's ``xmax`` if
    none runs. A running transaction that ``pg_stat_activity`` shows in another database
    cannot write to this database's ``events`` and does not hold the horizon back; one it
    does not show (ended since, prepared, or hidden from this role) does. SQLite: no limit
    (what a reader sees was committed in position order)."""

    type = BigInteger()
    inherit_cache = True


_OTHER_DATABASE = (
    "SELECT 1 FROM pg_stat_activity AS activity WHERE activity.backend_xid = running::xid"
    " AND activity.datid <> (SELECT oid FROM pg_database WHERE datname = current_database())"
)


@compiles(_FeedHorizon, "postgresql")
def _feed_horizon_postgresql(element: _FeedHorizon, compiler: Any, **kw: Any) -> str:
    return (
        "(coalesce((SELECT min(running::text::bigint)"
        " FROM pg_snapshot_xip(pg_current_snapshot()) AS running"
        f" WHERE NOT EXISTS ({_OTHER_DATABASE})),"
        f" pg_snapshot_xmax(pg_current_snapshot())::text::bigint) << {FEED_TX_SHIFT})"
    )


@compiles(_FeedHorizon, "sqlite")
def _feed_horizon_sqlite(element: _FeedHorizon, compiler: Any, **kw: Any) -> str:
    return str(2**63 - 1)


def _event_columns() -> tuple[Any, ...]:
    """What an event read returns (the execution's events, the feed): the kind as text on
    both databases, because the typed kind model parses it directly, which is faster than
    the driver decoding JSON and the model validating the objects."""
    return (
        EventRow.id,
        EventRow.execution_id,
        EventRow.sequence,
        EventRow.event_type,
        cast(EventRow.kind, Text).label("kind"),
        EventRow.created_at,
        EventRow.tenant_id,
        EventRow.position,
    )


def _feed() -> Executable:
    return (
        select(*_event_columns())
        .where(
            EventRow.position > bindparam("p_after", type_=BigInteger),
            EventRow.position < _FeedHorizon(),
        )
        .order_by(EventRow.position)
        .limit(bindparam("p_limit", type_=BigInteger))
    )


def select_feed(session: Session, after: int, limit: int) -> list[Any]:
    """Feed events visible in this scope with a position after ``after`` and below the
    horizon (:class:`_FeedHorizon`), in position order, at most ``limit``: rows like
    :func:`select_events`'s plus ``execution_id`` and ``position``."""
    return _in_scope(session, _feed, {"p_after": after, "p_limit": limit})


def _checkpoint() -> Executable:
    return select(FeedCheckpointRow.position).where(
        FeedCheckpointRow.tenant_id == bindparam("p_owner"),
        FeedCheckpointRow.consumer == bindparam("p_consumer"),
    )


def select_checkpoint(session: Session, tenant_id: str, consumer: str) -> int | None:
    """A consumer's saved position in ``tenant_id``'s feed, or ``None``."""
    params = {"p_owner": tenant_id, "p_consumer": consumer}
    row = _first(_in_scope(session, _checkpoint, params))
    return None if row is None else int(row.position)


def upsert_checkpoint(session: Session, values: dict[str, Any]) -> None:
    """Insert a consumer's checkpoint (``values``: every column, its tenant resolved by the
    caller) or replace its position: ``INSERT … ON CONFLICT DO UPDATE``."""
    statement = _DIALECT_INSERT[_connection(session).dialect.name](FeedCheckpointRow).values(
        **values
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[FeedCheckpointRow.tenant_id, FeedCheckpointRow.consumer],
            set_={"position": values["position"], "updated_at": values["updated_at"]},
        )
    )


# ---------------------------------------------------------------- artifacts


def _artifact(with_data: bool) -> Executable:
    columns: list[InstrumentedAttribute[Any]] = [ArtifactRow.size, ArtifactRow.media_type]
    if with_data:
        columns.append(ArtifactRow.data)
    return select(*columns).where(
        ArtifactRow.tenant_id == bindparam("p_owner"), ArtifactRow.hash == bindparam("p_hash")
    )


def insert_artifact(session: Session, values: dict[str, Any]) -> Any:
    """Store an artifact (``values``: every column, its tenant resolved by the caller) unless
    the tenant has it already (``INSERT … ON CONFLICT DO NOTHING``); the stored row's
    ``size`` and ``media_type`` (the first writer's)."""
    statement = _DIALECT_INSERT[_connection(session).dialect.name](ArtifactRow).values(**values)
    session.execute(statement.on_conflict_do_nothing())
    params = {"p_owner": values["tenant_id"], "p_hash": values["hash"]}
    return _first(_in_scope(session, _artifact, params, False))


def select_artifact(session: Session, tenant_id: str, digest: str) -> bytes | None:
    """The bytes of ``tenant_id``'s artifact ``digest``, or ``None``."""
    params = {"p_owner": tenant_id, "p_hash": digest}
    row = _first(_in_scope(session, _artifact, params, True))
    return None if row is None else bytes(row.data)


# ---------------------------------------------------------------- events


class NewEvent(NamedTuple):
    """An event to append: its id, its kind's ``type`` and the kind as JSON text."""

    id: uuid.UUID
    event_type: str
    kind_json: str


def _reserve(expecting: bool) -> Update:
    """Bump an execution's ``last_sequence`` by ``:p_count`` (only if it is at
    ``:p_expected``, when ``expecting``), returning the new value and the execution's
    tenant."""
    conditions = [ExecutionRow.id == bindparam("p_execution_id")]
    if expecting:
        conditions.append(ExecutionRow.last_sequence == bindparam("p_expected", type_=BigInteger))
    return (
        update(ExecutionRow)
        .where(*conditions)
        .values(last_sequence=ExecutionRow.last_sequence + bindparam("p_count", type_=BigInteger))
        .returning(ExecutionRow.last_sequence, ExecutionRow.tenant_id)
    )


def _append_one(expecting: bool) -> Executable:
    """PostgreSQL: reserve the sequence and insert the event in one statement, ``WITH
    reserved AS (UPDATE … RETURNING) INSERT INTO events SELECT … FROM reserved``. If the
    execution is missing (or not at the expected sequence) nothing is inserted or bumped."""
    reserved = _reserve(expecting).cte("reserved")
    values = select(
        bindparam("id", type_=EventRow.id.type),
        reserved.c.tenant_id,
        bindparam("p_execution_id", type_=EventRow.execution_id.type),
        reserved.c.last_sequence,
        bindparam("event_type", type_=EventRow.event_type.type),
        bindparam("kind", type_=EventRow.kind.type),
        bindparam("created_at", type_=EventRow.created_at.type),
        feed_position(),
    ).select_from(reserved)
    columns = [
        *("id", "tenant_id", "execution_id", "sequence", "event_type", "kind", "created_at"),
        "position",
    ]
    return (
        insert(EventRow)
        .from_select(columns, values)
        .add_cte(reserved)
        .returning(EventRow.sequence, EventRow.tenant_id)
    )


def append_events(
    session: Session,
    execution_id: uuid.UUID,
    events: Sequence[NewEvent],
    created_at: datetime,
    expected: int | None,
) -> int | Refused:
    """Append ``events`` (none: only the checks) to an execution visible in this scope and,
    when ``expected`` is given, at that sequence; returns the first new sequence. The bump of
    the execution's ``last_sequence`` serialises appenders of one execution on both
    databases, so sequences are gapless without a retry loop.

    One event on PostgreSQL is one statement (:func:`_append_one`), which needs no
    transaction around it. Otherwise (SQLite cannot hold an ``UPDATE`` in a CTE) the bump
    and the insert run in the caller's transaction. Refused: the execution's
    ``last_sequence`` (:func:`select_latest_sequence`'s row), or ``None`` if it is missing."""
    params: dict[str, Any] = {"p_execution_id": execution_id, "p_count": len(events)}
    if expected is not None:
        params["p_expected"] = expected
    expecting = expected is not None
    if len(events) == 1 and _connection(session).dialect.name == "postgresql":
        (event,) = events
        params.update(
            id=event.id,
            event_type=event.event_type,
            kind=RawValue(event.kind_json),
            created_at=created_at,
        )
        appended = _first(_in_scope(session, _append_one, params, expecting))
        if appended is not None:
            return int(appended.sequence)
    else:
        reserved = _first(_in_scope(session, _reserve, params, expecting))
        if reserved is not None:
            first = reserved.last_sequence - len(events) + 1
            insert_events(session, reserved.tenant_id, execution_id, first, events, created_at)
            return int(first)
    return Refused(_first(_in_scope(session, _latest_sequence, {"p_id": execution_id})))


def insert_events(
    session: Session,
    tenant_id: str,
    execution_id: uuid.UUID,
    first: int,
    events: Sequence[NewEvent],
    created_at: datetime,
) -> None:
    """Insert events at sequences ``first``, ``first + 1`` … (reserved by the caller), in
    their execution's tenant."""
    rows = [
        {
            "id": event.id,
            "tenant_id": tenant_id,
            "execution_id": execution_id,
            "sequence": sequence,
            "event_type": event.event_type,
            "kind": RawValue(event.kind_json),
            "created_at": created_at,
        }
        for sequence, event in enumerate(events, first)
    ]
    if len(rows) == 1:
        _as_built(session, _insert, rows[0], EventRow)
    elif rows:
        _prepared(_insert, False, EventRow).execute_many(_connection(session), rows)


def _events_since() -> Executable:
    return (
        select(*_event_columns())
        .where(
            EventRow.execution_id == bindparam("p_id"),
            EventRow.sequence > bindparam("p_since", type_=BigInteger),
        )
        .order_by(EventRow.sequence)
        .limit(bindparam("p_limit", type_=BigInteger))
    )


NO_LIMIT = 2**62


def select_events(
    session: Session, execution_id: uuid.UUID, since: int, limit: int | None
) -> list[Any]:
    """Events of an execution with sequence > ``since``, ascending, at most ``limit``: rows
    of (id, sequence, event_type, kind, created_at, tenant_id, position), ``kind`` as JSON
    text (see :func:`statestore.event_kinds.load_stored_kind`)."""
    params = {"p_id": execution_id, "p_since": since, "p_limit": limit or NO_LIMIT}
    return _in_scope(session, _events_since, params)


def _latest_sequence() -> Executable:
    return select(ExecutionRow.last_sequence).where(ExecutionRow.id == bindparam("p_id"))


def select_latest_sequence(session: Session, execution_id: uuid.UUID) -> int | None:
    """An execution's latest sequence, or ``None`` if it is missing in this scope."""
    row = _first(_in_scope(session, _latest_sequence, {"p_id": execution_id}))
    return None if row is None else int(row.last_sequence)


# ---------------------------------------------------------------- snapshots


# A snapshot's identity: its execution (whose tenant it has) and its sequence.
_SNAPSHOT_KEY = frozenset({"tenant_id", "execution_id", "at_sequence"})


def upsert_snapshot(session: Session, values: dict[str, Any]) -> None:
    """Insert a snapshot row (its ``tenant_id`` resolved by the caller), or replace every
    other column of the one at the same (execution, at_sequence): ``INSERT … ON CONFLICT
    DO UPDATE``, a construct each dialect has its own class for."""
    insert_snapshot = _DIALECT_INSERT[_connection(session).dialect.name](SnapshotRow).values(
        **values
    )
    session.execute(
        insert_snapshot.on_conflict_do_update(
            index_elements=[SnapshotRow.execution_id, SnapshotRow.at_sequence],
            set_={key: value for key, value in values.items() if key not in _SNAPSHOT_KEY},
        )
    )


# ---------------------------------------------------------------- the queue


def _new_work_terms() -> dict[str, ColumnElement[bool]]:
    """The one definition of "an execution takes new work" (enqueue, requeue of a dead
    letter), by term: it is not finished, and its tenant takes new work."""
    return {
        "open": ExecutionRow.status.not_in(FINISHED),
        "tenant_active": _tenant_active(ExecutionRow.tenant_id),
    }


def _enqueue(deduped_on: str | None = None) -> Executable:
    """Insert a pending work item, taking its tenant from its execution, only if the
    execution takes new work: ``INSERT INTO work_items … SELECT …, e.tenant_id FROM
    workflow_executions e WHERE e.id = :execution_id AND <terms> RETURNING id``. One
    statement, so it needs no transaction around it.

    ``deduped_on`` (a dialect's name): the item has a dedupe key, and the insert does
    nothing where an active item already holds it (``ON CONFLICT (tenant_id, queue_type,
    dedupe_key) WHERE <active> DO NOTHING``: the partial unique index decides, also between
    concurrent enqueues). Each dialect has its own construct for it."""
    given = {
        attr.key: bindparam(attr.key, type_=attr.type)
        for attr in row_columns(WorkItemRow)
        if attr.key not in ("execution_id", "tenant_id")
    }
    source = select(*given.values(), ExecutionRow.id, ExecutionRow.tenant_id).where(
        ExecutionRow.id == bindparam("execution_id"), *_new_work_terms().values()
    )
    if deduped_on is None:
        statement = insert(WorkItemRow)
    else:
        statement = _DIALECT_INSERT[deduped_on](WorkItemRow)
    statement = statement.from_select([*given, "execution_id", "tenant_id"], source)
    if deduped_on is not None:
        statement = statement.on_conflict_do_nothing(  # type: ignore[attr-defined]
            index_elements=[WorkItemRow.tenant_id, WorkItemRow.queue_type, WorkItemRow.dedupe_key],
            index_where=ACTIVE_DEDUPE_KEY,
        )
    # The announcement is part of the insert: atomic with it, also in autocommit.
    return statement.returning(WorkItemRow.id, _NotifyWork(WorkItemRow.queue_type))


def _deduped() -> Executable:
    """The active item holding a dedupe key in an execution's tenant."""
    tenant = select(ExecutionRow.tenant_id).where(ExecutionRow.id == bindparam("execution_id"))
    return select(WorkItemRow.id).where(
        WorkItemRow.tenant_id == tenant.scalar_subquery(),
        WorkItemRow.queue_type == bindparam("queue_type"),
        WorkItemRow.dedupe_key == bindparam("dedupe_key"),
        WorkItemRow.status.in_([PENDING, CLAIMED]),
    )


def _new_work() -> Executable:
    return select(
        ExecutionRow.status,
        ExecutionRow.tenant_id,
        _tenant_status(ExecutionRow.tenant_id).label("tenant_status"),
        *(term.label(name) for name, term in _new_work_terms().items()),
    ).where(ExecutionRow.id == bindparam("execution_id"))


def select_new_work(session: Session, execution_id: uuid.UUID) -> Any:
    """Whether an execution takes new work, by term (``tenant_active``, ``open``), with its
    ``status``, ``tenant_id`` and ``tenant_status``; ``None`` if it is missing in this
    scope."""
    return _first(_in_scope(session, _new_work, {"execution_id": execution_id}))


def enqueue_item(session: Session, values: dict[str, Any]) -> Refused | Deduplicated | None:
    """Insert a pending work item (``values``: every column but ``tenant_id``, the payload
    as JSON text) if its execution takes new work, in one statement. Refused: the
    execution's :func:`select_new_work` row. With a dedupe key an active item already
    holds: :class:`Deduplicated` with that item's id, nothing written."""
    params = {**values, "payload": RawValue(values["payload"])}
    if values["dedupe_key"] is None:
        if _in_scope(session, _enqueue, params):
            return None
        return Refused(select_new_work(session, values["execution_id"]))
    dialect = _connection(session).dialect.name
    # Inserted, or an active item holds the key: its id. If that item settled between the
    # two statements the key is free again: insert again (a few times at most).
    for _attempt in range(3):
        if _in_scope(session, _enqueue, dict(params), dialect):
            return None
        holder = _first(_in_scope(session, _deduped, _dedupe_params(values)))
        if holder is not None:
            return Deduplicated(holder.id)
        refused = select_new_work(session, values["execution_id"])
        if refused is None or not all(getattr(refused, name) for name in _new_work_terms()):
            return Refused(refused)
    raise RuntimeError("the dedupe key changed hands three times while enqueueing")


def _dedupe_params(values: dict[str, Any]) -> dict[str, Any]:
    keys = ("execution_id", "queue_type", "dedupe_key")
    return {key: values[key] for key in keys}


class Deduplicated(NamedTuple):
    """An enqueue that wrote nothing because an active item holds its dedupe key."""

    item_id: uuid.UUID


def _claim(type_count: int) -> Executable:
    """``WITH eligible AS MATERIALIZED (SELECT … ORDER BY priority DESC, created_at LIMIT n
    FOR UPDATE SKIP LOCKED) UPDATE … WHERE id IN (SELECT id FROM eligible) RETURNING …``."""
    eligible = (
        select(WorkItemRow.id)
        .where(
            WorkItemRow.status == PENDING,
            WorkItemRow.queue_type.in_([bindparam(f"p_type{i}") for i in range(type_count)]),
            WorkItemRow.available_at <= bindparam("p_now", type_=UTCDateTime()),
            # Items of a suspended or archived tenant stay pending until it is active again.
            _tenant_active(WorkItemRow.tenant_id),
        )
        .order_by(WorkItemRow.priority.desc(), WorkItemRow.created_at)
        .limit(bindparam("p_limit", type_=BigInteger))
        .with_for_update(skip_locked=True)
        .cte("eligible")
        .prefix_with("MATERIALIZED")
    )
    return (
        update(WorkItemRow)
        .where(WorkItemRow.id.in_(select(eligible.c.id)), WorkItemRow.status == PENDING)
        .values(
            status=CLAIMED,
            worker_id=bindparam("p_worker"),
            lease_expires_at=bindparam("p_expires", type_=UTCDateTime()),
            attempt=WorkItemRow.attempt + 1,
            lease_fence=WorkItemRow.lease_fence + 1,
            updated_at=bindparam("p_now", type_=UTCDateTime()),
        )
        .returning(*row_columns(WorkItemRow))
    )


def claim_items(
    session: Session,
    worker_id: str,
    queue_types: Sequence[str],
    limit: int,
    now: datetime,
    expires: datetime,
) -> list[Any]:
    """Lease up to ``limit`` due pending items of ``queue_types`` in one statement
    (:func:`_claim`). The CTE is evaluated exactly once: as a plain ``IN`` subquery
    PostgreSQL may re-scan it, and each re-scan with SKIP LOCKED finds other rows, claiming
    more than ``limit``. SQLite ignores the row lock (its writer holds the database write
    lock). Rows come back in no particular order."""
    params: dict[str, Any] = {
        "p_now": now,
        "p_limit": limit,
        "p_worker": worker_id,
        "p_expires": expires,
    }
    for i, queue_type in enumerate(queue_types):
        params[f"p_type{i}"] = queue_type
    return _in_scope(session, _claim, params, len(queue_types))


WORK_CHANNEL = "statestore_work"
"""The PostgreSQL channel on which an item that became claimable is announced (payload: its
queue type); :class:`statestore.db.wakeup.Waker` listens on it."""


class _NotifyWork(FunctionElement[Any]):
    """``pg_notify(WORK_CHANNEL, <queue type>)`` on PostgreSQL (sent when the writing
    transaction commits, never otherwise), ``NULL`` elsewhere: the one definition of the
    announcement, in a ``RETURNING`` (enqueue) or a ``SELECT`` (:func:`notify_work`)."""

    name = "notify_work"
    inherit_cache = True


@compiles(_NotifyWork)
def _notify_work_default(element: _NotifyWork, compiler: Any, **kw: Any) -> str:
    return "NULL"


@compiles(_NotifyWork, "postgresql")
def _notify_work_postgresql(element: _NotifyWork, compiler: Any, **kw: Any) -> str:
    return f"pg_notify('{WORK_CHANNEL}', {compiler.process(element.clauses, **kw)})"


def _notify(type_count: int) -> Executable:
    return select(*(_NotifyWork(bindparam(f"p_type{i}")) for i in range(type_count)))


def notify_work(session: Session, queue_types: Sequence[str]) -> None:
    """Announce, inside the writing transaction, that items of ``queue_types`` became
    claimable (PostgreSQL; delivered only if it commits). On SQLite nothing: the store's
    writer signals its waiters after each commit."""
    types = sorted(set(queue_types))
    if not types or _connection(session).dialect.name != "postgresql":
        return
    params: dict[str, Any] = {f"p_type{i}": t for i, t in enumerate(types)}
    _as_built(session, _notify, params, len(types))


def _next_due(type_count: int) -> Executable:
    return select(func.min(WorkItemRow.available_at)).where(
        WorkItemRow.status == PENDING,
        WorkItemRow.queue_type.in_([bindparam(f"p_type{i}") for i in range(type_count)]),
        WorkItemRow.available_at > bindparam("p_now", type_=UTCDateTime()),
        _tenant_active(WorkItemRow.tenant_id),
    )


def select_next_due(session: Session, queue_types: Sequence[str], now: datetime) -> datetime | None:
    """When the earliest pending item of ``queue_types`` not yet due at ``now`` comes due
    (``None``: none); one read, for a waiting claim's timer."""
    params: dict[str, Any] = {f"p_type{i}": t for i, t in enumerate(queue_types)}
    params["p_now"] = now
    rows = _in_scope(session, _next_due, params, len(queue_types))
    due: datetime | None = rows[0][0] if rows else None
    return due


def _lease_terms(
    worker: ColumnElement[str] | None, fence: ColumnElement[int] | None
) -> dict[str, ColumnElement[bool]]:
    """The one definition of "claimed and held by this lease", by term, in the order a
    refusal names them: the item is claimed, by ``worker`` and under ``fence`` (each checked
    only when given)."""
    return {
        "claimed": WorkItemRow.status == CLAIMED,
        "by_worker": true() if worker is None else WorkItemRow.worker_id == worker,
        "by_fence": true() if fence is None else WorkItemRow.lease_fence == fence,
    }


def lease_held(worker: ColumnElement[str] | None, fence: Any) -> ColumnElement[bool]:
    """Every term of :func:`_lease_terms`: the item is claimed and held by this lease."""
    return and_(*_lease_terms(worker, fence).values())


def lease_expired(now: Any) -> ColumnElement[bool]:
    """The one definition of "the lease has expired at ``now``" (renew, reclaim)."""
    expired: ColumnElement[bool] = WorkItemRow.lease_expires_at <= now
    return expired


def _lease_binds(
    suffix: str | int, by_worker: bool, by_fence: bool
) -> tuple[ColumnElement[str] | None, ColumnElement[int] | None]:
    worker = bindparam(f"p_worker{suffix}", type_=String()) if by_worker else None
    fence = bindparam(f"p_fence{suffix}", type_=BigInteger) if by_fence else None
    return worker, fence


def _lease(by_worker: bool, by_fence: bool, lock: bool) -> Executable:
    worker, fence = _lease_binds("", by_worker, by_fence)
    terms = _lease_terms(worker, fence)
    statement = select(
        *row_columns(WorkItemRow),
        *(term.label(name) for name, term in terms.items()),
        and_(*terms.values()).label("held"),
        and_(WorkItemRow.status == COMPLETED, terms["by_worker"], terms["by_fence"]).label(
            "completed_by_lease"
        ),
    ).where(WorkItemRow.id == bindparam("p_id"))
    return statement.with_for_update() if lock else statement


def select_lease(
    session: Session,
    item_id: uuid.UUID,
    worker_id: str | None,
    lease_fence: int | None,
    *,
    lock: bool = False,
) -> Any:
    """A work item's row with the terms of :func:`_lease_terms` for this lease (``claimed``,
    ``by_worker``, ``by_fence``), ``held`` (all of them) and ``completed_by_lease`` (it is
    completed, by this worker and fence); ``None`` if it is missing in this scope. ``lock``
    holds its row lock until commit on PostgreSQL (SQLite's writer holds the write lock)."""
    params: dict[str, Any] = {"p_id": item_id, "p_worker": worker_id, "p_fence": lease_fence}
    shape = (worker_id is not None, lease_fence is not None, lock)
    return _first(_in_scope(session, _lease, params, *shape))


def _renew(by_fence: bool) -> Executable:
    worker, fence = _lease_binds(0, True, by_fence)
    now = bindparam("p_now", type_=UTCDateTime())
    return (
        update(WorkItemRow)
        .where(WorkItemRow.id == bindparam("p_id0"), lease_held(worker, fence), ~lease_expired(now))
        .values(lease_expires_at=bindparam("p_expires", type_=UTCDateTime()), updated_at=now)
        .returning(WorkItemRow.id)
    )


def renew_lease(
    session: Session,
    item_id: uuid.UUID,
    worker_id: str,
    lease_fence: int | None,
    now: datetime,
    expires: datetime,
) -> Refused | None:
    """Extend the unexpired lease ``worker_id`` (and ``lease_fence``, when given) holds on
    an item to ``expires``, in one conditional UPDATE. Refused: the item's
    :func:`select_lease` row."""
    params: dict[str, Any] = {"p_id0": item_id, "p_worker0": worker_id, "p_now": now}
    params.update(p_fence0=lease_fence, p_expires=expires)
    if _in_scope(session, _renew, params, lease_fence is not None):
        return None
    return Refused(select_lease(session, item_id, worker_id, lease_fence))


def _held_by_their_leases(
    count: int, by_worker: bool, by_fence: bool, ids_first: bool
) -> list[ColumnElement[bool]]:
    """The terms of a statement on items ``:p_id<i>`` (``i`` < ``count``), each only while
    still held by its lease (``:p_worker<i>``, ``:p_fence<i>``, when checked): the ``OR``
    of the items, after ``id IN (:p_id0, …)`` if ``ids_first`` (see :func:`_complete`)."""
    ids = [bindparam(f"p_id{i}", type_=WorkItemRow.id.type) for i in range(count)]
    held = [
        and_(WorkItemRow.id == item_id, lease_held(*_lease_binds(i, by_worker, by_fence)))
        for i, item_id in enumerate(ids)
    ]
    among = [WorkItemRow.id.in_(ids)] if ids_first else []
    return [*among, or_(*held)]


def _complete(count: int, by_worker: bool, by_fence: bool, ids_first: bool = False) -> Executable:
    """The one definition of completing: each item ``:p_id<i>`` still held by its lease
    (``:p_worker<i>``, ``:p_fence<i>``, when checked) becomes completed and loses its
    lease. Returns (id, worker_id, lease_fence) of each item completed.

    ``ids_first`` adds ``id IN (:p_id0, …)`` before the ``OR`` of the items: SQLite's
    planner (which has no statistics) would otherwise scan the tenant's index when the
    tenant's predicate stands beside the ``OR``, instead of probing the primary key per
    item. PostgreSQL plans the ``OR`` well and only pays for the extra list."""
    return (
        update(WorkItemRow)
        .where(*_held_by_their_leases(count, by_worker, by_fence, ids_first))
        .values(
            status=COMPLETED,
            lease_expires_at=None,
            updated_at=bindparam("p_now", type_=UTCDateTime()),
        )
        .returning(WorkItemRow.id, WorkItemRow.worker_id, WorkItemRow.lease_fence)
    )


def complete_item(
    session: Session,
    item_id: uuid.UUID,
    worker_id: str | None,
    lease_fence: int | None,
    now: datetime,
) -> Refused | None:
    """Complete an item held by ``worker_id`` / ``lease_fence`` (each checked when given)
    in one conditional UPDATE. Refused: the item's :func:`select_lease` row."""
    params: dict[str, Any] = {"p_id0": item_id, "p_worker0": worker_id, "p_fence0": lease_fence}
    params["p_now"] = now
    shape = (1, worker_id is not None, lease_fence is not None)
    if _in_scope(session, _complete, params, *shape):
        return None
    return Refused(select_lease(session, item_id, worker_id, lease_fence))


COMPLETE_CHUNK = 128
"""Items per bulk completion statement. Statements exist for 1, 2, 4 … 128 items (a
shorter list is padded by repeating its first entry, harmless in an ``OR``), so there are
eight of them however callers batch."""


def complete_items(
    session: Session, held: Sequence[tuple[uuid.UUID, str, int]], now: datetime
) -> set[tuple[uuid.UUID, str, int]]:
    """Complete the items among ``held`` (id, worker_id, lease_fence) still held exactly
    that way, ``COMPLETE_CHUNK`` per statement; returns the triples completed."""
    done: set[tuple[uuid.UUID, str, int]] = set()
    ids_first = _connection(session).dialect.name == "sqlite"
    for size, params in _held_chunks(held, now):
        rows = _in_scope(session, _complete, params, size, True, True, ids_first)
        done.update((row.id, row.worker_id, row.lease_fence) for row in rows)
    return done


def _held_chunks(
    held: Sequence[tuple[uuid.UUID, str, int]], now: datetime
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``held`` (id, worker_id, lease_fence) in chunks of at most :data:`COMPLETE_CHUNK`,
    each padded to a power of two by repeating its first entry: (size, the parameters
    ``p_id<i>``, ``p_worker<i>``, ``p_fence<i>`` and ``p_now``)."""
    for start in range(0, len(held), COMPLETE_CHUNK):
        chunk = list(held[start : start + COMPLETE_CHUNK])
        size = 1 << (len(chunk) - 1).bit_length()
        chunk += [chunk[0]] * (size - len(chunk))
        params: dict[str, Any] = {"p_now": now}
        for i, (item_id, worker_id, fence) in enumerate(chunk):
            params[f"p_id{i}"] = item_id
            params[f"p_worker{i}"] = worker_id
            params[f"p_fence{i}"] = fence
        yield size, params


def _release(count: int) -> Executable:
    """Give back items a claim leased but nobody received: each item ``:p_id<i>`` still
    held by exactly that lease (``:p_worker<i>``, ``:p_fence<i>``) is pending again, its
    lease released and the attempt that claim counted undone; ``available_at`` is kept (it
    was due). Each item given back is announced (``pg_notify`` in the ``RETURNING``, atomic
    with the update, as an enqueue's)."""
    return (
        update(WorkItemRow)
        .where(*_held_by_their_leases(count, True, True, ids_first=True))
        .values(
            status=PENDING,
            worker_id=None,
            lease_expires_at=None,
            attempt=WorkItemRow.attempt - 1,
            updated_at=bindparam("p_now", type_=UTCDateTime()),
        )
        .returning(WorkItemRow.id, _NotifyWork(WorkItemRow.queue_type))
    )


def release_items(
    session: Session, held: Sequence[tuple[uuid.UUID, str, int]], now: datetime
) -> set[uuid.UUID]:
    """Give back the items among ``held`` (id, worker_id, lease_fence) still held exactly
    that way (:func:`_release`), in the chunks of :func:`_held_chunks`; returns the ids
    given back."""
    released: set[uuid.UUID] = set()
    for size, params in _held_chunks(held, now):
        released.update(row.id for row in _in_scope(session, _release, params, size))
    return released


# ---------------------------------------------------------------- tokens


def _token() -> Executable:
    """Exactly one row whatever the id: the token's, with its tenant's status, or, for an id
    missing in this scope, the stand-in token's (``:s_<column>``, its nullable columns
    NULL), with ``found`` false. ``FROM (SELECT :p_id AS id) wanted LEFT JOIN api_tokens …
    LEFT JOIN tenants …``: both cases probe both primary keys and decode one row of the same
    columns, so an unknown id costs what an existing one does."""
    wanted = select(bindparam("p_id", type_=ApiTokenRow.id.type).label("id")).subquery("wanted")

    def or_stand_in(column: InstrumentedAttribute[Any], name: str) -> Label[Any]:
        stand_in = bindparam(f"s_{name}", type_=column.type)
        return func.coalesce(column, stand_in).label(name)

    nullable = {column.key: column.nullable for column in inspect(ApiTokenRow).columns}
    columns = [
        attr if nullable[attr.key] else or_stand_in(attr, attr.key)
        for attr in row_columns(ApiTokenRow)
    ]
    tenant_status = or_stand_in(TenantRow.status, "tenant_status")
    token_tenant = or_stand_in(ApiTokenRow.tenant_id, "tenant_id").element
    return (
        select(
            ApiTokenRow.id.is_not(None).label("found"),
            *columns,
            tenant_status,
            is_active(tenant_status.element).label("tenant_active"),
        )
        .select_from(wanted)
        .outerjoin(ApiTokenRow, ApiTokenRow.id == wanted.c.id)
        .outerjoin(TenantRow, TenantRow.id == token_tenant)
    )


def select_token(session: Session, token_id: uuid.UUID, stand_in: dict[str, Any]) -> Any:
    """The one statement of token validation: the token's row with its tenant's status
    (``tenant_status``, and ``tenant_active``: the tenant takes new work) and ``found``
    true; for an id missing in this scope, the same columns taken from ``stand_in``
    (``s_<column>`` for every non-nullable column of ``api_tokens`` and ``s_tenant_status``)
    with ``found`` false."""
    return _in_scope(session, _token, {**stand_in, "p_id": token_id})[0]


# ---------------------------------------------------------------- turns


def _turn_lock() -> Executable:
    """A turn's first statement: the item's execution, locked until commit (``FOR UPDATE
    OF`` the execution: the row whose ``last_sequence`` every append bumps, so sibling
    turns of one execution queue here), with what the turn needs of it."""
    return (
        select(
            ExecutionRow.id.label("execution_id"),
            ExecutionRow.tenant_id,
            ExecutionRow.current_state,
            ExecutionRow.last_sequence,
        )
        .select_from(WorkItemRow)
        .join(ExecutionRow, ExecutionRow.id == WorkItemRow.execution_id)
        .where(WorkItemRow.id == bindparam("p_id"))
        .with_for_update(of=ExecutionRow)
    )


def lock_turn(session: Session, item_id: uuid.UUID) -> Any:
    """Lock the execution of ``item_id`` (visible in this scope); its row (execution_id,
    tenant_id, current_state, last_sequence), or ``None`` if the item is missing."""
    return _first(_in_scope(session, _turn_lock, {"p_id": item_id}))


def _advance(with_state: bool) -> Update:
    """Reserve ``:p_count`` sequences of a locked execution and, ``with_state``, write its
    new ``current_state``: one UPDATE for both."""
    values: dict[str, Any] = {
        "last_sequence": ExecutionRow.last_sequence + bindparam("p_count", type_=BigInteger)
    }
    if with_state:
        values["current_state"] = bindparam("p_state", type_=ExecutionRow.current_state.type)
        values["updated_at"] = bindparam("p_now", type_=UTCDateTime())
    return (
        update(ExecutionRow)
        .where(ExecutionRow.id == bindparam("p_execution_id"))
        .values(**values)
        .returning(ExecutionRow.last_sequence)
    )


def advance_execution(
    session: Session,
    execution_id: uuid.UUID,
    count: int,
    state_json: str | None,
    now: datetime,
) -> int:
    """Reserve ``count`` sequences of an execution the caller has locked (and set its
    state to ``state_json`` when given); the first reserved sequence."""
    params: dict[str, Any] = {"p_execution_id": execution_id, "p_count": count}
    if state_json is not None:
        params.update(p_state=RawValue(state_json), p_now=now)
    (row,) = _in_scope(session, _advance, params, state_json is not None)
    return int(row.last_sequence) - count + 1


# ---------------------------------------------------------------- effects


def _record_effect() -> Executable:
    """Both databases spell "keep the existing row" the same, ``INSERT … ON CONFLICT (key)
    DO NOTHING``, so one statement serves both (Core's insert() has no ON CONFLICT; the
    dialects' own insert constructs would be two statements). Columns from the table."""
    table = EffectRow.__table__
    columns = [column.name for column in table.c]
    return text(
        f"INSERT INTO {EffectRow.__tablename__} ({', '.join(columns)}) "
        f"VALUES ({', '.join(':' + name for name in columns)}) "
        f"ON CONFLICT ({table.c.tenant_id.name}, {table.c.key.name}) DO NOTHING"
    ).bindparams(*(bindparam(column.name, type_=column.type) for column in table.c))


def record_effect(session: Session, values: dict[str, Any]) -> None:
    """Record an effect (``values``: every column, the tenant resolved by the caller, the
    value as checked JSON text); an existing key keeps its first value (first writer wins)."""
    _as_built(session, _record_effect, {**values, "value": RawValue(values["value"])})
