"""What the inspector shows, read through the store's public API: the flat methods, and
``store.run(op, write=False)`` with ORM SELECTs on the mapped classes (confined to the view's
tenant by the store's tenant filter) where the inspector needs a keyset page or a bounded
count that no flat method gives.

Every function takes a store view (the unscoped store, or a tenant's) and returns plain JSON
values: the JSON API sends them as they are, the pages render the same values. Nothing here
writes.

Cost per call, whatever the size of the store: lists are keyset pages (``after`` a cursor,
``limit`` rows, each an index range); counts stop at :data:`COUNT_CAP` (shown as "10000+").
"""

from __future__ import annotations

import base64
import binascii
import heapq
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, func, literal, select, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Session

from statestore.db.schema import ExecutionRow, SnapshotRow, WorkItemRow
from statestore.errors import ValidationError
from statestore.models import Event, WorkflowStatus, WorkItem, WorkItemStatus
from statestore.store import StateStore

if TYPE_CHECKING:
    from sqlalchemy import Select

    Rows = Select[*tuple[Any, ...]]

COUNT_CAP = 10_000
"""Counts stop here: a count is an index range of at most this many entries."""
MAX_TENANTS = 100
"""The overview counts the first this many tenants (by id)."""
MAX_PAGE = 200
DEFAULT_PAGE = 50
MAX_QUEUE_TYPES = 50
SNAPSHOTS_SHOWN = 20

Json = dict[str, Any]


class BadRequest(ValidationError):
    """A filter or cursor the inspector cannot use (HTTP 400)."""


# ---------------------------------------------------------------- small helpers


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def page_size(value: str | int | None) -> int:
    """``limit`` from a query string: 1..:data:`MAX_PAGE`, default :data:`DEFAULT_PAGE`."""
    if value in (None, ""):
        return DEFAULT_PAGE
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"limit must be a whole number, got {str(value)[:40]!r}") from None
    if not 1 <= number <= MAX_PAGE:
        raise BadRequest(f"limit must be 1..{MAX_PAGE}")
    return number


