"""The peer libraries beside the store: what a user could pick instead of statestore, doing
the nearest equivalent work, measured in the same run as the store doing its operation.

- SQLite: the ``eventsourcing`` recorder (``SQLiteApplicationRecorder.insert_events`` of one
  event, ``select_events`` of 100) and ``persist-queue`` (``SQLiteAckQueue.put``, and
  ``get`` + ``ack``).
- PostgreSQL: the ``eventsourcing`` recorder (``PostgresApplicationRecorder``), ``pgqueuer``
  (``Queries.enqueue`` of one job; ``dequeue`` + ``log_jobs`` of 1 and of 100 jobs) and
  ``procrastinate`` (``defer_async`` of one job; a worker draining no-op jobs).

Every cell measures the store (its public facade) and one peer doing the same operation with
payloads of the same size: a warm-up, then rounds that alternate the two so that drift on a
noisy machine hits both. On SQLite each peer and its store get fresh files in a temporary
folder, the store at the peer's ``synchronous`` setting; on PostgreSQL each peer and its
store share a scratch database, created before and dropped after. A peer whose package is
not installed is skipped with a note (``pip install -e '.[bench]'``).

``bench/run.py --peers`` runs this after the main table; ``python bench/peers.py`` runs it
alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import logging
import math
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg
from common import (
    KIND,
    Timing,
    check,
    dumps,
    fmt_ratio,
    pg_admin,
    progress,
    with_database,
)
from harness import ROUNDS, Contender, measure

from statestore import Event, StateStore, WorkflowDefinition, WorkflowExecution, WorkItem

AsyncOp = Callable[[], Awaitable[object]]
SyncOp = Callable[[], object]
Runner = Contender
"""One side of a cell, its label given by :func:`compare`."""

DEFAULT_PG_ADMIN_URL = os.environ.get(
    "STATESTORE_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
PG_DATABASE = "statestore_bench_peers"
EVENTS_PER_READ = 100
CLAIM_BATCH = 100
FILL_CHUNK = 1000
INSTALL_HINT = "pip install -e '.[bench]'"

APPEND = "append_event"
GET_EVENTS = "get_events"
ENQUEUE = "enqueue"
CLAIM = "claim+complete"
CLAIM_MANY = f"claim+complete x{CLAIM_BATCH}"
OPERATION_ORDER = (APPEND, GET_EVENTS, ENQUEUE, CLAIM, CLAIM_MANY)

ES = "eventsourcing recorder"
PQ = "persist-queue SQLiteAckQueue"
PGQ = "pgqueuer"
PROC = "procrastinate"
PROC_WORKER = "procrastinate worker"

WORKFLOW_ID = "wf"
WORKFLOW_VERSION = "1"
WORKER = "worker-1"
QUEUE = "bench"
NODE = "summarise"
# A work item's payload (~200 B of JSON), store and peer.
WORK_PAYLOAD: dict[str, Any] = {
    "node": "summarise",
    "input": {
        "url": "https://example.com/reports/2024/q3-results.html",
        "max_tokens": 512,
        "language": "en",
    },
    "attempt": 1,
    "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    "tags": ["finance", "quarterly"],
}


EVENT_BYTES = dumps(KIND.to_json_dict()).encode()
PAYLOAD_BYTES = dumps(WORK_PAYLOAD).encode()
EVENT_TOPIC = "workflow:NodeCompleted"
SYNCHRONOUS_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}

# The packages each peer needs: (module, what pip installs).
NEEDS: dict[str, tuple[tuple[str, str], ...]] = {
    "eventsourcing sqlite": (("eventsourcing", "eventsourcing"),),
    "eventsourcing postgresql": (
        ("eventsourcing", "eventsourcing"),
        ("psycopg", "psycopg"),
        ("psycopg_pool", "psycopg-pool"),
    ),
    "persist-queue": (("persistqueue", "persist-queue"),),
    "pgqueuer": (("pgqueuer", "pgqueuer"),),
    "procrastinate": (("procrastinate", "procrastinate"), ("psycopg", "psycopg")),
}
PEER_DISTRIBUTIONS = ("eventsourcing", "persist-queue", "pgqueuer", "procrastinate", "psycopg")
"""Whose versions the legend lists."""


# ------------------------------------------------------------------------------ timing


def async_loop(
    op: AsyncOp, *, items: int = 1, before: Callable[[float], Awaitable[None]] | None = None
) -> Runner:
    """A side that awaits ``op`` again and again until its time is up, each call timed;
    ``before`` runs untimed first (e.g. a queue top-up)."""
    return Contender("", async_op=op, prepare=before, items_per_call=items)


def sync_loop(
    op: SyncOp, *, items: int = 1, before: Callable[[float], Awaitable[None]] | None = None
) -> Runner:
    """:func:`async_loop` for a synchronous peer, called directly on the event-loop thread."""
    return Contender("", sync_op=op, prepare=before, items_per_call=items)


async def compare(
    backend: str, operation: str, peer: str, store_side: Runner, peer_side: Runner, duration: float
) -> tuple[Timing, Timing]:
    """The store and the peer measured like a cell of the main table (bench/harness.py): a
    warm-up, then alternating rounds. Returns (store, peer)."""
    sides = [replace(store_side, label="store"), replace(peer_side, label=peer)]
    cell = await measure(backend, operation, sides, duration)
    if cell.errors():
        raise RuntimeError("; ".join(cell.errors()))
    return cell.timings["store"], cell.timings[peer]


# ------------------------------------------------------------------------------ cells


@dataclass
class PeerCell:
    """One row of the peers table: a peer doing an operation, and the store doing the same
    in the same cell. ``ratio`` is store ops/s / peer ops/s (above 1: the store is ahead)."""

    backend: str
    """The backend: "sqlite" or "postgresql"."""
    operation: str
    """The store's operation, named as in the main table (e.g. "append_event")."""
    peer: str
    """e.g. "eventsourcing recorder"."""
    peer_call: str
    """What the peer call is, e.g. "insert_events(1 event)"."""
    peer_ops_s: float
    peer_p50_us: float
    peer_p99_us: float
    store_ops_s: float
    store_p50_us: float
    store_p99_us: float
    ratio: float | None
    durability: str = ""
    """SQLite: the ``synchronous`` setting of both sides; PostgreSQL: the server's."""
    note: str = ""
    error: str | None = None
    """Why the cell failed (its numbers are then NaN)."""

    @classmethod
    def measured(
        cls,
        backend: str,
        operation: str,
        peer: str,
        peer_call: str,
        timings: tuple[Timing, Timing],
        durability: str,
        note: str = "",
    ) -> PeerCell:
        """A cell from the (store, peer) timings of :func:`compare`."""
        store, other = timings
        ratio = store.ops_s / other.ops_s if store.ops_s > 0 and other.ops_s > 0 else None
        return cls(
            backend,
            operation,
            peer,
            peer_call,
            other.ops_s,
            other.percentile_us(50),
            other.percentile_us(99),
            store.ops_s,
            store.percentile_us(50),
            store.percentile_us(99),
            ratio,
            durability,
            note,
        )

    @classmethod
    def failed(
        cls, backend: str, operation: str, peer: str, peer_call: str, error: str
    ) -> PeerCell:
        """A cell that could not be measured."""
        nan = math.nan
        return cls(
            backend, operation, peer, peer_call, nan, nan, nan, nan, nan, nan, None, error=error
        )


