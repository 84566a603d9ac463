"""Hot-path benchmark: the store against the raw driver doing the same SQL, in the same run.

For SQLite (a temporary file, WAL, synchronous=NORMAL, as the store sets it) and PostgreSQL,
this measures the hot paths (append_event, get_events of 100 events, create_execution,
get_execution, claim+complete of one work item, claim+complete of 100 items in two calls,
validate_token) with one caller, and the write paths with many concurrent callers (16
asyncio tasks on SQLite, 8 workers on PostgreSQL; the ``callers`` column):

- ``store``: the public facade (``StateStore.open(url)``, then e.g. ``append_event``).
- ``raw``: the same SQL on the same schema through the bare driver. On SQLite that is the
  stdlib ``sqlite3`` behind exactly one thread hop from asyncio (a dedicated thread, a queue
  and ``call_soon_threadsafe``), one transaction per call: the fair async floor (design
  decision 2), the ``sqlite3+1hop`` layer of the baselines. On PostgreSQL it is ``asyncpg``
  with its prepared-statement cache, one connection per caller.
- ``gc`` (SQLite, concurrent rows only): raw group commit, the ``sqlite3+groupcommit`` layer
  of the baselines: one database thread drains up to 64 waiting calls into one
  ``BEGIN IMMEDIATE … COMMIT``, a SAVEPOINT per call, one loop wake-up per batch.
- ``sync`` (SQLite only, a reference column): the same ``sqlite3`` calls, synchronously.

Each cell runs for ``--duration`` seconds in total, after a warm-up, split into rounds that
alternate the contenders (so drift on a noisy machine hits all of them alike). The ratio is
store ops/s divided by raw ops/s (and by gc ops/s). Queue cells claim from a queue that is
topped up in bulk, untimed, before every timed run; after each queue cell the bench checks
that every claimed item was completed exactly once, per contender. The PostgreSQL scratch
database (``statestore_bench``) is dropped and re-created on each run, and dropped at the end.

Usage::

    .venv/bin/python bench/run.py [--duration 1.0] [--quick] [--only sqlite|postgresql]
                                  [--write [docs/benchmarks.md]] [--pg-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import platform
import queue
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import asyncpg
import sqlalchemy
from common import (
    KIND,
    Timing,
    check,
    dumps,
    fmt_ratio,
    pg_admin,
    progress,
    progress_bar,
    step,
    timed_calls,
    timed_sync_calls,
    with_database,
    write_document,
)
from peers import PeerCell, bench_peers, peers_markdown

from statestore import Event, StateStore, WorkflowExecution
from statestore.repositories.auth import TOKEN_HASHES

T = TypeVar("T")
AsyncOp = Callable[[], Awaitable[object]]
SyncOp = Callable[[], object]

REPO = Path(__file__).resolve().parent.parent
OPERATIONS = ("append_event", "get_events", "create_execution", "get_execution")
APPEND_FULL = "append_event (FULL)"
CLAIM = "claim+complete"
CLAIM_BATCH = 100
CLAIM_MANY = f"claim+complete x{CLAIM_BATCH}"
VALIDATE = "validate_token"
ALL_OPERATIONS = (
    "append_event",
    APPEND_FULL,
    "get_events",
    "create_execution",
    "get_execution",
    CLAIM,
    CLAIM_MANY,
    VALIDATE,
)
"""Every row's operation, in the order of the table."""
BACKENDS = ("sqlite", "postgresql")
CELLS = {"sqlite": 10, "postgresql": 9}
"""Rows each backend adds to the table (the progress bar's length)."""
DEFAULT_DURATION = 1.0
QUICK_DURATION = 0.2
ROUNDS = 4
N_APPEND_EXECUTIONS = 50
N_READ_EXECUTIONS = 20
EVENTS_PER_READ = 100
# Concurrent callers: asyncio tasks sharing one store on SQLite, workers with a connection
# each on PostgreSQL (the baselines' cells).
SQLITE_CALLERS = 16
PG_WORKERS = 8
GROUP_COMMIT_MAX = 64
LEASE = timedelta(seconds=30)  # the store's default lease_duration
# Queue cells: the first top-up assumes this rate (items/s), then follows the fastest rate
# seen, so that each timed run starts with twice the items it can claim.
QUEUE_RATE_GUESS = 60_000
BATCH_RATE_GUESS = 250_000
DEFAULT_PG_ADMIN_URL = os.environ.get(
    "STATESTORE_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
PG_DATABASE = "statestore_bench"
# The commit at which the store was profiled for the "where we stand" explanation.
PROFILED_AT = "9498003"
TENANT = "default"
WORKFLOW_ID = "order-workflow"
WORKFLOW_VERSION = "1"

# The event kind (common.KIND, ~200 bytes of JSON), and a small execution input.
KIND_JSON: dict[str, Any] = KIND.to_json_dict()
KIND_TYPE: str = KIND_JSON["type"]
INPUT: dict[str, Any] = {
    "order_id": "A-1042",
    "customer": "c-77",
    "items": [{"sku": "X-1", "qty": 2}, {"sku": "Y-9", "qty": 1}],
}
WORK_PAYLOAD: dict[str, Any] = {"node": "summarise", "input": {"url": "https://example.com/q3"}}


# ------------------------------------------------------------------------------ SQL
# The statements the store emits for each operation (statestore/db/schema.py tables), written
# out for the raw driver. The store wraps every call, reads included, in a transaction; the
# raw reads run as single autocommit statements, the floor a lean read could reach.

EXECUTION_COLUMNS = (
    "id, workflow_id, workflow_version, status, initial_input, current_state, started_at,"
    " updated_at, completed_at, last_sequence, tenant_id"
)
ITEM_COLUMNS = (
    "id, execution_id, node_id, queue_type, payload, status, priority, attempt, max_attempts,"
    " available_at, worker_id, lease_expires_at, lease_fence, last_error, created_at,"
    " updated_at, dead_lettered_at, tenant_id"
)
FENCE = 12  # index of lease_fence in ITEM_COLUMNS
SQL_TEMPLATES = {
    "bump_sequence": (
        "UPDATE workflow_executions SET last_sequence = last_sequence + 1"
        " WHERE id = {0} RETURNING last_sequence, tenant_id"
    ),
    "insert_event": (
        "INSERT INTO events (id, execution_id, sequence, event_type, kind, created_at, tenant_id)"
        " VALUES ({0}, {1}, {2}, {3}, {4}, {5}, {6})"
    ),
    # PostgreSQL: the store's one-statement append (a CTE cannot hold an UPDATE on SQLite).
    "append_one": (
        "WITH reserved AS (UPDATE workflow_executions SET last_sequence = last_sequence + 1"
        " WHERE id = {1} RETURNING last_sequence, tenant_id)"
        " INSERT INTO events (id, tenant_id, execution_id, sequence, event_type, kind, created_at)"
        " SELECT {0}, tenant_id, {1}, last_sequence, {2}, {3}, {4} FROM reserved"
        " RETURNING sequence"
    ),
    "get_events": (
        "SELECT id, sequence, event_type, kind, created_at, tenant_id FROM events"
        " WHERE execution_id = {0} AND sequence > {1} ORDER BY sequence"
    ),
    "get_tenant": (
        "SELECT id, name, status, policy, limits, created_at, updated_at FROM tenants"
        " WHERE id = {0}"
    ),
    "insert_execution": (
        f"INSERT INTO workflow_executions ({EXECUTION_COLUMNS})"
        " VALUES ({0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10})"
    ),
    "get_execution": f"SELECT {EXECUTION_COLUMNS} FROM workflow_executions WHERE id = {{0}}",
    # The queue (statestore/db/queries.py): the claim is one statement; the CTE picks the
    # pending ids (row-locked with SKIP LOCKED on PostgreSQL), the UPDATE leases them.
    # Parameters: queue type, now, limit, worker, lease expiry.
    "claim": (
        "WITH eligible AS MATERIALIZED (SELECT id FROM work_items WHERE status = 'pending'"
        " AND queue_type IN ({0}) AND available_at <= {1}"
        " ORDER BY priority DESC, created_at LIMIT {2}{lock})"
        " UPDATE work_items SET status = 'claimed', attempt = attempt + 1, worker_id = {3},"
        " lease_expires_at = {4}, lease_fence = lease_fence + 1, updated_at = {1}"
        " WHERE id IN (SELECT id FROM eligible) AND status = 'pending'"
        f" RETURNING {ITEM_COLUMNS}"
    ),
    # Complete one claimed item, guarded by worker and fence. Parameters: id, now, worker,
    # fence.
    "complete": (
        "UPDATE work_items SET status = 'completed', lease_expires_at = NULL, updated_at = {1}"
        " WHERE id = {0} AND status = 'claimed' AND worker_id = {2} AND lease_fence = {3}"
        " RETURNING id"
    ),
    # The token row by primary key with its tenant's status, in one statement.
    "get_token": (
        "SELECT t.id, t.name, t.role, t.secret_hash, t.created_at, t.expires_at,"
        " t.last_used_at, t.revoked_at, t.tenant_id, n.status"
        " FROM api_tokens t JOIN tenants n ON n.id = t.tenant_id WHERE t.id = {0}"
    ),
    "queue_counts": (
        "SELECT status, worker_id, count(*) FROM work_items WHERE queue_type = {0}"
        " GROUP BY status, worker_id"
    ),
}
# SQLite numbers its parameters like PostgreSQL (?1 … / $1 …), so a template may reuse one.
SQLITE_SQL = {
    name: sql.format(*[f"?{i}" for i in range(1, 12)], lock="")
    for name, sql in SQL_TEMPLATES.items()
}
PG_SQL = {
    name: sql.format(*[f"${i}" for i in range(1, 12)], lock=" FOR UPDATE SKIP LOCKED")
    for name, sql in SQL_TEMPLATES.items()
}
# Bulk completion of a claimed batch, each item guarded by worker and fence: on SQLite one
# executemany of the single-item UPDATE, on PostgreSQL one UPDATE joined to unnest().
SQLITE_COMPLETE_EACH = SQLITE_SQL["complete"].removesuffix(" RETURNING id")
PG_COMPLETE_MANY = (
    "UPDATE work_items SET status = 'completed', lease_expires_at = NULL, updated_at = $3"
    " FROM unnest($1::uuid[], $2::bigint[]) AS done(id, fence)"
    " WHERE work_items.id = done.id AND work_items.lease_fence = done.fence"
    " AND work_items.status = 'claimed' AND work_items.worker_id = $4"
)
# Untimed: pending items inserted in bulk, as enqueue_work_item writes them.
SQLITE_FILL = (
    f"INSERT INTO work_items ({ITEM_COLUMNS}) VALUES (?1, ?2, 'summarise', ?3, ?4,"
    " 'pending', 0, 0, 3, ?5, NULL, NULL, 0, NULL, ?5, ?5, NULL, ?6)"
)
PG_FILL = (
    f"INSERT INTO work_items ({ITEM_COLUMNS}) SELECT gen_random_uuid(), $1, 'summarise',"
    " $2, $3::jsonb, 'pending', 0, 0, 3, $4, NULL, NULL, 0, NULL, $4, $4, NULL, $5"
    " FROM generate_series(1, $6)"
)


# ------------------------------------------------------------------------------ timing


@dataclass
class Contender:
    """One way of doing an operation: an async callable, several concurrent ones (one per
    caller, each may hold its own connection), or a sync one (the reference)."""

    label: str
    async_op: AsyncOp | None = None
    sync_op: SyncOp | None = None
    callers: Sequence[AsyncOp] = ()
    prepare: Callable[[float], Awaitable[None]] | None = None
    """Untimed work before each run, given the run's length in seconds (queue top-up)."""
    items_per_call: int = 1

    async def run_for(self, seconds: float, into: Timing) -> None:
        if self.prepare is not None:
            await self.prepare(seconds)
        clock = time.perf_counter_ns
        latencies = into.latencies_ns
        start = end = clock()
        deadline = start + int(seconds * 1e9)
        calls = 0
        if self.callers:
            calls = await self._run_callers(deadline, latencies)
            end = clock()
        elif self.async_op is not None:
            calls, end = await timed_calls(self.async_op, deadline, latencies)
        else:
            assert self.sync_op is not None
            calls, end = timed_sync_calls(self.sync_op, deadline, latencies)
        into.calls += calls
        into.items += calls * self.items_per_call
        into.elapsed_ns += end - start

    async def _run_callers(self, deadline: int, latencies: list[int]) -> int:
        """Every caller loops until the deadline; the cell's time runs until the last one
        has finished its call in flight."""

        async def caller(op: AsyncOp) -> int:
            calls, _end = await timed_calls(op, deadline, latencies)
            return calls

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(caller(op)) for op in self.callers]
        except BaseExceptionGroup as errors:
            raise errors.exceptions[0] from None
        return sum(task.result() for task in tasks)


