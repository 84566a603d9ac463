"""What the hot-path bench measures: the cells, the data they work on, the target each row
is judged against, and what a contender does for each cell (:class:`Side`): the store's
facade here, the raw drivers in bench/sqlite_raw.py and bench/pg_raw.py (their SQL in
bench/statements.py)."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from common import KIND, check, dumps
from harness import AsyncOp, Cell, Contender, WorkQueue, measure
from statements import CLAIM_BATCH

from statestore import Event, StateStore, WorkflowExecution
from statestore.repositories.auth import TOKEN_HASHES

APPEND, APPEND_FULL, EVENTS = "append_event", "append_event (FULL)", "get_events"
CREATE, GET, VALIDATE = "create_execution", "get_execution", "validate_token"
CLAIM, CLAIM_MANY = "claim+complete", f"claim+complete x{CLAIM_BATCH}"
OTEL = f"{APPEND} (OTel SDK)"
OPERATIONS = (APPEND, APPEND_FULL, EVENTS, CREATE, GET, CLAIM, CLAIM_MANY, VALIDATE, OTEL)
"""Every row's operation, in the order of the table."""
SINGLE = (APPEND, EVENTS, CREATE, GET, VALIDATE)
"""The cells with one caller that need no queue."""
SQLITE_CALLERS = 16
"""Concurrent callers on SQLite: asyncio tasks sharing one store."""
PG_WORKERS = 8
"""Concurrent callers on PostgreSQL: workers with a connection each."""
N_APPEND_EXECUTIONS, N_READ_EXECUTIONS, EVENTS_PER_READ = 50, 20, 100
LEASE = timedelta(seconds=30)  # the store's default lease_duration
QUEUE_RATE_GUESS = {1: 60_000, CLAIM_BATCH: 250_000}
"""Items/s the first top-up of a queue cell assumes, by batch size (then the fastest seen)."""

TENANT, WORKFLOW_ID, WORKFLOW_VERSION = "default", "order-workflow", "1"
KIND_JSON: dict[str, Any] = KIND.to_json_dict()
KIND_TYPE: str = KIND_JSON["type"]
INPUT: dict[str, Any] = {
    "order_id": "A-1042",
    "customer": "c-77",
    "items": [{"sku": "X-1", "qty": 2}, {"sku": "Y-9", "qty": 1}],
}
WORK_PAYLOAD: dict[str, Any] = {"node": "summarise", "input": {"url": "https://example.com/q3"}}


def target(backend: str, operation: str, callers: int) -> tuple[float, str]:
    """The acceptance ratio of the performance issue for a row, and the contender it is
    measured against: SQLite one caller 0.75 of the one-hop raw, concurrent callers 0.7 of
    raw group commit; PostgreSQL one caller 0.85 of raw asyncpg (get_events 0.6 of a raw
    that decodes its rows), workers 0.8."""
    if backend == "sqlite":
        return (0.7, "gc") if callers > 1 else (0.75, "raw")
    if callers > 1:
        return 0.8, "raw"
    return (0.6 if operation == EVENTS else 0.85), "raw"


# ------------------------------------------------------------------ the data


@dataclass
class Seeded:
    """Executions the cells work on: appended to, and read (each with 100 events)."""

    append_ids: list[uuid.UUID]
    read_ids: list[uuid.UUID]
    queue_execution: uuid.UUID
    """The execution the queue cells' work items belong to."""

    def shares(self, callers: int) -> list[list[uuid.UUID]]:
        """The executions each of ``callers`` concurrent appenders appends to: its own, so
        that no append waits on another's execution row."""
        return [self.append_ids[i::callers] for i in range(callers)]


def new_execution() -> WorkflowExecution:
    return WorkflowExecution(
        workflow_id=WORKFLOW_ID, workflow_version=WORKFLOW_VERSION, initial_input=INPUT
    )


async def seed(store: StateStore) -> Seeded:
    """Create the executions and events through the store itself, so every contender reads
    exactly what the store writes."""
    ids: dict[int, list[uuid.UUID]] = {N_APPEND_EXECUTIONS: [], N_READ_EXECUTIONS: []}
    for count, target_ids in ids.items():
        for _ in range(count):
            execution = new_execution()
            await store.create_execution(execution)
            target_ids.append(execution.execution_id)
    for execution_id in ids[N_READ_EXECUTIONS]:
        await store.append_events(execution_id, [KIND] * EVENTS_PER_READ)
    queue_execution = new_execution()
    await store.create_execution(queue_execution)
    return Seeded(ids[N_APPEND_EXECUTIONS], ids[N_READ_EXECUTIONS], queue_execution.execution_id)