class Backlog:
    """The pending items of one side's queue. Enqueue cells add to it; before every timed
    claim run it is topped up, untimed, to twice what the run can take at the fastest rate
    seen so far (or a first guess), so a run never finds the queue empty."""

    def __init__(
        self,
        fill: Callable[[int], Awaitable[None]],
        rate_guess: float,
        batch: int = 1,
        after_fill: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._fill = fill
        self._after_fill = after_fill
        self._rate = rate_guess
        self._batch = batch
        self.pending = 0
        self._taken = 0
        self._first_ns: int | None = None
        self._last_ns = 0

    def expect(self, rate_guess: float, batch: int) -> None:
        """Size the next top-ups for claims of ``batch`` items at ``rate_guess`` items/s."""
        self._rate, self._batch = rate_guess, batch

    def added(self, count: int) -> None:
        self.pending += count

    def took(self, count: int) -> None:
        now = time.perf_counter_ns()
        if self._first_ns is None:
            self._first_ns = now
        else:
            self._taken += count
        self._last_ns = now
        self.pending -= count

    async def top_up(self, seconds: float) -> None:
        """Fill the queue for a run of ``seconds`` (untimed)."""
        if self._first_ns is not None and self._last_ns > self._first_ns and self._taken:
            self._rate = max(self._rate, self._taken / ((self._last_ns - self._first_ns) / 1e9))
        self._taken, self._first_ns = 0, None
        missing = int(self._rate * seconds * 2) + 2 * self._batch - self.pending
        if missing > 0:
            await self._fill(missing)
            self.pending += missing
        if self._after_fill is not None:
            await self._after_fill()


# ------------------------------------------------------------------------------ the store


@dataclass
class StoreRig:
    """An open store with the executions the cells use."""

    store: StateStore
    append_id: uuid.UUID
    """Appended to by append_event."""
    read_id: uuid.UUID
    """Holds exactly 100 events, read by get_events."""
    queue_id: uuid.UUID
    """Owns the work items."""
    backlog: Backlog | None = None


@contextlib.asynccontextmanager
async def store_rig(url: str, **options: Any) -> AsyncIterator[StoreRig]:
    """Open (and migrate) a store, create its executions, close it afterwards."""
    store = await StateStore.open(url, **options)
    try:
        await store.store_workflow(
            WorkflowDefinition(workflow_id=WORKFLOW_ID, version=WORKFLOW_VERSION, ir={})
        )
        ids: list[uuid.UUID] = []
        for _ in range(3):
            execution = WorkflowExecution(
                workflow_id=WORKFLOW_ID, workflow_version=WORKFLOW_VERSION
            )
            await store.create_execution(execution)
            ids.append(execution.execution_id)
        await store.append_events(ids[1], [KIND] * EVENTS_PER_READ)
        yield StoreRig(store, ids[0], ids[1], ids[2])
    finally:
        await store.close()


def new_item(rig: StoreRig) -> WorkItem:
    return WorkItem(execution_id=rig.queue_id, node_id=NODE, queue_type=QUEUE, payload=WORK_PAYLOAD)


def store_backlog(
    rig: StoreRig, rate_guess: float, batch: int = 1, vacuum: AsyncOp | None = None
) -> Backlog:
    """The store's queue, filled untimed through ``store.run`` (enqueues in one transaction
    per chunk of 1000)."""
    store = rig.store

    async def fill(count: int) -> None:
        while count > 0:
            chunk = min(count, FILL_CHUNK)
            await store.run(
                lambda session, n=chunk: [
                    store.queue.enqueue(session, new_item(rig)) for _ in range(n)
                ]
            )
            count -= chunk

    async def after_fill() -> None:
        if vacuum is not None:
            await vacuum()

    return Backlog(fill, rate_guess, batch, after_fill)


def store_side(rig: StoreRig, operation: str) -> Runner:
    """The store doing ``operation`` through its facade, one call after the other."""
    store = rig.store

    async def append_event() -> None:
        check(await store.append_event(Event(execution_id=rig.append_id, kind=KIND)) > 0, "seq")

    async def get_events() -> None:
        events = await store.get_events(rig.read_id)
        check(len(events) == EVENTS_PER_READ, f"get_events returned {len(events)} events")

    if operation == APPEND:
        return async_loop(append_event)
    if operation == GET_EVENTS:
        return async_loop(get_events)
    if rig.backlog is None:
        raise ValueError(f"{operation} needs the rig's backlog")
    return store_queue_side(store, rig, rig.backlog, operation)


def store_queue_side(store: StateStore, rig: StoreRig, backlog: Backlog, operation: str) -> Runner:
    """The store's queue operations, counted in ``backlog``."""

    async def enqueue() -> None:
        await store.enqueue_work_item(new_item(rig))
        backlog.added(1)

    async def claim_complete() -> None:
        item = await store.claim_work_item(WORKER, [QUEUE])
        if item is None:
            raise RuntimeError("the store's queue ran dry")
        backlog.took(1)
        await store.complete_work_item(item.id, worker_id=WORKER, lease_fence=item.lease_fence)

    async def claim_complete_many() -> None:
        items = await store.claim_work_items(WORKER, [QUEUE], CLAIM_BATCH)
        check(len(items) == CLAIM_BATCH, f"claim_work_items returned {len(items)} items")
        backlog.took(len(items))
        completed = await store.complete_work_items(items)
        check(all(completed), "complete_work_items lost a lease")

    if operation == ENQUEUE:
        return async_loop(enqueue)
    if operation == CLAIM:
        return async_loop(claim_complete, before=backlog.top_up)
    return async_loop(claim_complete_many, items=CLAIM_BATCH, before=backlog.top_up)


# ------------------------------------------------------------------------------ the rows


@dataclass(frozen=True)
class Row:
    """What one peer row compares: the peer's name in the table, its call, a short note."""

    peer: str
    call: str
    note: str = ""


ROWS: dict[str, dict[str, Row]] = {
    ES: {
        APPEND: Row(ES, "insert_events(1 event)", "caller supplies the version"),
        GET_EVENTS: Row(ES, f"select_events() of {EVENTS_PER_READ}", "returns bytes, not decoded"),
    },
    PQ: {
        ENQUEUE: Row(PQ, "put(item)"),
        CLAIM: Row(PQ, "get() + ack(item)", "no lease: unacked items return only on reopen"),
    },
    PGQ: {
        ENQUEUE: Row(PGQ, "Queries.enqueue(1 job)"),
        CLAIM: Row(PGQ, "dequeue(batch 1) + log_jobs", "log_jobs deletes the job, logs a row"),
        CLAIM_MANY: Row(
            PGQ, f"dequeue(batch {CLAIM_BATCH}) + log_jobs", "log_jobs deletes the jobs, logs rows"
        ),
    },
    PROC: {
        ENQUEUE: Row(PROC, "defer_async(1 job)"),
        CLAIM: Row(
            PROC_WORKER, "worker, concurrency 1, no-op task", "drains a backlog; no per-job latency"
        ),
    },
}
"""Every peer's rows, by operation."""
PG_NOTES = {(ES, APPEND): "caller supplies the version; locks the table per insert"}
"""Notes that differ on PostgreSQL."""


async def measure_rows(
    backend: str,
    peer: str,
    rig: StoreRig,
    sides: dict[str, Runner],
    durability: str,
    duration: float,
    out: list[PeerCell],
) -> None:
    """One cell per operation of ``sides``: the store against the peer's runner."""
    for operation, peer_side in sides.items():
        row = ROWS[peer][operation]
        note = PG_NOTES.get((peer, operation), row.note) if backend == "postgresql" else row.note
        timings = await compare(
            backend, operation, row.peer, store_side(rig, operation), peer_side, duration
        )
        out.append(
            PeerCell.measured(backend, operation, row.peer, row.call, timings, durability, note)
        )


# ------------------------------------------------------------------------------ SQLite peers


def synchronous_name(level: int) -> str:
    return SYNCHRONOUS_NAMES.get(level, str(level))


def store_durability(peer_level: int) -> tuple[str, str]:
    """(the store's ``durability`` nearest to the peer's ``synchronous`` level, the cell's
    durability text)."""
    durability = "FULL" if peer_level >= 2 else "NORMAL"
    peer = synchronous_name(peer_level)
    text = peer if peer == durability else f"peer {peer}, store {durability}"
    return durability, text


def sqlite_default_synchronous(folder: Path) -> int:
    """The ``synchronous`` level a new WAL connection gets on this sqlite3 build: what a
    library that sets only ``journal_mode=WAL`` runs at."""
    conn = sqlite3.connect(folder / "probe.db")
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        return int(conn.execute("PRAGMA synchronous").fetchone()[0])
    finally:
        conn.close()


def recorder_sides(recorder: Any) -> dict[str, Runner]:
    """An eventsourcing recorder's append (one event, the next version of one originator) and
    read (all 100 events of another, seeded here), called synchronously."""
    from eventsourcing.persistence import StoredEvent

    def stored(originator: uuid.UUID, version: int) -> Any:
        return StoredEvent(
            originator_id=originator,
            originator_version=version,
            topic=EVENT_TOPIC,
            state=EVENT_BYTES,
        )

    append_to, read_from = uuid.uuid4(), uuid.uuid4()
    recorder.insert_events([stored(read_from, v) for v in range(1, EVENTS_PER_READ + 1)])
    version = 0

    def insert_one() -> None:
        nonlocal version
        version += 1
        recorder.insert_events([stored(append_to, version)])

    def select_all() -> None:
        events = recorder.select_events(read_from)
        check(len(events) == EVENTS_PER_READ, f"select_events returned {len(events)}")

    return {APPEND: sync_loop(insert_one), GET_EVENTS: sync_loop(select_all)}


async def sqlite_eventsourcing(folder: Path, duration: float, out: list[PeerCell]) -> None:
    """The eventsourcing SQLite recorder: insert_events of one event, select_events of 100."""
    from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

    datastore = SQLiteDatastore(str(folder / "eventsourcing.db"))
    try:
        recorder = SQLiteApplicationRecorder(datastore)
        recorder.create_table()
        with datastore.transaction(commit=False) as cursor:
            cursor.execute("PRAGMA synchronous")
            level = int(cursor.fetchone()[0])
        durability, text = store_durability(level)
        sides = recorder_sides(recorder)
        async with store_rig(f"sqlite:///{folder / 'store.db'}", durability=durability) as rig:
            await measure_rows("sqlite", ES, rig, sides, text, duration, out)
    finally:
        datastore.close()


async def sqlite_persist_queue(folder: Path, duration: float, out: list[PeerCell]) -> None:
    """persist-queue's SQLiteAckQueue (JSON serializer): put, and get + ack."""
    import persistqueue
    import persistqueue.serializers.json

    durability, text = store_durability(sqlite_default_synchronous(folder))
    queue = persistqueue.SQLiteAckQueue(
        str(folder / "persist-queue"), serializer=persistqueue.serializers.json
    )
    try:

        async def fill(count: int) -> None:
            for _ in range(count):
                queue.put(WORK_PAYLOAD)

        backlog = Backlog(fill, rate_guess=2_000)

        def put() -> None:
            queue.put(WORK_PAYLOAD)
            backlog.added(1)

        def get_ack() -> None:
            item = queue.get(block=False)
            backlog.took(1)
            check(queue.ack(item) is not None, "ack found no item")

        sides = {ENQUEUE: sync_loop(put), CLAIM: sync_loop(get_ack, before=backlog.top_up)}
        async with store_rig(f"sqlite:///{folder / 'store.db'}", durability=durability) as rig:
            rig.backlog = store_backlog(rig, rate_guess=2_000)
            await measure_rows("sqlite", PQ, rig, sides, text, duration, out)
    finally:
        queue.close()


# ------------------------------------------------------------------------------ PostgreSQL peers


@dataclass
class PgScratch:
    """The scratch database of one peer: its URL and a maintenance connection."""

    url: str
    conn: asyncpg.Connection
    synchronous_commit: str

    def vacuum(self, table: str) -> AsyncOp:
        """An untimed ``VACUUM ANALYZE`` of ``table``, for after a queue top-up."""

        async def vacuum() -> None:
            await self.conn.execute(f"VACUUM ANALYZE {table}")

        return vacuum


@contextlib.asynccontextmanager
async def pg_scratch(admin_url: str, database: str = PG_DATABASE) -> AsyncIterator[PgScratch]:
    """A fresh database (``statestore_bench_peers`` unless named), dropped afterwards."""
    await pg_admin(
        admin_url,
        f"DROP DATABASE IF EXISTS {database} WITH (FORCE)",
        f"CREATE DATABASE {database}",
    )
    url = with_database(admin_url, database)
    try:
        conn = await asyncpg.connect(url)
        try:
            setting = await conn.fetchval("SHOW synchronous_commit")
            yield PgScratch(url, conn, f"synchronous_commit={setting}")
        finally:
            await conn.close()
    finally:
        await pg_admin(admin_url, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


async def pg_eventsourcing(scratch: PgScratch, duration: float, out: list[PeerCell]) -> None:
    """The eventsourcing PostgreSQL recorder (psycopg 3, a pool of one connection)."""
    from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

    parts = urlsplit(scratch.url)
    datastore = PostgresDatastore(
        PG_DATABASE,
        parts.hostname or "127.0.0.1",
        parts.port or 5432,
        unquote(parts.username or "postgres"),
        unquote(parts.password or ""),
    )
    try:
        recorder = PostgresApplicationRecorder(datastore)
        recorder.create_table()
        sides = recorder_sides(recorder)
        async with store_rig(scratch.url) as rig:
            await measure_rows(
                "postgresql", ES, rig, sides, scratch.synchronous_commit, duration, out
            )
    finally:
        datastore.close()


async def pg_pgqueuer(scratch: PgScratch, duration: float, out: list[PeerCell]) -> None:
    """pgqueuer's Queries on one asyncpg connection: enqueue, dequeue + log_jobs."""
    from pgqueuer.queries import EntrypointExecutionParameter, Queries

    conn = await asyncpg.connect(scratch.url)
    try:
        queries = Queries.from_asyncpg_connection(conn)
        await queries.install()
        entrypoints: Any = {QUEUE: EntrypointExecutionParameter(concurrency_limit=0)}
        manager: Any = uuid.uuid4()
        heartbeat = timedelta(seconds=30)

        async def fill(count: int) -> None:
            while count > 0:
                chunk = min(count, FILL_CHUNK)
                await queries.enqueue([QUEUE] * chunk, [PAYLOAD_BYTES] * chunk, [0] * chunk)
                count -= chunk

        backlog = Backlog(fill, rate_guess=2_000, after_fill=scratch.vacuum("pgqueuer"))

        async def enqueue() -> None:
            await queries.enqueue(QUEUE, PAYLOAD_BYTES, 0)
            backlog.added(1)

        def dequeue_log(batch: int) -> AsyncOp:
            async def dequeue_log_jobs() -> None:
                jobs = await queries.dequeue(
                    batch_size=batch,
                    entrypoints=entrypoints,
                    queue_manager_id=manager,
                    global_concurrency_limit=None,
                    heartbeat_timeout=heartbeat,
                )
                check(len(jobs) == batch, f"dequeue returned {len(jobs)} of {batch} jobs")
                backlog.took(len(jobs))
                await queries.log_jobs([(job, "successful", None) for job in jobs])

            return dequeue_log_jobs

        durability = scratch.synchronous_commit
        async with store_rig(scratch.url) as rig:
            rig.backlog = store_backlog(rig, 2_000, vacuum=scratch.vacuum("work_items"))
            sides = {
                ENQUEUE: async_loop(enqueue),
                CLAIM: async_loop(dequeue_log(1), before=backlog.top_up),
            }
            await measure_rows("postgresql", PGQ, rig, sides, durability, duration, out)
            # The batch cell: the same queues, topped up for batches from now on.
            for queue in (rig.backlog, backlog):
                queue.expect(rate_guess=30_000, batch=CLAIM_BATCH)
            many = async_loop(dequeue_log(CLAIM_BATCH), items=CLAIM_BATCH, before=backlog.top_up)
            await measure_rows(
                "postgresql", PGQ, rig, {CLAIM_MANY: many}, durability, duration, out
            )
        await queries.uninstall()
    finally:
        await conn.close()


async def pg_procrastinate(scratch: PgScratch, duration: float, out: list[PeerCell]) -> None:
    """procrastinate (psycopg 3 pool): defer_async of one job; a worker draining no-op jobs."""
    import procrastinate

    logging.getLogger("procrastinate").setLevel(logging.WARNING)
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=scratch.url))

    @app.task(name="deferred", queue=f"{QUEUE}-deferred")
    async def deferred(**payload: Any) -> None:
        """Only deferred (the defer cell's jobs are never run)."""

    @app.task(name="noop", queue=QUEUE)
    async def noop(**payload: Any) -> None:
        """What the worker cell runs: nothing."""

    async def defer() -> None:
        await deferred.defer_async(**WORK_PAYLOAD)

    rate = 500.0

    async def drain(seconds: float, into: Timing) -> None:
        """Defer a backlog of about ``seconds`` of work (untimed), then time a worker
        draining it."""
        nonlocal rate
        count = max(20, int(rate * seconds))
        for start in range(0, count, FILL_CHUNK):
            await noop.batch_defer_async(*[WORK_PAYLOAD] * min(FILL_CHUNK, count - start))
        began = time.perf_counter_ns()
        await app.run_worker_async(
            queues=[QUEUE],
            concurrency=1,
            wait=False,
            listen_notify=False,
            install_signal_handlers=False,
            delete_jobs="never",
        )
        elapsed = time.perf_counter_ns() - began
        rate = count / (elapsed / 1e9)
        into.calls += 1
        into.items += count
        into.elapsed_ns += elapsed

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        async with store_rig(scratch.url) as rig:
            rig.backlog = store_backlog(rig, 2_000, vacuum=scratch.vacuum("work_items"))
            sides = {ENQUEUE: async_loop(defer), CLAIM: Contender("", runner=drain)}
            await measure_rows(
                "postgresql", PROC, rig, sides, scratch.synchronous_commit, duration, out
            )