@dataclass
class Cell:
    """One row of the table: an operation on a backend, every contender's timing."""

    backend: str
    operation: str
    timings: dict[str, Timing]
    callers: int = 1
    problem: str | None = None
    """Set when the data is wrong after the cell (e.g. an item not completed exactly once)."""

    def ratio_to(self, label: str) -> float | None:
        store, other = self.timings["store"], self.timings.get(label)
        if other is None or not (store.ok and other.ok) or other.ops_s == 0:
            return None
        return store.ops_s / other.ops_s

    @property
    def ratio(self) -> float | None:
        return self.ratio_to("raw")

    def errors(self) -> list[str]:
        errors = [
            f"{self.backend} {self.operation} ({self.callers} callers) {label}: {timing.error}"
            for label, timing in self.timings.items()
            if timing.error is not None
        ]
        if self.problem is not None:
            errors.append(
                f"{self.backend} {self.operation} ({self.callers} callers): {self.problem}"
            )
        return errors


async def measure(
    backend: str,
    operation: str,
    contenders: Sequence[Contender],
    duration: float,
    callers: int = 1,
) -> Cell:
    """Warm every contender up, then run them for ``duration`` each, in alternating rounds."""
    timings = {c.label: Timing() for c in contenders}
    warmup = min(0.2, max(0.05, duration / 5))
    for contender in contenders:
        try:
            await contender.run_for(warmup, Timing())
        except Exception as exc:
            timings[contender.label].error = f"{type(exc).__name__}: {exc}"
    slice_s = duration / ROUNDS
    for round_no in range(ROUNDS):
        shift = round_no % len(contenders)
        for contender in [*contenders[shift:], *contenders[:shift]]:
            timing = timings[contender.label]
            if timing.error is not None:
                continue
            try:
                await contender.run_for(slice_s, timing)
            except Exception as exc:
                timing.error = f"{type(exc).__name__}: {exc}"
    name = f"{operation}, {callers} callers" if callers > 1 else operation
    for contender in contenders:
        timing = timings[contender.label]
        if timing.error is not None:
            progress(f"  {backend:<10} {name:<30} {contender.label:<6} FAILED: {timing.error}")
        else:
            progress(
                f"  {backend:<10} {name:<30} {contender.label:<6}"
                f" {timing.ops_s:>9,.0f} ops/s  p50 {timing.percentile_us(50):>9,.1f} µs"
                f"  p99 {timing.percentile_us(99):>9,.1f} µs"
            )
    step(f"{backend} {name}")
    return Cell(backend, operation, timings, callers)


# ------------------------------------------------------------------------------ the store


@dataclass
class Seeded:
    """Executions the cells work on: appended to, and read (each with 100 events)."""

    append_ids: list[uuid.UUID]
    read_ids: list[uuid.UUID]
    queue_execution: uuid.UUID
    """The execution the queue cells' work items belong to."""


async def seed(store: StateStore) -> Seeded:
    """Create the executions and events through the store itself, so both contenders read
    exactly what the store writes."""
    append_ids: list[uuid.UUID] = []
    read_ids: list[uuid.UUID] = []
    for target, count in ((append_ids, N_APPEND_EXECUTIONS), (read_ids, N_READ_EXECUTIONS)):
        for _ in range(count):
            execution = new_execution()
            await store.create_execution(execution)
            target.append(execution.execution_id)
    for execution_id in read_ids:
        await store.append_events(execution_id, [KIND] * EVENTS_PER_READ)
    queue_execution = new_execution()
    await store.create_execution(queue_execution)
    return Seeded(append_ids, read_ids, queue_execution.execution_id)


def caller_ids(ids: Sequence[uuid.UUID], caller: int, callers: int) -> list[uuid.UUID]:
    """The executions one of ``callers`` concurrent appenders appends to: its own, so that
    concurrent appends never wait on each other's execution row."""
    return list(ids[caller::callers])


def new_execution() -> WorkflowExecution:
    return WorkflowExecution(
        workflow_id=WORKFLOW_ID, workflow_version=WORKFLOW_VERSION, initial_input=INPUT
    )