def execution_row(execution_id: Any, now: Any) -> dict[str, Any]:
    """Every column of a new execution, as ``create_execution`` writes it."""
    return {
        "id": execution_id,
        "workflow_id": WORKFLOW_ID,
        "workflow_version": WORKFLOW_VERSION,
        "status": "pending",
        "initial_input": dumps(INPUT),
        "current_state": dumps({}),
        "started_at": now,
        "updated_at": now,
        "completed_at": None,
        "last_sequence": 0,
        "idempotency_key": None,
        "parent_execution_id": None,
        "segment": 0,
        "tenant_id": TENANT,
    }


def item_row(item_id: Any, execution_id: Any, queue_type: str, now: Any) -> dict[str, Any]:
    """Every column of a pending work item, as ``enqueue_work_item`` writes it."""
    return {
        "id": item_id,
        "execution_id": execution_id,
        "node_id": "summarise",
        "queue_type": queue_type,
        "payload": dumps(WORK_PAYLOAD),
        "status": "pending",
        "priority": 0,
        "attempt": 0,
        "max_attempts": 3,
        "available_at": now,
        "worker_id": None,
        "lease_expires_at": None,
        "lease_fence": 0,
        "last_error": None,
        "created_at": now,
        "updated_at": now,
        "dead_lettered_at": None,
        "dedupe_key": None,
        "tenant_id": TENANT,
    }


# ------------------------------------------------------------------ the contenders


class Side(Protocol):
    """What a contender does for each cell: the store (:class:`StoreSide`), or a raw driver
    running the store's statements (bench/sqlite_raw.py, bench/pg_raw.py)."""

    def append(self, execution_id: uuid.UUID) -> Awaitable[int]: ...
    def get_events(self, execution_id: uuid.UUID) -> Awaitable[Sequence[Any]]: ...
    def create_execution(self) -> Awaitable[None]: ...
    def get_execution(self, execution_id: uuid.UUID) -> Awaitable[Any]: ...
    def claim(self, queue_type: str, worker: str, limit: int) -> Awaitable[Sequence[Any]]: ...
    def complete(self, claimed: Sequence[Any], worker: str) -> Awaitable[int]: ...
    def validate(self, token: str) -> Awaitable[bool]: ...