# ------------------------------------------------------------------------------ the run


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def installed(peer: str, needs: str) -> bool:
    """Whether the packages ``peer`` needs are importable; if not, say so."""
    missing = [dist for module, dist in NEEDS[needs] if not importable(module)]
    if missing:
        progress(f"peers: {', '.join(missing)} not installed: {INSTALL_HINT} ({peer} skipped)")
    return not missing


async def guarded(
    backend: str, peer: str, out: list[PeerCell], body: Callable[[], Awaitable[None]]
) -> None:
    """Run one peer's cells; record those it could not finish as failed, with the reason,
    instead of crashing the run."""
    before = len(out)
    try:
        await body()
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        progress(f"peers: {peer} on {backend} FAILED: {reason}")
        done = {cell.operation for cell in out[before:]}
        for operation, row in ROWS[peer].items():
            if operation not in done:
                out.append(PeerCell.failed(backend, operation, row.peer, row.call, reason))


SqlitePeer = Callable[[Path, float, list[PeerCell]], Awaitable[None]]
PgPeer = Callable[[PgScratch, float, list[PeerCell]], Awaitable[None]]
SQLITE_PEERS: tuple[tuple[str, str, SqlitePeer], ...] = (
    (ES, "eventsourcing sqlite", sqlite_eventsourcing),
    (PQ, "persist-queue", sqlite_persist_queue),
)
PG_PEERS: tuple[tuple[str, str, PgPeer], ...] = (
    (ES, "eventsourcing postgresql", pg_eventsourcing),
    (PGQ, "pgqueuer", pg_pgqueuer),
    (PROC, "procrastinate", pg_procrastinate),
)