def store_ops(store: StateStore, seeded: Seeded) -> dict[str, AsyncOp]:
    """What a caller does for one operation: build the model, await the facade."""
    append_ids = itertools.cycle(seeded.append_ids)
    read_ids = itertools.cycle(seeded.read_ids)

    async def append_event() -> None:
        sequence = await store.append_event(Event(execution_id=next(append_ids), kind=KIND))
        check(sequence > 0, "append_event returned no sequence")

    async def get_events() -> None:
        events = await store.get_events(next(read_ids))
        check(len(events) == EVENTS_PER_READ, f"get_events returned {len(events)} events")

    async def create_execution() -> None:
        await store.create_execution(new_execution())

    async def get_execution() -> None:
        check(await store.get_execution(next(read_ids)) is not None, "execution not found")

    return {
        "append_event": append_event,
        "get_events": get_events,
        "create_execution": create_execution,
        "get_execution": get_execution,
    }


def store_appender(store: StateStore, execution_ids: Sequence[uuid.UUID]) -> AsyncOp:
    """One concurrent caller appending to its own executions."""
    ids = itertools.cycle(execution_ids)

    async def append_event() -> None:
        sequence = await store.append_event(Event(execution_id=next(ids), kind=KIND))
        check(sequence > 0, "append_event returned no sequence")

    return append_event


class WorkQueue:
    """The pending items of one queue type, with what the contenders did to them.

    Before every timed run the queue is topped up in bulk, untimed, to twice the items the
    run can claim at the fastest rate seen so far (or a generous first guess), so a run never
    finds it empty and every run starts from about the same depth. Ops report each claim
    (``took``) and each completion (``done``, per contender); :meth:`problem` then compares
    that with the table."""

    def __init__(
        self, queue_type: str, fill: Callable[[str, int], Awaitable[None]], rate_guess: float
    ) -> None:
        self.queue_type = queue_type
        self._fill = fill
        self._rate = rate_guess
        self.pending = 0
        self.completed: Counter[str] = Counter()
        self._taken = 0
        self._since: int | None = None

    async def top_up(self, seconds: float) -> None:
        now = time.perf_counter_ns()
        if self._since is not None and now > self._since:
            self._rate = max(self._rate, self._taken / ((now - self._since) / 1e9))
        missing = int(self._rate * seconds * 2) + 2 * CLAIM_BATCH - self.pending
        if missing > 0:
            await self._fill(self.queue_type, missing)
            self.pending += missing
        self._taken = 0
        self._since = time.perf_counter_ns()

    def took(self, count: int) -> None:
        self.pending -= count
        self._taken += count

    def done(self, label: str, count: int) -> None:
        self.completed[label] += count

    def problem(self, rows: Sequence[tuple[str, str | None, int]]) -> str | None:
        """Compare the table's (status, worker_id, count) rows of this queue type with what
        the contenders reported: ``None`` if they agree."""
        found: Counter[str] = Counter()
        for status, worker_id, count in rows:
            label = (worker_id or "").split("-", 1)[0]
            found[f"{status} {label}".strip()] += count
        expected: Counter[str] = Counter(
            {f"completed {label}": n for label, n in self.completed.items()}
        )
        expected["pending"] = self.pending
        if +found == +expected:
            return None
        return (
            f"queue {self.queue_type}: by status and contender, expected {dict(+expected)},"
            f" the table holds {dict(+found)}"
        )


def store_claimer(
    store: StateStore, work: WorkQueue, label: str, worker: str, batch: int
) -> AsyncOp:
    """Claim ``batch`` items and complete them: ``claim_work_item`` + ``complete_work_item``
    (batch 1), or ``claim_work_items`` + ``complete_work_items``; two transactions."""
    types = [work.queue_type]

    async def claim_complete() -> None:
        item = await store.claim_work_item(worker, types)
        if item is None:
            raise RuntimeError("claim_work_item found no pending item")
        work.took(1)
        await store.complete_work_item(item.id, worker_id=worker, lease_fence=item.lease_fence)
        work.done(label, 1)

    async def claim_complete_many() -> None:
        items = await store.claim_work_items(worker, types, batch)
        check(len(items) == batch, f"claim_work_items returned {len(items)} of {batch} items")
        work.took(len(items))
        completed = await store.complete_work_items(items)
        check(all(completed), f"complete_work_items: {completed.count(False)} leases lost")
        work.done(label, len(items))

    return claim_complete if batch == 1 else claim_complete_many


def store_validator(store: StateStore, token: str) -> AsyncOp:
    async def validate_token() -> None:
        check(await store.validate_token(token) is not None, "validate_token refused the token")

    return validate_token


def split_token(token: str) -> tuple[str, str]:
    """(token id as 32 hex digits, secret) of ``sst_<id>_<secret>``."""
    _prefix, token_id, secret = token.split("_", 2)
    return token_id, secret


def check_token(secret: str, row: Sequence[Any], now: Any) -> bool:
    """What the store checks once it has the row (``get_token``): the secret (with the
    store's passlib context), not revoked, not expired, tenant active."""
    valid, _new_hash = TOKEN_HASHES.verify_and_update(secret, row[3])
    expires_at, revoked_at, tenant_status = row[5], row[7], row[9]
    unexpired = expires_at is None or expires_at > now
    return bool(valid) and revoked_at is None and unexpired and tenant_status == "active"


# ------------------------------------------------------------------------------ SQLite raw


def sqlite_connect(path: Path, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """A stdlib connection set up like the store's: autocommit mode (we BEGIN ourselves),
    WAL, synchronous=NORMAL (or FULL), foreign keys, a busy timeout."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in (
        "PRAGMA busy_timeout = 30000",
        "PRAGMA journal_mode = WAL",
        f"PRAGMA synchronous = {synchronous}",
        "PRAGMA foreign_keys = ON",
    ):
        conn.execute(pragma)
    return conn


def sqlite_time(moment: datetime) -> str:
    """A timestamp as the store writes it on SQLite: naive UTC text, microseconds."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def sqlite_now() -> str:
    return sqlite_time(datetime.now(UTC))


def sqlite_in_transaction(conn: sqlite3.Connection, body: Callable[[], T]) -> T:
    """``body`` in its own ``BEGIN IMMEDIATE … COMMIT``, as the store's writer runs a call."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = body()
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def sqlite_append(conn: sqlite3.Connection, execution_id: str) -> int:
    """append_event's statements (no transaction of its own). Ids are 32-digit hex."""
    sql = SQLITE_SQL
    sequence, tenant_id = conn.execute(sql["bump_sequence"], (execution_id,)).fetchall()[0]
    conn.execute(
        sql["insert_event"],
        (
            uuid.uuid4().hex,
            execution_id,
            sequence,
            KIND_TYPE,
            dumps(KIND_JSON),
            sqlite_now(),
            tenant_id,
        ),
    )
    return int(sequence)


def sqlite_claim(
    conn: sqlite3.Connection, queue_type: str, worker: str, limit: int
) -> list[tuple[Any, ...]]:
    now = datetime.now(UTC)
    params = (queue_type, sqlite_time(now), limit, worker, sqlite_time(now + LEASE))
    return conn.execute(SQLITE_SQL["claim"], params).fetchall()


def sqlite_complete(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]], worker: str) -> int:
    """Complete claimed rows; returns how many were still held by ``worker``."""
    now = sqlite_now()
    if len(rows) == 1:
        params = (rows[0][0], now, worker, rows[0][FENCE])
        return len(conn.execute(SQLITE_SQL["complete"], params).fetchall())
    before = conn.total_changes
    conn.executemany(SQLITE_COMPLETE_EACH, [(row[0], now, worker, row[FENCE]) for row in rows])
    return conn.total_changes - before


def sqlite_validate(conn: sqlite3.Connection, token: str) -> None:
    """validate_token's read: the token row and its tenant's status, then the verify (a
    single autocommit statement, like the other raw reads)."""
    token_id, secret = split_token(token)
    row = conn.execute(SQLITE_SQL["get_token"], (token_id,)).fetchone()
    check(row is not None and check_token(secret, row, sqlite_now()), "raw: token refused")


def sqlite_fill(
    conn: sqlite3.Connection, execution_id: uuid.UUID, queue_type: str, count: int
) -> None:
    now = sqlite_now()
    payload = dumps(WORK_PAYLOAD)
    rows = (
        (uuid.uuid4().hex, execution_id.hex, queue_type, payload, now, TENANT) for _ in range(count)
    )
    sqlite_in_transaction(conn, lambda: conn.executemany(SQLITE_FILL, rows))