def encode_cursor(moment: datetime, row_id: uuid.UUID) -> str:
    """An opaque keyset cursor: the last row's sort key."""
    raw = f"{moment.isoformat()}|{row_id.hex}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, row_id = raw.split("|")
        parsed = datetime.fromisoformat(moment)
        if parsed.tzinfo is None:
            raise ValueError("naive")
        return parsed, uuid.UUID(hex=row_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("not a cursor of this inspector") from None


def parse_uuid(value: str, what: str = "id") -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise BadRequest(f"{what} must be a UUID") from None


def _capped_count(session: Session, ids: Rows) -> int:
    """How many rows ``ids`` selects, counting at most ``COUNT_CAP + 1``."""
    inner = ids.limit(COUNT_CAP + 1).subquery()
    return int(session.execute(select(func.count()).select_from(inner)).scalar_one())


def _shown(count: int) -> int | str:
    return f"{COUNT_CAP}+" if count > COUNT_CAP else count


async def visible_tenants(store: StateStore) -> list[Json]:
    """The tenants this view may see: every tenant (the first :data:`MAX_TENANTS`) on the
    unscoped store, its own on a tenant's view."""
    if store.tenant_id is None:
        tenants = (await store.list_tenants())[:MAX_TENANTS]
    else:
        own = await store.get_tenant(store.tenant_id)
        tenants = [] if own is None else [own]
    return [
        {
            "id": t.id,
            "name": t.name,
            "status": t.status.value,
            "created_at": _time(t.created_at),
        }
        for t in tenants
    ]


async def _list_tenants(store: StateStore, wanted: str | None) -> list[str | None]:
    """Which tenants a list reads, one index range each: the one asked for (on a tenant's
    view only its own), else every tenant while there are at most :data:`MAX_TENANTS`;
    beyond that ``[None]``, one range over all tenants (the database sorts that one)."""
    if store.tenant_id is not None:
        return [] if wanted not in (None, store.tenant_id) else [store.tenant_id]
    if wanted:
        return [wanted]
    tenants = await store.list_tenants()
    if len(tenants) > MAX_TENANTS:
        return [None]
    return [t.id for t in tenants]


# ---------------------------------------------------------------- overview


def _overview_counts(session: Session, tenant_ids: Sequence[str]) -> Json:
    """Per tenant: executions per status and work items per queue type and status, each an
    index range counted up to the cap. Queue types are found by skipping through the
    ``(tenant_id, queue_type, status)`` index one type at a time."""
    executions: dict[str, dict[str, int | str]] = {}
    queues: dict[str, dict[str, dict[str, int | str]]] = {}
    for tenant in tenant_ids:
        executions[tenant] = {
            status.value: _shown(
                _capped_count(
                    session,
                    select(ExecutionRow.id).where(
                        ExecutionRow.tenant_id == tenant, ExecutionRow.status == status.value
                    ),
                )
            )
            for status in WorkflowStatus
        }
        per_type: dict[str, dict[str, int | str]] = {}
        last: str | None = None
        for _ in range(MAX_QUEUE_TYPES):
            probe = select(WorkItemRow.queue_type).where(WorkItemRow.tenant_id == tenant)
            if last is not None:
                probe = probe.where(WorkItemRow.queue_type > last)
            last = session.execute(probe.order_by(WorkItemRow.queue_type).limit(1)).scalar()
            if last is None:
                break
            per_type[last] = {
                status.value: _shown(
                    _capped_count(
                        session,
                        select(WorkItemRow.id).where(
                            WorkItemRow.tenant_id == tenant,
                            WorkItemRow.queue_type == last,
                            WorkItemRow.status == status.value,
                        ),
                    )
                )
                for status in WorkItemStatus
            }
        if per_type:
            queues[tenant] = per_type
    return {"executions_by_status": executions, "queues": queues}


async def overview(store: StateStore) -> Json:
    """Tenants, executions per status and queue counts, per tenant."""
    tenants = await visible_tenants(store)
    ids = [str(t["id"]) for t in tenants]
    counts = await store.run(lambda session: _overview_counts(session, ids), write=False)
    return {
        "scope": store.tenant_id,
        "tenants": tenants,
        "count_cap": COUNT_CAP,
        "workflow_statuses": [s.value for s in WorkflowStatus],
        "work_item_statuses": [s.value for s in WorkItemStatus],
        **counts,
    }


# ---------------------------------------------------------------- keyset pages


def _merged_page(
    session: Session,
    tenant_ids: Sequence[str | None],
    query: Callable[[str | None], Rows],
    key: Callable[[Any], tuple[datetime, uuid.UUID]],
    limit: int,
) -> list[Any]:
    """The first ``limit + 1`` rows, newest first, over several tenants: one index range
    per tenant (each ``query(tenant)`` is ordered newest first and limited), merged."""
    streams = [list(session.execute(query(tenant).limit(limit + 1))) for tenant in tenant_ids]
    merged = heapq.merge(*streams, key=key, reverse=True)
    return [row for row, _ in zip(merged, range(limit + 1), strict=False)]


def _page(rows: list[Any], limit: int, key: Callable[[Any], tuple[datetime, uuid.UUID]]) -> Json:
    more = len(rows) > limit
    rows = rows[:limit]
    return {"rows": rows, "next": encode_cursor(*key(rows[-1])) if more and rows else None}


def _before(
    moment: InstrumentedAttribute[Any],
    row_id: InstrumentedAttribute[Any],
    cursor: tuple[datetime, uuid.UUID],
) -> ColumnElement[bool]:
    return tuple_(moment, row_id) < tuple_(
        literal(cursor[0], moment.type), literal(cursor[1], row_id.type)
    )


async def _newest_first(
    store: StateStore,
    tenant_ids: Sequence[str | None],
    statement: Rows,
    moment: InstrumentedAttribute[Any],
    row_id: InstrumentedAttribute[Any],
    cursor: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> Json:
    """A keyset page of ``statement``'s rows, newest ``moment`` first (ties by id), after
    ``cursor``: one index range per tenant in ``tenant_ids``, merged (:func:`_merged_page`)."""
    tenant_column = moment.class_.tenant_id

    def query(tenant: str | None) -> Rows:
        ranged = statement
        if tenant is not None:
            ranged = ranged.where(tenant_column == tenant)
        if cursor is not None:
            ranged = ranged.where(_before(moment, row_id, cursor))
        return ranged.order_by(moment.desc(), row_id.desc())

    def key(row: Any) -> tuple[datetime, uuid.UUID]:
        return getattr(row, moment.key), getattr(row, row_id.key)

    rows = await store.run(
        lambda session: _merged_page(session, tenant_ids, query, key, limit), write=False
    )
    return _page(rows, limit, key)


_EXECUTION_COLUMNS = (
    ExecutionRow.id,
    ExecutionRow.tenant_id,
    ExecutionRow.workflow_id,
    ExecutionRow.workflow_version,
    ExecutionRow.status,
    ExecutionRow.started_at,
    ExecutionRow.updated_at,
    ExecutionRow.completed_at,
    ExecutionRow.last_sequence,
)


async def executions(
    store: StateStore,
    *,
    status: str | None = None,
    workflow_id: str | None = None,
    tenant_id: str | None = None,
    after: str | None = None,
    limit: int = DEFAULT_PAGE,
) -> Json:
    """Executions, most recently updated first, filtered; a keyset page after ``after``."""
    if status and status not in {s.value for s in WorkflowStatus}:
        raise BadRequest(f"unknown status {status[:40]!r}")
    cursor = decode_cursor(after)
    tenants = await _list_tenants(store, tenant_id)

    statement = select(*_EXECUTION_COLUMNS)
    if status:
        statement = statement.where(ExecutionRow.status == status)
    if workflow_id:
        statement = statement.where(ExecutionRow.workflow_id == workflow_id)
    page = await _newest_first(
        store, tenants, statement, ExecutionRow.updated_at, ExecutionRow.id, cursor, limit
    )
    return {
        "items": [
            {
                "execution_id": str(row.id),
                "tenant_id": row.tenant_id,
                "workflow_id": row.workflow_id,
                "workflow_version": row.workflow_version,
                "status": row.status,
                "started_at": _time(row.started_at),
                "updated_at": _time(row.updated_at),
                "completed_at": _time(row.completed_at),
                "last_sequence": row.last_sequence,
            }
            for row in page["rows"]
        ],
        "next": page["next"],
        "filters": {"status": status, "workflow_id": workflow_id, "tenant_id": tenant_id},
        "statuses": [s.value for s in WorkflowStatus],
        "tenants": [str(t["id"]) for t in await visible_tenants(store)],
    }


async def dead_letters(
    store: StateStore, *, after: str | None = None, limit: int = DEFAULT_PAGE
) -> Json:
    """Dead-lettered work items, newest first (the dead-letter index, one range per
    tenant); a keyset page after ``after``."""
    cursor = decode_cursor(after)
    tenants = await _list_tenants(store, None)

    statement = select(
        WorkItemRow.id,
        WorkItemRow.tenant_id,
        WorkItemRow.execution_id,
        WorkItemRow.node_id,
        WorkItemRow.queue_type,
        WorkItemRow.attempt,
        WorkItemRow.max_attempts,
        WorkItemRow.last_error,
        WorkItemRow.dead_lettered_at,
    ).where(
        WorkItemRow.status == WorkItemStatus.DEAD_LETTERED.value,
        WorkItemRow.dead_lettered_at.is_not(None),
    )
    page = await _newest_first(
        store, tenants, statement, WorkItemRow.dead_lettered_at, WorkItemRow.id, cursor, limit
    )
    return {
        "items": [
            {
                "item_id": str(row.id),
                "tenant_id": row.tenant_id,
                "execution_id": str(row.execution_id),
                "node_id": row.node_id,
                "queue_type": row.queue_type,
                "attempt": row.attempt,
                "max_attempts": row.max_attempts,
                "last_error": row.last_error or "",
                "dead_lettered_at": _time(row.dead_lettered_at),
            }
            for row in page["rows"]
        ],
        "next": page["next"],
    }


# ---------------------------------------------------------------- one execution


def event_json(event: Event) -> Json:
    kind = event.kind.to_json_dict()
    kind_type = kind.pop("type")
    return {
        "sequence": event.sequence,
        "type": kind_type,
        "created_at": _time(event.created_at),
        "data": kind,
    }


async def events(
    store: StateStore, execution_id: str, *, after: int = 0, limit: int = DEFAULT_PAGE
) -> Json:
    """An execution's events after sequence ``after``, in order (a keyset page on
    ``(execution_id, sequence)``)."""
    identifier = parse_uuid(execution_id, "execution id")
    if after < 0:
        raise BadRequest("after must be >= 0")
    page = await store.get_events_since(identifier, after, limit=limit + 1)
    more = len(page) > limit
    page = page[:limit]
    return {
        "items": [event_json(e) for e in page],
        "next": page[-1].sequence if more and page else None,
    }


async def feed(store: StateStore, *, after: int = 0, limit: int = DEFAULT_PAGE) -> Json:
    """The database-wide event feed after position ``after`` (the view's tenant only on a
    scoped view), oldest first: a keyset page on the position, never skipping."""
    if after < 0:
        raise BadRequest("after must be >= 0")
    page = await store.read_feed(after, limit)
    return {
        "items": [
            {
                **event_json(event),
                "position": event.position,
                "execution_id": str(event.execution_id),
                "tenant_id": event.tenant_id,
            }
            for event in page
        ],
        "next": page[-1].position if len(page) == limit and page else None,
    }


def _item_json(item: WorkItem) -> Json:
    return {
        "item_id": str(item.id),
        "node_id": item.node_id,
        "queue_type": item.queue_type,
        "status": item.status.value,
        "attempt": item.attempt,
        "max_attempts": item.max_attempts,
        "priority": item.priority,
        "worker_id": item.worker_id,
        "lease_expires_at": _time(item.lease_expires_at),
        "available_at": _time(item.available_at),
        "last_error": item.last_error,
        "created_at": _time(item.created_at),
    }


def _snapshots(session: Session, execution_id: uuid.UUID) -> list[Json]:
    rows = session.execute(
        select(SnapshotRow.at_sequence, SnapshotRow.created_at)
        .where(SnapshotRow.execution_id == execution_id)
        .order_by(SnapshotRow.at_sequence.desc())
        .limit(SNAPSHOTS_SHOWN)
    )
    return [{"at_sequence": r.at_sequence, "created_at": _time(r.created_at)} for r in rows]


async def execution(
    store: StateStore, execution_id: str, *, events_limit: int = 100
) -> Json | None:
    """One execution: its fields, current state, materialized state (where the store has
    ``materialize``), its latest snapshots, work items and first page of events; ``None``
    if this view cannot see it."""
    identifier = parse_uuid(execution_id, "execution id")
    found = await store.get_execution(identifier)
    if found is None:
        return None
    latest = await store.latest_snapshot(identifier)
    snapshots = await store.run(lambda session: _snapshots(session, identifier), write=False)
    items = await store.list_work_items(identifier)
    materialize = getattr(store, "materialize", None)
    materialized = None
    if materialize is not None:
        state = await materialize(identifier)
        materialized = state.model_dump(mode="json") if hasattr(state, "model_dump") else state
    return {
        "execution": {
            "execution_id": str(found.execution_id),
            "tenant_id": found.tenant_id,
            "workflow_id": found.workflow_id,
            "workflow_version": found.workflow_version,
            "status": found.status.value,
            "started_at": _time(found.started_at),
            "updated_at": _time(found.updated_at),
            "completed_at": _time(found.completed_at),
            "initial_input": found.initial_input,
            "current_state": found.current_state,
        },
        "latest_sequence": await store.latest_sequence(identifier),
        "materialized": materialized,
        "latest_snapshot": None
        if latest is None
        else {"at_sequence": latest.at_sequence, "state": latest.state},
        "snapshots": snapshots,
        "work_items": [_item_json(i) for i in items],
        "events": await events(store, execution_id, limit=events_limit),
    }