async def bench_peers(
    duration: float, pg_admin_url: str = DEFAULT_PG_ADMIN_URL, *, only: str | None = None
) -> list[PeerCell]:
    """Measure every installed peer beside the store, ``duration`` seconds per side and cell.

    ``only`` is None (both backends), "sqlite" or "postgresql". A peer whose packages are not
    installed is skipped with a printed note, and so are the PostgreSQL peers when the server
    is unreachable; a peer that fails yields cells with ``error`` set. None of these raise."""
    if only not in (None, "sqlite", "postgresql"):
        raise ValueError(f'only must be None, "sqlite" or "postgresql", not {only!r}')
    out: list[PeerCell] = []
    progress(f"peers: {duration:g} s per side and cell")
    if only in (None, "sqlite"):
        with tempfile.TemporaryDirectory(prefix="statestore-bench-peers-") as root:
            for number, (peer, needs, sqlite_bench) in enumerate(SQLITE_PEERS):
                if not installed(peer, needs):
                    continue
                folder = Path(root) / str(number)
                folder.mkdir()
                await guarded(
                    "sqlite", peer, out, lambda run=sqlite_bench, f=folder: run(f, duration, out)
                )
    if only in (None, "postgresql"):
        for peer, needs, pg_bench in PG_PEERS:
            if not installed(peer, needs):
                continue
            try:
                async with pg_scratch(pg_admin_url) as scratch:
                    await guarded(
                        "postgresql",
                        peer,
                        out,
                        lambda run=pg_bench, s=scratch: run(s, duration, out),
                    )
            except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
                progress(
                    f"peers: PostgreSQL at {urlsplit(pg_admin_url).netloc}: {exc}"
                    " (the remaining PostgreSQL peers skipped)"
                )
                break
    return out