def sqlite_raw_ops(conn: sqlite3.Connection, seeded: Seeded) -> dict[str, SyncOp]:
    """The store's SQL through stdlib sqlite3. Ids are stored as 32-digit hex on SQLite."""
    append_ids = itertools.cycle([i.hex for i in seeded.append_ids])
    read_ids = itertools.cycle([i.hex for i in seeded.read_ids])
    sql = SQLITE_SQL

    def create_body() -> None:
        tenant = conn.execute(sql["get_tenant"], (TENANT,)).fetchone()
        check(tenant is not None and tenant[2] == "active", "default tenant missing")
        now = sqlite_now()
        conn.execute(
            sql["insert_execution"],
            (
                uuid.uuid4().hex,
                WORKFLOW_ID,
                WORKFLOW_VERSION,
                "pending",
                dumps(INPUT),
                dumps({}),
                now,
                now,
                None,
                0,
                TENANT,
            ),
        )

    def append_event() -> None:
        execution_id = next(append_ids)
        sqlite_in_transaction(conn, lambda: sqlite_append(conn, execution_id))

    def get_events() -> None:
        rows = conn.execute(sql["get_events"], (next(read_ids), 0)).fetchall()
        check(len(rows) == EVENTS_PER_READ, f"raw get_events returned {len(rows)} rows")

    def create_execution() -> None:
        sqlite_in_transaction(conn, create_body)

    def get_execution() -> None:
        row = conn.execute(sql["get_execution"], (next(read_ids),)).fetchone()
        check(row is not None, "raw execution not found")

    return {
        "append_event": append_event,
        "get_events": get_events,
        "create_execution": create_execution,
        "get_execution": get_execution,
    }


class Submit(Protocol):
    """How a raw SQLite layer runs a call's statements from asyncio, in one transaction."""

    def __call__(self, body: Callable[[], T], /) -> Awaitable[T]: ...


def sqlite_claimer(
    submit: Submit,
    conn: sqlite3.Connection,
    work: WorkQueue,
    label: str,
    worker: str,
    batch: int,
) -> AsyncOp:
    """Claim ``batch`` items, then complete them: two calls, two transactions."""

    async def claim_complete() -> None:
        rows = await submit(lambda: sqlite_claim(conn, work.queue_type, worker, batch))
        check(len(rows) == batch, f"raw claim returned {len(rows)} of {batch} items")
        work.took(len(rows))
        completed = await submit(lambda: sqlite_complete(conn, rows, worker))
        check(completed == batch, f"raw complete: {batch - completed} leases lost")
        work.done(label, batch)

    return claim_complete


def sqlite_sync_claimer(
    conn: sqlite3.Connection, work: WorkQueue, label: str, worker: str, batch: int
) -> SyncOp:
    def claim_complete() -> None:
        rows = sqlite_in_transaction(
            conn, lambda: sqlite_claim(conn, work.queue_type, worker, batch)
        )
        check(len(rows) == batch, f"sync claim returned {len(rows)} of {batch} items")
        work.took(len(rows))
        completed = sqlite_in_transaction(conn, lambda: sqlite_complete(conn, rows, worker))
        check(completed == batch, f"sync complete: {batch - completed} leases lost")
        work.done(label, batch)

    return claim_complete


def sqlite_appender(
    submit: Submit, conn: sqlite3.Connection, execution_ids: Sequence[uuid.UUID]
) -> AsyncOp:
    """One concurrent caller appending to its own executions."""
    ids = itertools.cycle([i.hex for i in execution_ids])

    async def append_event() -> None:
        execution_id = next(ids)
        check(await submit(lambda: sqlite_append(conn, execution_id)) > 0, "no sequence")

    return append_event


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


Job = tuple[asyncio.Future[Any], Callable[[], Any]]


class DbThread:
    """A dedicated database thread: each ``run(fn)`` is exactly one hop from the event loop
    to the thread and back (a SimpleQueue in, ``call_soon_threadsafe`` out), like the
    ``sqlite3+1hop`` layer of the baselines."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            future, fn = item
            loop = future.get_loop()
            try:
                result = fn()
            except Exception as exc:
                loop.call_soon_threadsafe(_set_exception, future, exc)
            else:
                loop.call_soon_threadsafe(_set_result, future, result)

    def run(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put((future, fn))
        return future

    async def close(self) -> None:
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)


def in_transactions(thread: DbThread, conn: sqlite3.Connection) -> Submit:
    """The ``sqlite3+1hop`` layer: one hop and one transaction per call."""

    def submit(body: Callable[[], T]) -> Awaitable[T]:
        return thread.run(lambda: sqlite_in_transaction(conn, body))

    return submit


def _resolve_all(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in outcomes:
        if error is None:
            _set_result(future, result)
        else:
            _set_exception(future, error)


class GroupCommitThread(DbThread):
    """The ``sqlite3+groupcommit`` layer of the baselines: the thread takes every call
    waiting at that moment (up to 64) and runs them in one ``BEGIN IMMEDIATE … COMMIT``, each
    in its own SAVEPOINT (none for a call alone), then wakes the loop once for the batch.
    ``run(body)`` runs ``body`` without a transaction of its own."""

    def __init__(self, name: str, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.transactions = 0
        self.calls = 0
        super().__init__(name)

    def _loop(self) -> None:
        stopping = False
        while not stopping and (item := self._queue.get()) is not None:
            group = [item]
            while len(group) < GROUP_COMMIT_MAX:
                try:
                    waiting = self._queue.get_nowait()
                except queue.Empty:
                    break
                if waiting is None:
                    stopping = True
                    break
                group.append(waiting)
            outcomes = self._run_group(group)
            group[0][0].get_loop().call_soon_threadsafe(_resolve_all, outcomes)

    def _run_group(
        self, group: list[Job]
    ) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
        conn = self._conn
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if len(group) == 1:
                    future, fn = group[0]
                    outcomes.append((future, fn(), None))
                else:
                    for future, fn in group:
                        conn.execute("SAVEPOINT call")
                        try:
                            result = fn()
                        except Exception as exc:
                            conn.execute("ROLLBACK TO call")
                            conn.execute("RELEASE call")
                            outcomes.append((future, None, exc))
                        else:
                            conn.execute("RELEASE call")
                            outcomes.append((future, result, None))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except Exception as exc:
            return [(future, None, exc) for future, _fn in group]
        self.transactions += 1
        self.calls += len(group)
        return outcomes


def one_hop(thread: DbThread, fn: SyncOp) -> AsyncOp:
    def op() -> Awaitable[object]:
        return thread.run(fn)

    return op


async def queue_cell(
    backend: str,
    operation: str,
    contenders: Sequence[Contender],
    duration: float,
    work: WorkQueue,
    counts: Callable[[str], Awaitable[Sequence[tuple[str, str | None, int]]]],
    callers: int = 1,
) -> Cell:
    """A queue cell, then the check that every claimed item was completed exactly once."""
    cell = await measure(backend, operation, contenders, duration, callers)
    if all(timing.error is None for timing in cell.timings.values()):
        cell.problem = work.problem(await counts(work.queue_type))
    return cell


@dataclass
class SqliteRig:
    """A store and the raw layers beside it on the same file."""

    store: StateStore
    seeded: Seeded
    sync_conn: sqlite3.Connection
    """Main-thread connection: the sync reference, queue top-ups and counts."""
    thread: DbThread
    hop_conn: sqlite3.Connection
    gc: GroupCommitThread
    gc_conn: sqlite3.Connection

    @property
    def hop(self) -> Submit:
        return in_transactions(self.thread, self.hop_conn)


async def sqlite_rig(
    stack: contextlib.AsyncExitStack,
    store: StateStore,
    seeded: Seeded,
    sync_conn: sqlite3.Connection,
    path: Path,
    synchronous: str,
) -> SqliteRig:
    """Raw connections at ``synchronous``, each closed by ``stack`` after its thread."""
    hop_conn = sqlite_connect(path, synchronous)
    stack.callback(hop_conn.close)
    thread = DbThread(f"bench-sqlite-raw-{synchronous}")
    stack.push_async_callback(thread.close)
    gc_conn = sqlite_connect(path, synchronous)
    stack.callback(gc_conn.close)
    gc = GroupCommitThread(f"bench-sqlite-gc-{synchronous}", gc_conn)
    stack.push_async_callback(gc.close)
    return SqliteRig(store, seeded, sync_conn, thread, hop_conn, gc, gc_conn)


async def bench_sqlite(duration: float, info: dict[str, str]) -> list[Cell]:
    info["sqlite"] = sqlite3.sqlite_version
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="statestore-bench-") as folder:
        path = Path(folder) / "bench.db"
        progress(f"sqlite: {path} (WAL, synchronous=NORMAL): migrating and seeding")
        async with contextlib.AsyncExitStack() as stack:
            store = await StateStore.open(f"sqlite:///{path}")
            stack.push_async_callback(store.close)
            seeded = await seed(store)
            sync_conn = sqlite_connect(path)
            stack.callback(sync_conn.close)
            sync_conn.execute("ANALYZE")
            rig = await sqlite_rig(stack, store, seeded, sync_conn, path, "NORMAL")
            store_side = store_ops(store, seeded)
            hop_side = sqlite_raw_ops(rig.hop_conn, seeded)
            sync_side = sqlite_raw_ops(sync_conn, seeded)
            for operation in OPERATIONS:
                contenders = [
                    Contender("store", async_op=store_side[operation]),
                    Contender("raw", async_op=one_hop(rig.thread, hop_side[operation])),
                    Contender("sync", sync_op=sync_side[operation]),
                ]
                cells.append(await measure("sqlite", operation, contenders, duration))
            cells.append(await sqlite_append_cell(rig, "append_event", duration))
            progress("sqlite: a second store, and raw connections, at synchronous=FULL")
            async with contextlib.AsyncExitStack() as full_stack:
                full_store = await StateStore.open(f"sqlite:///{path}", durability="FULL")
                full_stack.push_async_callback(full_store.close)
                full = await sqlite_rig(full_stack, full_store, seeded, sync_conn, path, "FULL")
                cells.append(await sqlite_append_cell(full, APPEND_FULL, duration))
            for batch, callers in ((1, 1), (1, SQLITE_CALLERS), (CLAIM_BATCH, 1)):
                cells.append(await sqlite_queue_cell(rig, batch, callers, duration))
            cells.append(await sqlite_validate_cell(rig, duration))
    return cells


async def sqlite_append_cell(rig: SqliteRig, operation: str, duration: float) -> Cell:
    """16 concurrent appenders, each to its own executions: the store, one transaction per
    call (raw), and raw group commit (gc)."""
    callers = SQLITE_CALLERS
    ids = [caller_ids(rig.seeded.append_ids, i, callers) for i in range(callers)]
    hop = rig.hop
    contenders = [
        Contender("store", callers=[store_appender(rig.store, own) for own in ids]),
        Contender("raw", callers=[sqlite_appender(hop, rig.hop_conn, own) for own in ids]),
        Contender("gc", callers=[sqlite_appender(rig.gc.run, rig.gc_conn, own) for own in ids]),
    ]
    return await grouped(rig, measure("sqlite", operation, contenders, duration, callers))


def writer_counts(store: StateStore) -> tuple[int, int]:
    """(write transactions, write calls) the store's SQLite writer has committed so far:
    diagnostics from the runner's counters (private; (0, 0) if it has none)."""
    runner = getattr(getattr(store, "_shared", None), "runner", None)
    return getattr(runner, "transactions", 0), getattr(runner, "operations", 0)