class StoreSide:
    """The store's public facade: build the model, await the call."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    async def append(self, execution_id: uuid.UUID) -> int:
        return await self.store.append_event(Event(execution_id=execution_id, kind=KIND))

    async def get_events(self, execution_id: uuid.UUID) -> Sequence[Any]:
        return await self.store.get_events(execution_id)

    async def create_execution(self) -> None:
        await self.store.create_execution(new_execution())

    async def get_execution(self, execution_id: uuid.UUID) -> Any:
        return await self.store.get_execution(execution_id)

    async def claim(self, queue_type: str, worker: str, limit: int) -> Sequence[Any]:
        """``claim_work_item`` (one), or ``claim_work_items``."""
        if limit > 1:
            return await self.store.claim_work_items(worker, [queue_type], limit)
        item = await self.store.claim_work_item(worker, [queue_type])
        return [] if item is None else [item]

    async def complete(self, claimed: Sequence[Any], worker: str) -> int:
        """``complete_work_item`` (one, by worker and fence), or ``complete_work_items``."""
        if len(claimed) > 1:
            return sum(await self.store.complete_work_items(claimed))
        (item,) = claimed
        await self.store.complete_work_item(item.id, worker_id=worker, lease_fence=item.lease_fence)
        return 1

    async def validate(self, token: str) -> bool:
        return await self.store.validate_token(token) is not None


def single_ops(side: Side, seeded: Seeded, token: str) -> dict[str, AsyncOp]:
    """What one caller does for each single-caller cell, checking every answer."""
    read_ids = itertools.cycle(seeded.read_ids)

    async def get_events() -> None:
        events = await side.get_events(next(read_ids))
        check(len(events) == EVENTS_PER_READ, f"get_events returned {len(events)} events")

    async def create_execution() -> None:
        await side.create_execution()

    async def get_execution() -> None:
        check(await side.get_execution(next(read_ids)) is not None, "execution not found")

    async def validate_token() -> None:
        check(await side.validate(token), "token refused")

    return {
        APPEND: appender(side, seeded.append_ids),
        EVENTS: get_events,
        CREATE: create_execution,
        GET: get_execution,
        VALIDATE: validate_token,
    }


def appender(side: Side, execution_ids: Sequence[uuid.UUID]) -> AsyncOp:
    """A caller appending one event at a time to its executions, in turn."""
    ids = itertools.cycle(execution_ids)

    async def append_event() -> None:
        check(await side.append(next(ids)) > 0, "append_event returned no sequence")

    return append_event


Claimer = Callable[[WorkQueue, str], AsyncOp]
"""A contender's claim+complete caller, given the cell's queue and its worker id."""


def claimer(sides: Sequence[Side], batch: int) -> Claimer:
    """Claim ``batch`` items, then complete them: two calls, two transactions. Worker
    ``<label>-<n>`` calls through ``sides[n]`` (e.g. its own connection), or the only one."""

    def make(work: WorkQueue, worker: str) -> AsyncOp:
        label, number = worker.rsplit("-", 1)
        side = sides[int(number) % len(sides)]

        async def claim_complete() -> None:
            claimed = await side.claim(work.queue_type, worker, batch)
            check(len(claimed) == batch, f"{label}: claimed {len(claimed)} of {batch} items")
            work.took(batch)
            completed = await side.complete(claimed, worker)
            check(completed == batch, f"{label}: {batch - completed} leases lost")
            work.done(label, batch)

        return claim_complete

    return make


# ------------------------------------------------------------------ shared by the raw sides


def split_token(token: str) -> tuple[uuid.UUID, str]:
    """(token id, secret) of ``sst_<id>_<secret>``."""
    _prefix, token_id, secret = token.split("_", 2)
    return uuid.UUID(token_id), secret


def token_ok(row: Any, columns: Sequence[str], secret: str, now: Any) -> bool:
    """What the store checks once it has the token row: found, the secret (the store's
    passlib context), not revoked, not expired, tenant active."""
    value = dict(zip(columns, row, strict=True))
    valid, _new_hash = TOKEN_HASHES.verify_and_update(secret, value["secret_hash"])
    expires_at = value["expires_at"]
    return bool(
        value["found"]
        and valid
        and value["revoked_at"] is None
        and (expires_at is None or expires_at > now)
        and value["tenant_active"]
    )


def event_decoder(
    columns: Sequence[str], to_id: Callable[[Any], Any], to_time: Callable[[Any], datetime]
) -> Callable[[Sequence[Any]], list[dict[str, Any]]]:
    """How the raw get_events turns its rows into Python objects, the fair comparison with
    the store's ``Event`` models: a dict per row, the id a UUID, the kind's JSON decoded,
    the time a datetime (``to_id``/``to_time``: what the driver's value needs)."""
    i_id, i_seq, i_type, i_kind, i_at = (
        columns.index(name) for name in ("id", "sequence", "event_type", "kind", "created_at")
    )
    loads = json.loads

    def decode(rows: Sequence[Any]) -> list[dict[str, Any]]:
        return [
            {
                "id": to_id(row[i_id]),
                "sequence": row[i_seq],
                "event_type": row[i_type],
                "kind": loads(row[i_kind]),
                "created_at": to_time(row[i_at]),
            }
            for row in rows
        ]

    return decode


async def queue_cell(
    backend: str,
    store: StateStore,
    queue: tuple[Callable[[str, int], Awaitable[None]], Callable[[str], Awaitable[Any]]],
    sides: dict[str, Claimer],
    batch: int,
    callers: int,
    duration: float,
) -> Cell:
    """claim+complete of ``batch`` items from ``callers`` callers: the store and each other
    contender of ``sides`` (each caller with its own worker id, ``<label>-<n>``), all
    claiming from one queue type; then the check that every claimed item was completed
    exactly once. ``queue``: how to fill it (untimed) and count its rows by status and
    worker."""
    fill, counts = queue
    work = WorkQueue(
        f"bench-{batch}x{callers}", fill, counts, QUEUE_RATE_GUESS[batch], 2 * CLAIM_BATCH
    )

    def contender(label: str, make: Claimer) -> Contender:
        ops = [make(work, f"{label}-{i}") for i in range(callers)]
        return Contender(label, callers=ops, prepare=work.top_up, items_per_call=batch)

    contenders = [
        contender("store", claimer([StoreSide(store)], batch)),
        *(contender(label, make) for label, make in sides.items()),
    ]
    operation = CLAIM if batch == 1 else CLAIM_MANY
    return await work.check(await measure(backend, operation, contenders, duration, callers))