# ------------------------------------------------------------------------------ output

HEADER = (
    "backend",
    "operation",
    "peer",
    "peer call",
    "peer ops/s",
    "peer p50 µs",
    "peer p99 µs",
    "store ops/s",
    "store p50 µs",
    "store p99 µs",
    "ratio",
    "durability",
    "note",
)
NUMERIC = frozenset(range(4, 11))


def fmt_rate(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}"


def fmt_us(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def escape(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def row(cell: PeerCell) -> tuple[str, ...]:
    if cell.error is not None:
        failed = ("FAILED",) * 6
        return (
            cell.backend,
            cell.operation,
            cell.peer,
            f"`{cell.peer_call}`",
            *failed,
            "n/a",
            "-",
            escape(cell.error),
        )
    return (
        cell.backend,
        cell.operation,
        cell.peer,
        f"`{cell.peer_call}`",
        fmt_rate(cell.peer_ops_s),
        fmt_us(cell.peer_p50_us),
        fmt_us(cell.peer_p99_us),
        fmt_rate(cell.store_ops_s),
        fmt_us(cell.store_p50_us),
        fmt_us(cell.store_p99_us),
        fmt_ratio(cell.ratio),
        cell.durability,
        escape(cell.note) or "-",
    )


def ordered(cells: Sequence[PeerCell]) -> list[PeerCell]:
    """Backends in the order they ran, then operations as in the main table."""
    backends = list(dict.fromkeys(cell.backend for cell in cells))
    return sorted(
        cells, key=lambda c: (backends.index(c.backend), OPERATION_ORDER.index(c.operation))
    )


def table(cells: Sequence[PeerCell]) -> str:
    rows = [HEADER, *(row(cell) for cell in ordered(cells))]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]

    def line(values: Sequence[str]) -> str:
        padded = [
            value.rjust(width) if i in NUMERIC else value.ljust(width)
            for i, (value, width) in enumerate(zip(values, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            "-" * (width + 1) + ":" if i in NUMERIC else "-" * (width + 2)
            for i, width in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([line(rows[0]), rule, *(line(r) for r in rows[1:])])


def legend(cells: Sequence[PeerCell]) -> str:
    """What the table measures, then what each peer present in ``cells`` does."""
    peers = {cell.peer for cell in cells}
    sqlite = sorted({c.durability for c in cells if c.backend == "sqlite" and c.durability})
    postgres = sorted({c.durability for c in cells if c.backend == "postgresql" and c.durability})
    method = [
        f"ratio = store ops/s / peer ops/s, both measured in the same cell (above 1: the store is"
        f" ahead): a warm-up, then {ROUNDS} rounds alternating store and peer; ops/s over the"
        f" timed wall time, p50/p99 per call. The store runs through its public facade; events"
        f" are {len(EVENT_BYTES)} B of JSON and work-item payloads {len(PAYLOAD_BYTES)} B on"
        f" both sides; claim cells draw from a queue topped up, untimed, before every run."
    ]
    if sqlite:
        method.append(
            "SQLite: fresh files for each peer and its store. The SQLite peers open WAL and leave"
            f" `synchronous` at sqlite's default ({', '.join(sqlite)} here), so the store was"
            " opened at the same setting (`durability` column; FULL: an fsync per commit). They"
            " are synchronous libraries, called directly on the event-loop thread: their best"
            " case, since an async application would block its loop or add a thread hop."
        )
    if postgres:
        method.append(
            f"PostgreSQL: each peer and its store share a scratch database ({PG_DATABASE},"
            f" dropped after), on one server ({', '.join(postgres)}); queue tables, the store's"
            " and the peer's, are vacuumed after every top-up."
        )
    bullets = []
    if ES in peers:
        bullets.append(
            "eventsourcing recorder (`SQLiteApplicationRecorder` / `PostgresApplicationRecorder`,"
            " the layer under its `Application`): `insert_events` writes one `StoredEvent` in a"
            " transaction, the caller supplying the next version (the primary key rejects a"
            " duplicate) where `append_event` assigns the sequence; on PostgreSQL it also locks"
            " the table (EXCLUSIVE) per insert to number notifications. `select_events` returns"
            " 100 `StoredEvent`s with bytes as state where `get_events` returns 100 validated"
            " `Event` models: (de)serialisation and validation are inside the store's timed call"
            " only."
        )
    if PQ in peers:
        bullets.append(
            "persist-queue `SQLiteAckQueue` (JSON serializer): `put` commits one row; `get` marks"
            " the next row unacked and `ack` marks it acked, a commit each, like claim +"
            " complete. No lease: an unacked item returns to the queue only when a queue is"
            " reopened on the file (`auto_resume`)."
        )
    if PGQ in peers:
        bullets.append(
            "pgqueuer (`Queries` on one asyncpg connection): `enqueue` inserts one job (a trigger"
            " NOTIFYs); `dequeue` marks jobs picked (one whose heartbeat is older than"
            " `heartbeat_timeout`, 30 s here, is picked again: its lease), `log_jobs(...,"
            ' "successful")` deletes them and writes log rows. x100: 100 jobs per dequeue and'
            f" log_jobs, against `claim_work_items(..., {CLAIM_BATCH})` + `complete_work_items`;"
            " ops/s counts items."
        )
    if PROC in peers or PROC_WORKER in peers:
        bullets.append(
            "procrastinate (psycopg 3 pool): `defer_async` inserts one job whose arguments are"
            " the payload. Worker: before each round a backlog of no-op jobs is deferred"
            " (untimed), then `run_worker_async(concurrency=1, wait=False, listen_notify=False)`"
            " drains it, per job a fetch, the task and a finish; ops/s = jobs / drain time,"
            " worker start and stop included; no per-job latency. Store column: claim +"
            " complete, one item at a time."
        )
    bullets.append(
        "Not measured: DBOS. Its unit is a durable workflow step, not one of these operations,"
        " and it runs as a process-wide singleton with threads of its own (a process per"
        " backend)."
    )
    versions = peer_versions()
    if versions:
        bullets.append(f"Versions: {versions}.")
    return " ".join(method) + "\n\n" + "\n".join(f"- {bullet}" for bullet in bullets)


def peer_versions() -> str:
    """The installed versions of the peer packages, e.g. "eventsourcing 9.5.6, ..."."""
    found = []
    for dist in PEER_DISTRIBUTIONS:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{dist} {importlib.metadata.version(dist)}")
    return ", ".join(found)


def peers_markdown(cells: list[PeerCell]) -> str:
    """The peers table (one row per cell) and a legend of what each row compares."""
    if not cells:
        return (
            "No peer library was measured (the bench extra is not installed, or the peers"
            f" were skipped): `{INSTALL_HINT}`, then `bench/run.py --peers`."
        )
    return f"{table(cells)}\n\n{legend(cells)}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the peers alone: ``python bench/peers.py [--duration S] [--only BACKEND]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=1.0, help="seconds per side and cell")
    parser.add_argument("--only", choices=("sqlite", "postgresql"))
    parser.add_argument("--pg-url", default=DEFAULT_PG_ADMIN_URL)
    args = parser.parse_args(argv)
    cells = asyncio.run(bench_peers(args.duration, args.pg_url, only=args.only))
    print(peers_markdown(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