async def grouped(rig: SqliteRig, measuring: Awaitable[Cell]) -> Cell:
    """Run a concurrent SQLite cell and report how many calls each commit carried, in the
    store and in the raw group-commit layer."""
    store_before = writer_counts(rig.store)
    rig.gc.transactions = rig.gc.calls = 0
    cell = await measuring
    store_after = writer_counts(rig.store)
    transactions = store_after[0] - store_before[0]
    calls = store_after[1] - store_before[1]
    if transactions and rig.gc.transactions:
        progress(
            f"  calls per commit: store {calls / transactions:.1f},"
            f" gc {rig.gc.calls / rig.gc.transactions:.1f}"
        )
    return cell


async def sqlite_queue_cell(rig: SqliteRig, batch: int, callers: int, duration: float) -> Cell:
    """Claim ``batch`` items and complete them, from ``callers`` concurrent callers: the store,
    raw, and the sync reference (one caller) or raw group commit (many)."""
    sync_conn = rig.sync_conn

    async def fill(queue_type: str, count: int) -> None:
        sqlite_fill(sync_conn, rig.seeded.queue_execution, queue_type, count)

    async def counts(queue_type: str) -> list[tuple[str, str | None, int]]:
        return sync_conn.execute(SQLITE_SQL["queue_counts"], (queue_type,)).fetchall()

    rate = QUEUE_RATE_GUESS if batch == 1 else BATCH_RATE_GUESS
    work = WorkQueue(f"bench-{batch}x{callers}", fill, rate)

    def raw(label: str, submit: Submit, conn: sqlite3.Connection) -> Contender:
        ops = [
            sqlite_claimer(submit, conn, work, label, f"{label}-{i}", batch) for i in range(callers)
        ]
        return Contender(label, callers=ops, prepare=work.top_up, items_per_call=batch)

    store_side = [
        store_claimer(rig.store, work, "store", f"store-{i}", batch) for i in range(callers)
    ]
    contenders = [
        Contender("store", callers=store_side, prepare=work.top_up, items_per_call=batch),
        raw("raw", rig.hop, rig.hop_conn),
    ]
    if callers == 1:
        sync_op = sqlite_sync_claimer(sync_conn, work, "sync", "sync-0", batch)
        contenders.append(
            Contender("sync", sync_op=sync_op, prepare=work.top_up, items_per_call=batch)
        )
    else:
        contenders.append(raw("gc", rig.gc.run, rig.gc_conn))
    operation = CLAIM if batch == 1 else CLAIM_MANY
    measuring = queue_cell("sqlite", operation, contenders, duration, work, counts, callers)
    return await (grouped(rig, measuring) if callers > 1 else measuring)


async def sqlite_validate_cell(rig: SqliteRig, duration: float) -> Cell:
    plain, _record = await rig.store.create_token("bench", "viewer")
    hop_conn, sync_conn = rig.hop_conn, rig.sync_conn
    contenders = [
        Contender("store", async_op=store_validator(rig.store, plain)),
        Contender("raw", async_op=one_hop(rig.thread, lambda: sqlite_validate(hop_conn, plain))),
        Contender("sync", sync_op=lambda: sqlite_validate(sync_conn, plain)),
    ]
    return await measure("sqlite", VALIDATE, contenders, duration)


# ------------------------------------------------------------------------------ PostgreSQL raw


async def pg_append(conn: asyncpg.Connection, execution_id: uuid.UUID) -> int:
    """append_event's one statement (autocommit, as the store sends it)."""
    sequence = await conn.fetchval(
        PG_SQL["append_one"],
        uuid.uuid4(),
        execution_id,
        KIND_TYPE,
        dumps(KIND_JSON),
        datetime.now(UTC),
    )
    return int(sequence)


def pg_appender(conn: asyncpg.Connection, execution_ids: Sequence[uuid.UUID]) -> AsyncOp:
    """One worker, on its own connection, appending to its own executions."""
    ids = itertools.cycle(execution_ids)

    async def append_event() -> None:
        check(await pg_append(conn, next(ids)) > 0, "no sequence")

    return append_event


def pg_claimer(
    conn: asyncpg.Connection, work: WorkQueue, label: str, worker: str, batch: int
) -> AsyncOp:
    """Claim ``batch`` items (one statement, SKIP LOCKED), then complete them (one statement:
    the single-item UPDATE, or one UPDATE joined to unnest() of ids and fences); each its
    own transaction."""

    async def claim_complete() -> None:
        now = datetime.now(UTC)
        rows = await conn.fetch(PG_SQL["claim"], work.queue_type, now, batch, worker, now + LEASE)
        check(len(rows) == batch, f"raw claim returned {len(rows)} of {batch} items")
        work.took(len(rows))
        now = datetime.now(UTC)
        if batch == 1:
            row = rows[0]
            done = await conn.fetch(PG_SQL["complete"], row["id"], now, worker, row["lease_fence"])
            completed = len(done)
        else:
            ids = [row["id"] for row in rows]
            fences = [row["lease_fence"] for row in rows]
            status = await conn.execute(PG_COMPLETE_MANY, ids, fences, now, worker)
            completed = int(status.split()[-1])
        check(completed == batch, f"raw complete: {batch - completed} leases lost")
        work.done(label, batch)

    return claim_complete


def pg_validator(conn: asyncpg.Connection, token: str) -> AsyncOp:
    """validate_token's read as one statement, then the same verify."""

    async def validate_token() -> None:
        token_id, secret = split_token(token)
        row = await conn.fetchrow(PG_SQL["get_token"], uuid.UUID(token_id))
        now = datetime.now(UTC)
        check(row is not None and check_token(secret, row, now), "raw: token refused")

    return validate_token


def pg_raw_ops(conn: asyncpg.Connection, seeded: Seeded) -> dict[str, AsyncOp]:
    """The store's SQL through one asyncpg connection (prepared-statement cache on)."""
    append_ids = itertools.cycle(seeded.append_ids)
    read_ids = itertools.cycle(seeded.read_ids)
    sql = PG_SQL

    async def append_event() -> None:
        await pg_append(conn, next(append_ids))

    async def get_events() -> None:
        rows = await conn.fetch(sql["get_events"], next(read_ids), 0)
        check(len(rows) == EVENTS_PER_READ, f"raw get_events returned {len(rows)} rows")

    async def create_execution() -> None:
        async with conn.transaction():
            tenant = await conn.fetchrow(sql["get_tenant"], TENANT)
            check(tenant is not None and tenant["status"] == "active", "default tenant missing")
            now = datetime.now(UTC)
            await conn.execute(
                sql["insert_execution"],
                uuid.uuid4(),
                WORKFLOW_ID,
                WORKFLOW_VERSION,
                "pending",
                dumps(INPUT),
                dumps({}),
                now,
                now,
                None,
                0,
                TENANT,
            )

    async def get_execution() -> None:
        row = await conn.fetchrow(sql["get_execution"], next(read_ids))
        check(row is not None, "raw execution not found")

    return {
        "append_event": append_event,
        "get_events": get_events,
        "create_execution": create_execution,
        "get_execution": get_execution,
    }


class BenchError(Exception):
    """The bench cannot run a backend (e.g. PostgreSQL is unreachable)."""


async def bench_postgres(duration: float, admin_url: str, info: dict[str, str]) -> list[Cell]:
    progress(f"postgresql: re-creating database {PG_DATABASE}, migrating and seeding")
    try:
        await pg_admin(
            admin_url,
            f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)",
            f"CREATE DATABASE {PG_DATABASE}",
        )
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise BenchError(
            f"PostgreSQL unreachable at {urlsplit(admin_url).netloc}: {exc}"
            " (start it, pass --pg-url, or run with --only sqlite)"
        ) from exc
    url = with_database(admin_url, PG_DATABASE)
    cells: list[Cell] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            # As many pooled connections as the raw workers get (SQLAlchemy's default pool
            # keeps 5 and would close the overflow ones between calls).
            store = await StateStore.open(url, pool_size=PG_WORKERS)
            stack.push_async_callback(store.close)
            seeded = await seed(store)
            conn = await asyncpg.connect(url)
            stack.push_async_callback(conn.close)
            await conn.execute("ANALYZE")
            settings = {
                name: await conn.fetchval(f"SHOW {name}")
                for name in ("server_version", "synchronous_commit", "fsync")
            }
            info["postgresql"] = (
                f"{settings['server_version'].split()[0]}"
                f" (synchronous_commit={settings['synchronous_commit']}, fsync={settings['fsync']})"
            )
            store_side = store_ops(store, seeded)
            raw_side = pg_raw_ops(conn, seeded)
            for operation in OPERATIONS:
                contenders = [
                    Contender("store", async_op=store_side[operation]),
                    Contender("raw", async_op=raw_side[operation]),
                ]
                cells.append(await measure("postgresql", operation, contenders, duration))
            workers: list[asyncpg.Connection] = []
            for _ in range(PG_WORKERS):
                workers.append(await asyncpg.connect(url))
                stack.push_async_callback(workers[-1].close)
            rig = PgRig(store, seeded, conn, workers)
            cells.append(await pg_append_cell(rig, duration))
            for batch, callers in ((1, 1), (1, PG_WORKERS), (CLAIM_BATCH, 1)):
                cells.append(await pg_queue_cell(rig, batch, callers, duration))
            cells.append(await pg_validate_cell(rig, duration))
    finally:
        await pg_admin(admin_url, f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")
    return cells


@dataclass
class PgRig:
    """A store and the raw connections beside it on the same database."""

    store: StateStore
    seeded: Seeded
    conn: asyncpg.Connection
    """The single-caller raw connection; also queue top-ups and counts."""
    workers: list[asyncpg.Connection]
    """One connection per raw worker."""


async def pg_append_cell(rig: PgRig, duration: float) -> Cell:
    """8 workers appending, each to its own executions."""
    ids = [caller_ids(rig.seeded.append_ids, i, PG_WORKERS) for i in range(PG_WORKERS)]
    contenders = [
        Contender("store", callers=[store_appender(rig.store, own) for own in ids]),
        Contender(
            "raw", callers=[pg_appender(c, own) for c, own in zip(rig.workers, ids, strict=True)]
        ),
    ]
    return await measure("postgresql", "append_event", contenders, duration, PG_WORKERS)


async def pg_queue_cell(rig: PgRig, batch: int, callers: int, duration: float) -> Cell:
    """Claim ``batch`` items and complete them, from ``callers`` workers."""
    conn = rig.conn
    analysed: set[str] = set()

    async def fill(queue_type: str, count: int) -> None:
        now = datetime.now(UTC)
        await conn.execute(
            PG_FILL, rig.seeded.queue_execution, queue_type, dumps(WORK_PAYLOAD), now, TENANT, count
        )
        # Claimed and completed rows leave dead entries at the head of the claim index, which
        # every later claim steps over until a vacuum: each run starts from a vacuumed table,
        # as the baselines' fresh queues did (and the first one from fresh statistics).
        await conn.execute("VACUUM work_items")
        if queue_type not in analysed:
            analysed.add(queue_type)
            await conn.execute("ANALYZE work_items")

    async def counts(queue_type: str) -> list[tuple[str, str | None, int]]:
        rows = await conn.fetch(PG_SQL["queue_counts"], queue_type)
        return [(row[0], row[1], row[2]) for row in rows]

    rate = QUEUE_RATE_GUESS if batch == 1 else BATCH_RATE_GUESS
    work = WorkQueue(f"bench-{batch}x{callers}", fill, rate)
    store_side = [
        store_claimer(rig.store, work, "store", f"store-{i}", batch) for i in range(callers)
    ]
    raw_side = [
        pg_claimer(c, work, "raw", f"raw-{i}", batch) for i, c in enumerate(rig.workers[:callers])
    ]
    contenders = [
        Contender("store", callers=store_side, prepare=work.top_up, items_per_call=batch),
        Contender("raw", callers=raw_side, prepare=work.top_up, items_per_call=batch),
    ]
    operation = CLAIM if batch == 1 else CLAIM_MANY
    return await queue_cell("postgresql", operation, contenders, duration, work, counts, callers)


async def pg_validate_cell(rig: PgRig, duration: float) -> Cell:
    plain, _record = await rig.store.create_token("bench", "viewer")
    contenders = [
        Contender("store", async_op=store_validator(rig.store, plain)),
        Contender("raw", async_op=pg_validator(rig.conn, plain)),
    ]
    return await measure("postgresql", VALIDATE, contenders, duration)


# ------------------------------------------------------------------------------ output

HEADER = (
    "backend",
    "operation",
    "callers",
    "store ops/s",
    "store p50 µs",
    "store p99 µs",
    "raw ops/s",
    "raw p50 µs",
    "raw p99 µs",
    "ratio",
    "gc ops/s",
    "gc ratio",
    "sync sqlite3 ops/s",
    "target",
)


def target(cell: Cell) -> tuple[float, str] | None:
    """The acceptance ratio of the performance issue (#6) for this cell, and what it is
    measured against ("raw" or "gc"): SQLite one caller 0.6 of the one-hop floor (claim+
    complete 0.5), concurrent SQLite 0.5 of raw group commit, batches of 100 0.5, PostgreSQL
    one worker 0.7 and several workers 0.6 of asyncpg."""
    if cell.operation == CLAIM_MANY:
        return 0.5, "raw"
    if cell.backend == "sqlite":
        if cell.callers > 1:
            return 0.5, "gc"
        return (0.5 if cell.operation == CLAIM else 0.6), "raw"
    return (0.7 if cell.callers == 1 else 0.6), "raw"


def fmt_target(cell: Cell) -> str:
    """e.g. "0.6 raw: met" or "0.6 raw: 0.45 (-25%)"."""
    goal = target(cell)
    if goal is None:
        return "-"
    wanted, against = goal
    ratio = cell.ratio_to(against)
    if ratio is None:
        return f"{wanted} {against}: -"
    if ratio >= wanted:
        return f"{wanted} {against}: met"
    return f"{wanted} {against}: missed by {1 - ratio / wanted:.0%}"


def fmt_rate(timing: Timing | None) -> str:
    if timing is None:
        return "-"
    return f"{timing.ops_s:,.0f}" if timing.ok else "FAILED"


def fmt_us(timing: Timing, p: float) -> str:
    if not timing.ok:
        return "FAILED"
    value = timing.percentile_us(p)
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def table_order(cells: Sequence[Cell]) -> list[Cell]:
    """Backends in the order they ran; within one, operations as in ALL_OPERATIONS, then
    by callers."""
    backends = list(dict.fromkeys(cell.backend for cell in cells))
    return sorted(
        cells,
        key=lambda c: (backends.index(c.backend), ALL_OPERATIONS.index(c.operation), c.callers),
    )


def markdown_table(cells: Sequence[Cell]) -> str:
    rows = [HEADER]
    for cell in table_order(cells):
        store, raw = cell.timings["store"], cell.timings["raw"]
        gc = cell.timings.get("gc")
        rows.append(
            (
                cell.backend,
                cell.operation,
                str(cell.callers),
                fmt_rate(store),
                fmt_us(store, 50),
                fmt_us(store, 99),
                fmt_rate(raw),
                fmt_us(raw, 50),
                fmt_us(raw, 99),
                fmt_ratio(cell.ratio),
                fmt_rate(gc),
                "-" if gc is None else fmt_ratio(cell.ratio_to("gc")),
                fmt_rate(cell.timings.get("sync")),
                fmt_target(cell),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    numeric = [2 <= i < len(HEADER) - 1 for i in range(len(HEADER))]

    def line(row: Sequence[str]) -> str:
        padded = [
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(row, widths, numeric, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            "-" * (width + 1) + ":" if right else "-" * (width + 2)
            for width, right in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    return "\n".join([line(rows[0]), rule, *(line(row) for row in rows[1:])])


LEGEND = (
    f"callers = concurrent callers: asyncio tasks sharing one store on SQLite, workers on"
    f" PostgreSQL (each raw worker with its own `asyncpg` connection, the store with a pool of"
    f" {PG_WORKERS}). raw = the same SQL through the bare driver: on SQLite stdlib `sqlite3`"
    f" behind one thread hop from asyncio with one transaction per call (the async floor), on"
    f" PostgreSQL `asyncpg`. gc = raw group commit on SQLite: one thread runs up to"
    f" {GROUP_COMMIT_MAX} waiting calls in one transaction. ratio = store ops/s / raw ops/s;"
    f" gc ratio = store ops/s / gc ops/s. sync sqlite3 = the same `sqlite3` calls with no"
    f" event loop (reference only). claim+complete: one op is one item claimed and completed"
    f" (two calls, two transactions), its latency both calls; in the x{CLAIM_BATCH} row ops/s"
    f" counts items, and latency is per claim of {CLAIM_BATCH} plus their completion."
)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for text in cpuinfo:
                if text.startswith("model name"):
                    return text.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def nproc() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 0


def command_line() -> str:
    python = Path(sys.executable)
    try:
        shown = str(python.relative_to(Path.cwd()))
    except ValueError:
        shown = str(python)
    return shlex.join([shown, *sys.argv])


def code_version() -> str:
    """The commit the store was measured at, and whether its code had local changes."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "statestore", "alembic"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return f"commit {commit}" + (" with uncommitted changes to the store" if dirty else "")


def range_text(values: Sequence[float]) -> str:
    low, high = min(values), max(values)
    if fmt_ratio(low) == fmt_ratio(high):
        return fmt_ratio(low)
    return f"{fmt_ratio(low)} to {fmt_ratio(high)}"


def row_name(cell: Cell) -> str:
    return cell.operation if cell.callers == 1 else f"{cell.operation} with {cell.callers} callers"


def standing(cells: Sequence[Cell]) -> str:
    """The "where we stand" paragraph, from the numbers of this run."""
    judged = [(c, target(c)) for c in cells]
    missed = [
        f"{c.backend} {row_name(c)} ({fmt_ratio(c.ratio_to(against))} of {against},"
        f" target {wanted})"
        for c, goal in judged
        if goal is not None
        for wanted, against in [goal]
        if (c.ratio_to(against) or 0.0) < wanted
    ]
    parts = [
        f"Against the acceptance ratios of the performance issue (the target column; they are"
        f" goals for this table, not test assertions) the store meets"
        f" {len(judged) - len(missed)} of {len(judged)} rows"
        + (f"; it misses {'; '.join(missed)}." if missed else ".")
    ]
    for backend, floor in (("sqlite", "the one-hop sqlite3 floor"), ("postgresql", "raw asyncpg")):
        measured = [c for c in cells if c.backend == backend and c.ratio is not None]
        single = [c for c in measured if c.callers == 1]
        if not single:
            continue
        ratios = [c.ratio for c in single if c.ratio is not None]
        worst = min(single, key=lambda c: c.ratio or 0.0)
        name = "SQLite" if backend == "sqlite" else "PostgreSQL"
        sentence = (
            f"On {name}, with one caller, the store runs at {range_text(ratios)} of {floor}'s"
            f" throughput (furthest behind: {worst.operation} at {fmt_ratio(worst.ratio)})"
        )
        if backend == "sqlite":
            sync_ratios = [
                c.timings["store"].ops_s / c.timings["sync"].ops_s
                for c in single
                if "sync" in c.timings and c.timings["sync"].ok
            ]
            if sync_ratios:
                sentence += f", and at {range_text(sync_ratios)} of plain synchronous sqlite3"
        parts.append(sentence + ".")
        concurrent = [c for c in measured if c.callers > 1]
        if concurrent:
            against = ", ".join(
                f"{row_name(c)} {fmt_ratio(c.ratio)}"
                + (
                    f" (of raw group commit: {fmt_ratio(c.ratio_to('gc'))})"
                    if "gc" in c.timings
                    else ""
                )
                for c in concurrent
            )
            parts.append(f"With concurrent callers, against {floor}: {against}.")
        scaling = scaling_text(measured)
        if scaling:
            parts.append(scaling)
    parts.append(
        "Where the remaining gap comes from (profiled by hand at commit"
        f" {PROFILED_AT}; re-check when the hot paths change): the hot paths run Core"
        " statements compiled once per dialect straight on the DBAPI cursor"
        " (statestore/db/driver.py), one statement per append on PostgreSQL, reads and single"
        " statements in autocommit, one thread hop per call on SQLite. What is left is the"
        " work raw does not do: validating the models going in (and the JSON: no NaN, no NUL,"
        " string keys, size) and building typed models coming out (get_events builds 100"
        " Event models with typed kinds, about 7 µs each here; raw fetches undecoded rows),"
        " the store's own bookkeeping per call (tenant scope, session, savepoint per"
        " grouped write) and, on PostgreSQL, SQLAlchemy's greenlet bridge around each"
        " operation. On SQLite the event loop and the writer share the GIL, so concurrent"
        " callers are bound by the writer's Python per operation."
    )
    parts.append(
        "The rows with several callers measure concurrency: on SQLite the store's writer"
        " commits the writes waiting at that moment in one transaction (group commit), so they"
        " compare it with raw one transaction per call and with raw group commit; on"
        " PostgreSQL they compare workers that each hold a connection."
    )
    return " ".join(parts)


def scaling_text(cells: Sequence[Cell]) -> str:
    """How claim+complete scales from one caller to many, store and raw."""
    claims = {c.callers: c for c in cells if c.operation == CLAIM}
    if 1 not in claims or len(claims) < 2:
        return ""
    many = max(claims)

    def gain(label: str) -> str:
        one, more = claims[1].timings[label], claims[many].timings[label]
        return f"{more.ops_s / one.ops_s:.1f}x" if one.ok and more.ok and one.ops_s else "n/a"

    text = (
        f"claim+complete scales from 1 to {many} callers by {gain('store')} in the store and"
        f" {gain('raw')} raw"
    )
    one_raw, group = claims[1].timings["raw"], claims[many].timings.get("gc")
    if group is not None and group.ok and one_raw.ok and one_raw.ops_s:
        text += f" ({group.ops_s / one_raw.ops_s:.1f}x with raw group commit)"
    return text + "."


def document(
    cells: Sequence[Cell],
    info: dict[str, str],
    duration: float,
    peers: Sequence[PeerCell] | None = None,
) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{nproc()} CPUs (nproc), {cpu_model()}; {platform.system()} {platform.release()}"
    software = ", ".join(
        [
            f"Python {platform.python_version()}",
            f"SQLite {info.get('sqlite', 'not measured')}",
            f"PostgreSQL {info.get('postgresql', 'not measured')}",
            f"SQLAlchemy {sqlalchemy.__version__}",
            f"asyncpg {asyncpg.__version__}",
        ]
    )
    text = f"""# Benchmarks

The store's hot paths against the raw driver running the same SQL on the same schema, in the
same run. This file is written by `bench/run.py --write`; re-run it rather than editing the
numbers by hand.

- Command: `{command_line()}`
- Date: {when}
- Code: {code_version()}
- Machine: {machine}
- Software: {software}
- Method: {duration:g} s per cell and contender after a warm-up, in {ROUNDS} rounds that
  alternate the contenders; one caller, or the concurrent callers of the callers column;
  ops/s over the whole cell, p50/p99 per call.

## Results

{markdown_table(cells)}

{LEGEND}

## Where we stand

{standing(cells)}

## What each cell does

- **append_event**: one event of ~{len(dumps(KIND_JSON))} B of JSON to one of
  {N_APPEND_EXECUTIONS} executions, in turn. The store builds an `Event` and awaits
  `append_event`; raw runs what the store runs. SQLite: `UPDATE workflow_executions SET
  last_sequence = last_sequence + 1 WHERE id = ? RETURNING last_sequence, tenant_id`, then
  `INSERT INTO events`, in one `BEGIN IMMEDIATE` transaction. PostgreSQL: the one statement
  `WITH reserved AS (UPDATE … RETURNING last_sequence, tenant_id) INSERT INTO events … SELECT
  … FROM reserved`, in autocommit.
- **append_event with {SQLITE_CALLERS} callers (SQLite) or {PG_WORKERS} (PostgreSQL)**: the
  same append from concurrent callers, each to its own executions (the {N_APPEND_EXECUTIONS}
  split between them), so no append waits on another's execution row. SQLite:
  {SQLITE_CALLERS} asyncio tasks awaiting one store, whose writer thread commits the writes
  waiting at that moment together; raw runs the statements through one database thread, one
  transaction per call (the baselines' `sqlite3+1hop`); gc runs them through a group-commit
  thread that takes up to {GROUP_COMMIT_MAX} waiting calls into one `BEGIN IMMEDIATE …
  COMMIT`, a SAVEPOINT each, and wakes the event loop once per batch (the baselines'
  `sqlite3+groupcommit`). PostgreSQL: {PG_WORKERS} workers, the store with a pool of
  {PG_WORKERS} connections, raw with one `asyncpg` connection each.
- **append_event (FULL)**: the SQLite {SQLITE_CALLERS}-caller append at `synchronous=FULL`
  (an fsync per commit, where group commit matters most): a second store opened with
  `durability="FULL"` on the same file, and raw connections with `PRAGMA synchronous = FULL`.
- **get_events**: all {EVENTS_PER_READ} events of one of {N_READ_EXECUTIONS} executions. The
  store returns `Event` models; raw fetches the rows (`WHERE execution_id = ? AND sequence > 0
  ORDER BY sequence`) without decoding the JSON.
- **create_execution**: one new execution. The store builds a `WorkflowExecution` and awaits
  `create_execution`; raw runs what the store runs, the tenant check (`SELECT ... FROM tenants
  WHERE id = ?`) and the `INSERT INTO workflow_executions`, in one transaction.
- **get_execution**: one execution by id. The store returns a `WorkflowExecution`; raw
  fetches the row.
- **claim+complete**: one work item claimed and then completed, in two transactions. The
  store awaits `claim_work_item(worker_id, [queue])`, then `complete_work_item(id,
  worker_id=..., lease_fence=...)`. Raw runs the store's claim statement, `WITH eligible AS
  MATERIALIZED (SELECT id FROM work_items WHERE status = 'pending' AND queue_type IN (?) AND
  available_at <= ? ORDER BY priority DESC, created_at LIMIT 1)` (with `FOR UPDATE SKIP
  LOCKED` on PostgreSQL) `UPDATE work_items SET status = 'claimed', ... WHERE id IN (SELECT id
  FROM eligible) AND status = 'pending' RETURNING` every column, then `UPDATE work_items SET
  status = 'completed', ... WHERE id = ? AND status = 'claimed' AND worker_id = ? AND
  lease_fence = ? RETURNING id`. With 1 caller, then {SQLITE_CALLERS} on SQLite (store, raw
  and gc as for append_event) and {PG_WORKERS} workers on PostgreSQL, each caller with its
  own worker id.
- **claim+complete x{CLAIM_BATCH}**: `claim_work_items(worker_id, [queue], {CLAIM_BATCH})`,
  then `complete_work_items(items)`: two transactions per {CLAIM_BATCH} items; ops/s counts
  items. Raw runs the same claim with `LIMIT {CLAIM_BATCH}`, then one bulk completion,
  guarded item by item by worker and fence: on SQLite an `executemany` of the single-item
  `UPDATE`, on PostgreSQL one `UPDATE work_items ... FROM unnest($1::uuid[], $2::bigint[])`.
- The queue cells each use their own queue type, which every contender of the cell claims
  from. Before every timed run, untimed, pending items are inserted in bulk (the rows
  `enqueue_work_item` writes) so that the run starts with twice what it can claim at the
  fastest rate seen so far; on PostgreSQL the table is then vacuumed, since claimed rows
  leave dead entries at the head of the claim index that every later claim steps over until
  a vacuum. After the cell the bench checks, per contender, that the table holds exactly as
  many completed items as the contender completed, and none left claimed.
- **validate_token**: one token made by `create_token`, validated again and again. The store
  awaits `validate_token(token)`: a read transaction with the token row by primary key, the
  passlib verify and the tenant's status (and `last_used_at` written at most once a minute).
  Raw fetches the token row by primary key joined to its tenant's status in one statement,
  then runs the same passlib `verify_and_update` (the store's `CryptContext`) and the revoked
  and expiry checks.
- The store runs every call, reads included, in a transaction (reads on SQLite on a reader
  thread); the raw reads are single autocommit statements, the floor a lean read could reach.
  The data is written through the store, and both contenders read the same rows.
- SQLite: a temporary file, WAL, `synchronous=NORMAL` like the store's default (but the FULL
  row). PostgreSQL: a scratch database `{PG_DATABASE}`, dropped and re-created on each run.
"""
    # --peers: the peer libraries beside the store (bench/peers.py).
    if peers is not None:
        text += f"\n## Peers\n\n{peers_markdown(list(peers))}\n"
    return text


# ------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION,
        help=f"seconds per cell (default {DEFAULT_DURATION})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_DURATION} s per cell: checks the harness, not a measurement",
    )
    parser.add_argument("--only", choices=BACKENDS, help="run one backend only")
    parser.add_argument(
        "--write",
        nargs="?",
        const="docs/benchmarks.md",
        metavar="PATH",
        help="also write the results as Markdown (default path docs/benchmarks.md)",
    )
    parser.add_argument(
        "--pg-url",
        default=DEFAULT_PG_ADMIN_URL,
        help="PostgreSQL server to use; the bench creates its own database there"
        " (default $STATESTORE_BENCH_PG_URL or postgresql://postgres@127.0.0.1:5432/test)",
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also measure the peer libraries (needs the bench extra)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = QUICK_DURATION
    if args.duration <= 0:
        parser.error("--duration must be positive")
    return args


async def run(args: argparse.Namespace, info: dict[str, str]) -> tuple[list[Cell], list[str]]:
    cells: list[Cell] = []
    errors: list[str] = []
    backends = [args.only] if args.only else list(BACKENDS)
    progress(f"statestore bench: {', '.join(backends)}, {args.duration:g} s per cell")
    if "sqlite" in backends:
        cells += await bench_sqlite(args.duration, info)
    if "postgresql" in backends:
        try:
            cells += await bench_postgres(args.duration, args.pg_url, info)
        except BenchError as exc:
            errors.append(str(exc))
    return cells, errors


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info: dict[str, str] = {}
    started = time.perf_counter()
    backends = [args.only] if args.only else list(BACKENDS)
    with progress_bar(sum(CELLS[backend] for backend in backends)):
        cells, errors = asyncio.run(run(args, info))
    peer_cells: list[PeerCell] | None = None
    if args.peers:
        peer_cells = asyncio.run(bench_peers(args.duration, args.pg_url, only=args.only))
    for cell in cells:
        errors += cell.errors()
    progress(f"done in {time.perf_counter() - started:.1f} s")
    if cells:
        print(markdown_table(cells))
        print()
        print(LEGEND)
    if peer_cells is not None:
        print()
        print("## Peers")
        print()
        print(peers_markdown(peer_cells))
    for error in errors:
        print(f"ERROR: {error}", file=sys.stderr)
    if errors:
        if args.write:
            print(f"not writing {args.write}: the run had errors", file=sys.stderr)
        return 1
    if args.write:
        target = Path(args.write)
        write_document(target, document(cells, info, args.duration, peer_cells))
        progress(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
