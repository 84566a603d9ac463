"""Atomic turns benchmark: ``commit_turn`` against its own statements run raw, an engine
on turns against the same engine on today's separate calls and against DBOS, and the
PostgreSQL round trips of one turn, all in one run.

1. **commit_turn** (1 caller; 16 concurrent callers on SQLite, 8 workers on PostgreSQL).
   ``store``: ``StateStore.commit_turn`` of a claimed item with one event (~200 B of JSON),
   a state merge patch and one successor item. ``raw``: the same transaction through the
   bare driver, its statements the store's own (bench/statements.py ``compiled_turn``, a
   test checks they are what the store sends): lock the item's execution (reading its
   state), settle the item with the fenced ``UPDATE``, reserve the sequence and write the
   merged state in one ``UPDATE``, insert the event, insert the successor, commit.
   SQLite: stdlib ``sqlite3`` behind one thread hop with group commit (bench/sqlite_raw.py's
   ``gc`` layer: up to 64 waiting
   calls in one ``BEGIN IMMEDIATE … COMMIT``, a SAVEPOINT each; one caller: one transaction
   per call). PostgreSQL: ``asyncpg``, a connection per worker. The claimed items are
   inserted untimed before every timed run; only the turn is timed.
2. **Engine.** A workflow of five nodes per execution, run end to end by 4 workers:
   ``turns``, each step one claim and ONE ``commit_turn``; ``separate calls``, the same
   engine on the calls an engine had before turns (claim, renew, append events, patch the
   state, complete, enqueue: six transactions per step); and ``DBOS`` (a workflow of five
   steps), in a subprocess per backend since DBOS is a process-wide singleton.
3. **Round trips.** The client messages that wait for a reply (extended-protocol Sync and
   simple Query), counted by a relay between the client and PostgreSQL, for one
   ``commit_turn`` and for the raw transaction; and the statements of one turn (a
   ``before_cursor_execute`` listener on ``store.engine.sync_engine``, a separate run).

``--write`` puts the section into docs/benchmarks.md between the ``<!-- turns -->``
markers (bench/run.py and bench/scale.py keep it when they rewrite the document).

Usage::

    .venv/bin/python bench/turns.py [--duration 1.0] [--executions 300] [--quick]
                                    [--only sqlite|postgresql] [--no-dbos]
                                    [--write [docs/benchmarks.md]] [--pg-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import sqlite3
import statistics
import struct
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import sqlalchemy
from cells import KIND_JSON, KIND_TYPE, WORK_PAYLOAD, item_row
from common import (
    KIND,
    TURNS_BEGIN,
    TURNS_END,
    check,
    code_version,
    command_line,
    cpu_model,
    dumps,
    fmt_ratio,
    nproc,
    pg_admin,
    progress,
    with_database,
    write_document,
)
from harness import (
    ROUNDS,
    AsyncOp,
    BenchError,
    Cell,
    Contender,
    WorkQueue,
    fmt_rate,
    fmt_us,
    measure,
)
from render import table
from run import DEFAULT_PG_ADMIN_URL
from sqlalchemy import event
from sqlite_raw import GroupCommitThread, in_transaction, sqlite_connect, sqlite_now, sqlite_time
from statements import RawStatement, compiled, compiled_turn, turn_catalogue

from statestore import (
    NodeCompleted,
    NodeScheduled,
    Snapshot,
    StateStore,
    WorkflowCompleted,
    WorkflowExecution,
    WorkflowStarted,
    WorkflowStatus,
    WorkItem,
)

REPO = Path(__file__).resolve().parent.parent
BACKENDS = ("sqlite", "postgresql")
PG_DATABASE = "statestore_bench_turns"
PG_DBOS_DATABASE = "statestore_bench_turns_dbos"
DEFAULT_DURATION = 1.0
QUICK_DURATION = 0.2
DEFAULT_EXECUTIONS = 300
QUICK_EXECUTIONS = 8
ENGINE_ROUNDS = 2
"""Rounds per store engine, alternating the two (drift on a noisy machine hits both)."""
QUICK_ENGINE_ROUNDS = 1
WARMUP_EXECUTIONS = 4
"""Executions each engine runs untimed before its timed ones (connections, caches)."""
SQLITE_CALLERS = 16
PG_WORKERS = 8
ENGINE_WORKERS = 4
TURN_EXECUTIONS = 64
"""Executions the commit_turn cells settle items of (each caller its own share)."""
TURN_RATE_GUESS = 5_000
"""Turns/s the first untimed top-up of claimed items assumes (then the fastest rate seen)."""
TARGET_TURN = 0.6
TARGET_VS_SEPARATE = 3.0
TARGET_VS_DBOS = 10.0
GIVE_UP_AFTER = 300.0
"""Seconds an engine run may take before the bench calls it stuck."""

RAW_STATEMENTS = len(turn_catalogue())
"""The statements of the raw turn (and of the store's, between BEGIN and COMMIT)."""
TURN_QUEUE = "turn"
NEXT_QUEUE = "turn-next"
ENGINE_QUEUE = "engine"
NODES = ("a", "b", "c", "d", "e")
"""The workflow: a chain a -> b -> c -> d -> e (see ENGINE_NOTE)."""
WORKFLOW_ID = "bench-dag"
WORKFLOW_VERSION = "1"
LEASE = timedelta(hours=1)
"""Lease of the items inserted already claimed for the commit_turn cells."""
DBOS_MARK = "DBOS-RESULT "


# ------------------------------------------------------------------------------ 1. commit_turn


async def _no_counts(_queue_type: str) -> list[tuple[str, str | None, int]]:
    return []  # the claimed items are not checked by status afterwards


class ClaimedItems:
    """Items already claimed by each caller of one contender, inserted untimed before every
    timed run; how many is the harness's queue rule (bench/harness.py :class:`WorkQueue`,
    one per caller: twice what the run can settle at the fastest rate seen so far, or a
    first guess), so a run never runs out. ``take`` hands a caller its next (item id,
    execution id)."""

    def __init__(
        self,
        label: str,
        executions: Sequence[Sequence[uuid.UUID]],
        insert: Callable[[str, uuid.UUID, int], Awaitable[list[uuid.UUID]]],
    ) -> None:
        callers = len(executions)
        self.workers = [f"{label}-{caller}" for caller in range(callers)]
        self._insert = insert
        self._pools: list[collections.deque[tuple[uuid.UUID, uuid.UUID]]] = [
            collections.deque() for _ in range(callers)
        ]
        self._queues = [
            WorkQueue(
                TURN_QUEUE,
                partial(self._fill, caller, own),
                _no_counts,
                TURN_RATE_GUESS / callers,
                20,
            )
            for caller, own in enumerate(executions)
        ]

    async def _fill(
        self, caller: int, own: Sequence[uuid.UUID], _queue_type: str, missing: int
    ) -> None:
        # Spread the new items over the caller's executions, a bulk insert per execution.
        share, extra = divmod(missing, len(own))
        fresh: list[tuple[uuid.UUID, uuid.UUID]] = []
        for index, execution_id in enumerate(own):
            if count := share + (1 if index < extra else 0):
                ids = await self._insert(self.workers[caller], execution_id, count)
                fresh += [(item_id, execution_id) for item_id in ids]
        # Interleave executions, so consecutive turns of a caller touch different rows.
        fresh.sort(key=lambda pair: pair[0].int)
        self._pools[caller].extend(fresh)

    async def top_up(self, seconds: float) -> None:
        for queue in self._queues:
            await queue.top_up(seconds)

    def take(self, caller: int) -> tuple[uuid.UUID, uuid.UUID]:
        self._queues[caller].took(1)
        return self._pools[caller].popleft()


def claimed_row(
    item_id: Any, execution_id: Any, worker: str, now: Any, expires: Any
) -> dict[str, Any]:
    """Every column of an item claimed by ``worker`` (fence 1), values in the driver's form."""
    claimed = {"status": "claimed", "attempt": 1, "worker_id": worker, "lease_fence": 1}
    return {
        **item_row(item_id, execution_id, TURN_QUEUE, now),
        **claimed,
        "lease_expires_at": expires,
    }


_steps = collections.Counter[str]()


def state_patch(caller: str) -> dict[str, Any]:
    """A merge patch of constant size (the state does not grow over a run)."""
    _steps[caller] += 1
    return {"summarise": {"done": True, "step": _steps[caller], "tokens": 412}}


async def store_turn(
    store: StateStore, item_id: uuid.UUID, execution_id: uuid.UUID, worker: str, fence: int = 1
) -> int:
    """The store's turn: settle the item, one event, a state patch, one successor; the
    event's sequence."""
    result = await store.commit_turn(
        item_id,
        worker_id=worker,
        lease_fence=fence,
        events=[KIND],
        state_patch=state_patch(worker),
        enqueue=[
            WorkItem(
                execution_id=execution_id,
                node_id="next",
                queue_type=NEXT_QUEUE,
                payload=WORK_PAYLOAD,
            )
        ],
    )
    check(
        len(result.sequences) == 1 and len(result.enqueued) == 1,
        f"commit_turn wrote {result.sequences} / {result.enqueued}",
    )
    return result.sequences[0]


Steps = Generator[tuple[str, tuple[Any, ...]], Sequence[Any], int]
"""A raw turn: yields each statement's SQL and arguments, is sent its rows, returns the
event's sequence."""


class RawTurn:
    """The raw contenders' turn: the store's own statements of ``commit_turn``
    (bench/statements.py :func:`compiled_turn`), in the store's order, with the values in
    the driver's form (``to_id``: a UUID as the driver takes it; ``now``: the current time
    so). :meth:`steps` is the turn once for both drivers, each running it its own way
    (:func:`sqlite_run`, :func:`pg_run`) inside its transaction."""

    def __init__(
        self,
        sql: dict[str, RawStatement],
        to_id: Callable[[uuid.UUID], Any],
        now: Callable[[], Any],
    ) -> None:
        self.sql = {name: statement.sql for name, statement in sql.items()}
        self.to_id, self.now = to_id, now
        lock = sql["lock"]
        self._lock = tuple(lock.column(c) for c in ("execution_id", "tenant_id", "current_state"))
        self._settle = sql["settle"].binder("p_id0", "p_worker0", "p_fence0", "p_now", "p_tenant")
        self._advance = sql["advance"].binder(
            "p_state", "p_now", "p_count", "p_execution_id", "p_tenant"
        )
        self._event = sql["insert_event"].binder(
            "id", "execution_id", "sequence", "event_type", "kind", "created_at", "tenant_id"
        )
        # The successor's columns that do not change from turn to turn, bound once.
        fixed = {**item_row(None, None, NEXT_QUEUE, None), "node_id": "next"}
        enqueue = sql["enqueue"]
        successor = replace(enqueue, defaults={**enqueue.defaults, **fixed})
        self._successor = successor.binder(
            "id", "execution_id", "available_at", "created_at", "updated_at", "p_tenant"
        )
        self._kind = dumps(KIND_JSON)

    def steps(
        self, item_id: uuid.UUID, worker: str, patch: dict[str, Any], fence: int = 1
    ) -> Steps:
        sql, now = self.sql, self.now()
        rows = yield sql["lock"], (self.to_id(item_id),)
        check(len(rows) == 1, "raw: item missing")
        execution_id, tenant, current = (rows[0][i] for i in self._lock)
        settled = yield sql["settle"], self._settle(self.to_id(item_id), worker, fence, now, tenant)
        check(len(settled) == 1, "raw: lease lost")
        state = json.loads(current)
        state.update(patch)
        args = self._advance(dumps(state), now, 1, execution_id, tenant)
        ((sequence,),) = yield sql["advance"], args
        event_id = self.to_id(uuid.uuid4())
        args = self._event(event_id, execution_id, sequence, KIND_TYPE, self._kind, now, tenant)
        yield sql["insert_event"], args
        args = self._successor(self.to_id(uuid.uuid4()), execution_id, now, now, now, tenant)
        enqueued = yield sql["enqueue"], args
        check(len(enqueued) == 1, "raw: successor refused")
        return int(sequence)


def sqlite_run(conn: sqlite3.Connection, steps: Steps) -> int:
    """A raw turn on ``sqlite3``, in the caller's transaction."""
    try:
        sql, args = next(steps)
        while True:
            sql, args = steps.send(conn.execute(sql, args).fetchall())
    except StopIteration as done:
        return int(done.value)


async def pg_run(conn: asyncpg.Connection, steps: Steps) -> int:
    """A raw turn on ``asyncpg``: BEGIN, its statements (prepared, cached), COMMIT."""
    async with conn.transaction():
        try:
            sql, args = next(steps)
            while True:
                sql, args = steps.send(await conn.fetch(sql, *args))
        except StopIteration as done:
            return int(done.value)


async def turn_executions(store: StateStore) -> list[uuid.UUID]:
    ids = []
    for _ in range(TURN_EXECUTIONS):
        execution = WorkflowExecution(
            workflow_id=WORKFLOW_ID, workflow_version=WORKFLOW_VERSION, status="running"
        )
        await store.create_execution(execution)
        ids.append(execution.execution_id)
    return ids


RawCommit = Callable[[int, uuid.UUID, uuid.UUID, str], Awaitable[int]]
"""A contender's turn: (caller, item id, execution id, worker) to the event's sequence."""


async def turn_cells(
    backend: str,
    store: StateStore,
    insert: Callable[[str, uuid.UUID, int], Awaitable[list[uuid.UUID]]],
    raw: RawCommit,
    duration: float,
) -> list[Cell]:
    """A backend's commit_turn cells, one caller and many: the store and raw each settling
    items claimed for them (``insert``: add claimed items, untimed), each caller those of
    its own executions, so that concurrent turns never wait on one another's row."""
    executions = await turn_executions(store)

    def via_store(_caller: int, item_id: uuid.UUID, execution_id: uuid.UUID, worker: str) -> Any:
        return store_turn(store, item_id, execution_id, worker)

    def contender(label: str, callers: int, commit: RawCommit) -> Contender:
        items = ClaimedItems(
            f"{label}{callers}", [executions[n::callers] for n in range(callers)], insert
        )

        def caller(number: int) -> AsyncOp:
            worker = items.workers[number]

            async def commit_turn() -> None:
                item_id, execution_id = items.take(number)
                check(await commit(number, item_id, execution_id, worker) > 0, "no sequence")

            return commit_turn

        return Contender(label, callers=[caller(n) for n in range(callers)], prepare=items.top_up)

    cells = []
    for callers in (1, SQLITE_CALLERS if backend == "sqlite" else PG_WORKERS):
        contenders = [contender("store", callers, via_store), contender("raw", callers, raw)]
        cells.append(await measure(backend, "commit_turn", contenders, duration, callers))
    return cells


async def sqlite_turn_cells(path: Path, store: StateStore, duration: float) -> list[Cell]:
    """raw: the turn on ``sqlite3`` through the group-commit thread (its own connection);
    the claimed items inserted on another."""
    dialect = store.engine.dialect
    turn = RawTurn(compiled_turn(dialect), lambda value: value.hex, sqlite_now)
    item = compiled(dialect)["insert_item"]
    fill_conn = sqlite_connect(path)
    gc_conn = sqlite_connect(path)
    gc = GroupCommitThread("bench-turns-gc", gc_conn)
    try:

        async def insert(worker: str, execution_id: uuid.UUID, count: int) -> list[uuid.UUID]:
            now = datetime.now(UTC)
            ids = [uuid.uuid4() for _ in range(count)]
            at, expires = sqlite_time(now), sqlite_time(now + LEASE)
            rows = [
                item.args(claimed_row(i.hex, execution_id.hex, worker, at, expires)) for i in ids
            ]
            in_transaction(fill_conn, lambda: fill_conn.executemany(item.sql, rows))
            return ids

        def raw(_caller: int, item_id: uuid.UUID, _execution: uuid.UUID, worker: str) -> Any:
            steps = turn.steps(item_id, worker, state_patch(worker))
            return gc.run(partial(sqlite_run, gc_conn, steps))

        return await turn_cells("sqlite", store, insert, raw, duration)
    finally:
        await gc.close()
        gc_conn.close()
        fill_conn.close()


def pg_raw_turn(store: StateStore) -> RawTurn:
    """The raw turn for ``asyncpg``: UUIDs and aware datetimes as they are."""
    return RawTurn(
        compiled_turn(store.engine.dialect), lambda value: value, lambda: datetime.now(UTC)
    )


async def pg_turn_cells(url: str, store: StateStore, duration: float) -> list[Cell]:
    """raw: the turn on ``asyncpg``, a connection per worker; the claimed items copied in
    on another."""
    turn = pg_raw_turn(store)
    item = compiled(store.engine.dialect)["insert_item"]
    async with contextlib.AsyncExitStack() as stack:
        conns: list[asyncpg.Connection] = []
        for _ in range(PG_WORKERS + 1):
            conns.append(await asyncpg.connect(url))
            stack.push_async_callback(conns[-1].close)
        fill_conn, workers = conns[0], conns[1:]

        async def insert(worker: str, execution_id: uuid.UUID, count: int) -> list[uuid.UUID]:
            now = datetime.now(UTC)
            ids = [uuid.uuid4() for _ in range(count)]
            records = [
                item.args(claimed_row(i, execution_id, worker, now, now + LEASE)) for i in ids
            ]
            columns = list(item.names)
            await fill_conn.copy_records_to_table("work_items", records=records, columns=columns)
            return ids

        def raw(caller: int, item_id: uuid.UUID, _execution: uuid.UUID, worker: str) -> Any:
            return pg_run(workers[caller], turn.steps(item_id, worker, state_patch(worker)))

        return await turn_cells("postgresql", store, insert, raw, duration)


# ------------------------------------------------------------------------------ 2. engine

TURNS_ENGINE = "turns"
SEPARATE_ENGINE = "separate calls"
DBOS_ENGINE = "DBOS"


@dataclass
class EngineRun:
    """What one engine did on one backend, over its timed rounds."""

    backend: str
    engine: str
    executions: int = 0
    steps: int = 0
    seconds: float = 0.0
    calls: int = 0
    """Store calls the engine made (starts included), each one transaction; for DBOS the
    commits on its system database (all its threads) over the timed run."""
    statements: int = 0
    """DBOS only: the statements it sent over the timed run."""
    note: str = ""
    error: str | None = None

    @property
    def steps_s(self) -> float:
        return self.steps / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and self.steps > 0


class Engine:
    """A workflow engine on the store: a starter task starts the executions while
    ENGINE_WORKERS worker tasks claim items and run their nodes, until every execution is
    completed. ``calls`` counts the store calls it made."""

    label = ""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.calls = 0
        self.steps = 0
        self.completed = 0
        self._target = 0
        self._done = asyncio.Event()

    async def start(self, execution: WorkflowExecution) -> None:
        raise NotImplementedError

    async def step(self, worker: str, item: WorkItem) -> None:
        raise NotImplementedError

    def finished_one(self) -> None:
        self.completed += 1
        if self.completed >= self._target:
            self._done.set()

    async def run(self, executions: int) -> float:
        """Start ``executions`` executions and run them to completion; the seconds taken."""
        self._target = self.completed + executions
        self._done.clear()
        started = time.perf_counter()

        async def starter() -> None:
            for number in range(executions):
                await self.start(
                    WorkflowExecution(
                        workflow_id=WORKFLOW_ID,
                        workflow_version=WORKFLOW_VERSION,
                        status="running",
                        initial_input={"n": number},
                    )
                )

        async def worker(name: str) -> None:
            while not self._done.is_set():
                item = await self.store.claim_work_item(name, [ENGINE_QUEUE])
                self.calls += 1
                if item is None:
                    await asyncio.sleep(0.002)
                    continue
                await self.step(name, item)
                self.steps += 1

        tasks = [asyncio.create_task(starter())]
        tasks += [asyncio.create_task(worker(f"w{n}")) for n in range(ENGINE_WORKERS)]
        try:
            await asyncio.wait_for(self._done.wait(), timeout=GIVE_UP_AFTER)
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return time.perf_counter() - started


def node_events(node: str, output: dict[str, Any]) -> list[Any]:
    """The events of a node's step: the node completed, then the next one scheduled (or
    the workflow completed). Both engines write exactly these."""
    index = NODES.index(node)
    done = NodeCompleted(node_id=node, output=output, state_patch={node: output}, duration_ms=1)
    if index + 1 < len(NODES):
        return [done, NodeScheduled(node_id=NODES[index + 1], queue_type=ENGINE_QUEUE)]
    return [done, WorkflowCompleted(final_state={})]


def node_work(item: WorkItem) -> dict[str, Any]:
    """The node's work (none: the bench measures what the engine costs around it)."""
    return {"node": item.node_id, "attempt": item.attempt, "tokens": 412}


def first_events(execution: WorkflowExecution) -> list[Any]:
    return [
        WorkflowStarted(
            workflow_id=WORKFLOW_ID,
            workflow_version=WORKFLOW_VERSION,
            initial_input=execution.initial_input,
        ),
        NodeScheduled(node_id=NODES[0], queue_type=ENGINE_QUEUE),
    ]


def engine_item(execution_id: uuid.UUID, node: str) -> WorkItem:
    return WorkItem(
        execution_id=execution_id, node_id=node, queue_type=ENGINE_QUEUE, payload={"node": node}
    )


class TurnsEngine(Engine):
    """Each step: claim, the node's work under ``heartbeat``, ONE ``commit_turn`` (the
    item settled, the events, the state patch, the next item; on the last node also the
    status and the snapshot). Each start: ONE ``start_execution``."""

    label = TURNS_ENGINE

    async def start(self, execution: WorkflowExecution) -> None:
        await self.store.start_execution(
            execution,
            events=first_events(execution),
            enqueue=[engine_item(execution.execution_id, NODES[0])],
        )
        self.calls += 1

    async def step(self, worker: str, item: WorkItem) -> None:
        store = self.store
        async with store.heartbeat(item, worker_id=worker):
            output = node_work(item)
        index = NODES.index(item.node_id)
        last = index + 1 == len(NODES)
        await store.commit_turn(
            item.id,
            worker_id=worker,
            lease_fence=item.lease_fence,
            events=node_events(item.node_id, output),
            state_patch={item.node_id: output},
            enqueue=[] if last else [engine_item(item.execution_id, NODES[index + 1])],
            status=WorkflowStatus.COMPLETED if last else None,
            snapshot=last,
        )
        self.calls += 1
        if last:
            self.finished_one()


class SeparateCallsEngine(Engine):
    """The same engine on the calls of the store before turns (the demo at commit 278d6f7):
    each step claims, renews the lease, appends the events, patches the state, completes the
    item and enqueues the next: six transactions. The last node instead reads the execution
    and its last sequence, writes the snapshot and moves the status. Each start: create the
    execution, append its first events, enqueue the first item."""

    label = SEPARATE_ENGINE

    async def start(self, execution: WorkflowExecution) -> None:
        store = self.store
        await store.create_execution(execution)
        await store.append_events(execution.execution_id, first_events(execution))
        await store.enqueue_work_item(engine_item(execution.execution_id, NODES[0]))
        self.calls += 3

    async def step(self, worker: str, item: WorkItem) -> None:
        store, eid = self.store, item.execution_id
        await store.renew_lease(item.id, worker, lease_fence=item.lease_fence)
        output = node_work(item)
        await store.append_events(eid, node_events(item.node_id, output))
        await store.patch_append_array(eid, "completed_nodes", item.node_id)
        await store.complete_work_item(item.id, worker_id=worker, lease_fence=item.lease_fence)
        self.calls += 4
        index = NODES.index(item.node_id)
        if index + 1 < len(NODES):
            await store.enqueue_work_item(engine_item(eid, NODES[index + 1]))
            self.calls += 1
            return
        execution = await store.get_execution(eid)
        latest = await store.latest_sequence(eid)
        final = execution.current_state if execution is not None else {}
        await store.write_snapshot(Snapshot(execution_id=eid, at_sequence=latest, state=final))
        await store.update_execution_status(
            eid, WorkflowStatus.COMPLETED, expected=WorkflowStatus.RUNNING
        )
        self.calls += 4
        self.finished_one()


async def engine_runs(
    backend: str, store: StateStore, executions: int, rounds: int
) -> list[EngineRun]:
    """Both store engines on one store, in alternating rounds after an untimed warm-up;
    then the check that every execution completed and no item was left behind."""
    engines: list[Engine] = [TurnsEngine(store), SeparateCallsEngine(store)]
    runs = {engine.label: EngineRun(backend, engine.label) for engine in engines}
    for engine in engines:
        await engine.run(WARMUP_EXECUTIONS)
    per_round = max(1, executions // rounds)
    for round_no in range(rounds):
        order = engines if round_no % 2 == 0 else engines[::-1]
        for engine in order:
            run = runs[engine.label]
            steps, calls = engine.steps, engine.calls
            try:
                run.seconds += await engine.run(per_round)
            except Exception as exc:
                run.error = f"{type(exc).__name__}: {exc}"
                continue
            run.steps += engine.steps - steps
            run.calls += engine.calls - calls
            run.executions += per_round
    stats = (await store.queue_stats()).get(ENGINE_QUEUE, {})
    left = {status.value: n for status, n in stats.items() if n and status.value != "completed"}
    total = sum(engine.completed for engine in engines)
    for run in runs.values():
        if left and run.error is None:
            run.error = f"items left in the queue: {left}"
        expected = run.executions * len(NODES)
        if run.error is None and run.steps != expected:
            run.error = f"{run.steps} steps recorded, {expected} expected"
    check(total == (WARMUP_EXECUTIONS + per_round * rounds) * 2, "an execution did not complete")
    for run in runs.values():
        progress(
            f"  {backend:<10} engine {run.engine:<15} {run.steps_s:>9,.0f} steps/s"
            f"  ({run.steps} steps in {run.seconds:.2f} s,"
            f" {run.calls / max(run.steps, 1):.1f} store calls per step)"
        )
    return list(runs.values())


# ------------------------------------------------------------------------------ DBOS peer


def dbos_version() -> str | None:
    try:
        return importlib.metadata.version("dbos")
    except importlib.metadata.PackageNotFoundError:
        return None


def dbos_child(backend: str, url: str, executions: int) -> int:
    """The DBOS side of the engine cell, in its own process (DBOS is a process-wide
    singleton with threads of its own): a workflow of five steps per execution, run by
    ENGINE_WORKERS threads that each call the workflow function for their share of the
    executions; prints one line ``DBOS-RESULT {json}``."""
    from dbos import DBOS, DBOSConfig

    if backend == "sqlite":
        # The store's SQLite settings: WAL (persistent in the file) and synchronous=NORMAL
        # on every connection (DBOS's own default is the rollback journal and FULL).
        path = url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("PRAGMA journal_mode = WAL")

        @event.listens_for(sqlalchemy.engine.Engine, "connect")
        def _normal(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute("PRAGMA synchronous = NORMAL")

    config: DBOSConfig = {
        "name": "statestore-bench",
        "system_database_url": url,
        "log_level": "WARNING",
        "sys_db_pool_size": ENGINE_WORKERS + 4,
    }
    DBOS(config=config)

    @DBOS.step()
    def node(name: str, number: int) -> dict[str, Any]:
        return {"node": name, "attempt": 1, "tokens": 412, "n": number}

    @DBOS.workflow()
    def workflow(number: int) -> dict[str, Any]:
        state = {}
        for name in NODES:
            state[name] = node(name, number)
        return state

    DBOS.launch()
    counted = collections.Counter[str]()

    def on_statement(*_args: Any) -> None:
        counted["statements"] += 1

    def on_commit(_connection: Any) -> None:
        counted["commits"] += 1

    event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", on_statement)
    event.listen(sqlalchemy.engine.Engine, "commit", on_commit)
    try:

        def drive(start: int, count: int, done: list[int]) -> None:
            for number in range(start, start + count * ENGINE_WORKERS, ENGINE_WORKERS):
                result = workflow(number)
                check(len(result) == len(NODES), "DBOS workflow lost a step")
                done.append(number)

        def crew(first: int, count: int) -> float:
            done: list[int] = []
            per = max(1, count // ENGINE_WORKERS)
            threads = [
                threading.Thread(target=drive, args=(first + w, per, done))
                for w in range(ENGINE_WORKERS)
            ]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - started
            check(len(done) == per * ENGINE_WORKERS, "a DBOS driver thread failed")
            return elapsed

        crew(1_000_000, WARMUP_EXECUTIONS)
        count = max(ENGINE_WORKERS, executions // ENGINE_WORKERS * ENGINE_WORKERS)
        counted.clear()
        seconds = crew(0, count)
        result = {
            "executions": count,
            "steps": count * len(NODES),
            "seconds": seconds,
            "statements": counted["statements"],
            "transactions": counted["commits"],
        }
        print(DBOS_MARK + json.dumps(result), flush=True)
    finally:
        DBOS.destroy()
    return 0


async def dbos_run(backend: str, url: str, executions: int) -> EngineRun:
    """Run :func:`dbos_child` in a subprocess on ``url``."""
    run = EngineRun(backend, DBOS_ENGINE)
    version = dbos_version()
    if version is None:
        run.error = "dbos not installed (pip install -e '.[bench]')"
        run.note = "not installed"
        return run
    run.note = f"dbos {version}"
    command = [sys.executable, __file__, "--dbos-child", backend, url, str(executions)]
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(REPO),
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=GIVE_UP_AFTER)
    except TimeoutError:
        process.kill()
        await process.wait()
        run.error = f"DBOS run took more than {GIVE_UP_AFTER:.0f} s"
        return run
    lines = [line for line in out.decode().splitlines() if line.startswith(DBOS_MARK)]
    if process.returncode != 0 or not lines:
        tail = err.decode().strip().splitlines()[-3:]
        run.error = f"DBOS child exited {process.returncode}: {' | '.join(tail)}"
        return run
    result = json.loads(lines[-1].removeprefix(DBOS_MARK))
    run.executions, run.steps, run.seconds = (
        result["executions"],
        result["steps"],
        result["seconds"],
    )
    run.calls = result["transactions"]
    run.statements = result["statements"]
    progress(
        f"  {backend:<10} engine {run.engine:<15} {run.steps_s:>9,.0f} steps/s ({version};"
        f" {run.calls / run.steps:.1f} transactions, {run.statements / run.steps:.1f}"
        " statements per step)"
    )
    return run


# ------------------------------------------------------------------------------ 3. round trips

STARTUP_CODES = {80877103, 80877104}
"""SSLRequest and GSSENCRequest: untyped messages before the StartupMessage."""


class WireCounter:
    """A TCP relay to PostgreSQL that counts the client's round trips: the messages after
    which a client waits for the server (Sync of the extended protocol, Query of the simple
    one). Pipelined messages up to one Sync count once, as they travel together."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self.round_trips = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        tasks = [
            asyncio.create_task(self._pump(reader, up_writer, count=True)),
            asyncio.create_task(self._pump(up_reader, writer, count=False)),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for closing in (writer, up_writer):
                closing.close()
            self._tasks.difference_update(tasks)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, count: bool
    ) -> None:
        buffer = b""
        startup = True
        while data := await reader.read(65536):
            writer.write(data)
            if count:
                buffer += data
                while True:
                    if startup:  # untyped: int32 length, int32 code
                        if len(buffer) < 8:
                            break
                        length, code = struct.unpack("!ii", buffer[:8])
                        if len(buffer) < length:
                            break
                        buffer = buffer[length:]
                        startup = code in STARTUP_CODES
                        continue
                    if len(buffer) < 5:
                        break
                    kind, length = buffer[:1], struct.unpack("!i", buffer[1:5])[0]
                    if len(buffer) < 1 + length:
                        break
                    buffer = buffer[1 + length :]
                    if kind in (b"S", b"Q"):
                        self.round_trips += 1
            await writer.drain()


@dataclass
class RoundTrips:
    store: int = 0
    raw: int = 0
    statements: list[str] = field(default_factory=list)
    """The statements of one store turn, in order (BEGIN and COMMIT included)."""
    sqlite_statements: list[str] = field(default_factory=list)


def statement_name(statement: str) -> str:
    """e.g. "SELECT workflow_executions FOR UPDATE", "UPDATE work_items"."""
    text = " ".join(statement.split())
    verb = text.split(" ", 1)[0].upper()
    pattern = {"SELECT": r"\bFROM (\w+)", "UPDATE": r"^UPDATE (\w+)", "INSERT": r"\bINTO (\w+)"}
    match = re.search(pattern.get(verb, r"$^"), text, re.IGNORECASE)
    name = f"{verb} {match.group(1)}" if match else verb
    if verb == "WITH":
        name = "WITH … " + " ".join(re.findall(r"\b(UPDATE|INSERT INTO) (\w+)", text)[-1])
    if re.search(r"FOR UPDATE", text, re.IGNORECASE):
        name += " FOR UPDATE"
    return name


async def turn_statements(store: StateStore, execution_id: uuid.UUID, samples: int) -> list[str]:
    """The statements of one ``commit_turn``, from ``before_cursor_execute``, ``begin`` and
    ``commit`` listeners (with a cursor listener the store runs its statements through
    ``exec_driver_sql``: this run is separate from the timed ones). On PostgreSQL they listen
    on ``store.engine.sync_engine``; on SQLite, whose writer has an engine of its own, on
    every engine of the process (nothing else runs meanwhile)."""
    seen: list[str] = []

    def on_statement(*args: Any) -> None:
        seen.append(statement_name(args[2]))

    target: Any = store.engine.sync_engine if store.dialect == "postgresql" else sqlalchemy.Engine
    hooks: list[tuple[str, Callable[..., None]]] = [
        ("before_cursor_execute", on_statement),
        ("begin", lambda _conn: seen.append("BEGIN")),
        ("commit", lambda _conn: seen.append("COMMIT")),
    ]
    for name, hook in hooks:
        event.listen(target, name, hook)
    try:
        turns: list[list[str]] = []
        for _ in range(samples):
            item = await claimed(store, execution_id, "statements")
            seen.clear()
            await store_turn(store, item.id, item.execution_id, "statements", item.lease_fence)
            turns.append(list(seen))
    finally:
        for name, hook in hooks:
            event.remove(target, name, hook)
    return turns[-1]


async def claimed(store: StateStore, execution_id: uuid.UUID, worker: str) -> WorkItem:
    await store.enqueue_work_item(
        WorkItem(execution_id=execution_id, node_id="n", queue_type=worker, payload=WORK_PAYLOAD)
    )
    item = await store.claim_work_item(worker, [worker])
    assert item is not None
    return item


async def pg_round_trips(url: str, samples: int, result: RoundTrips) -> None:
    """Round trips of one store turn and one raw turn through :class:`WireCounter`, each
    the median over ``samples`` turns after a warm-up (prepared statements cached), into
    ``result``."""
    parts = urlsplit(url)
    counter = WireCounter(parts.hostname or "127.0.0.1", parts.port or 5432)
    port = await counter.start()
    netloc = f"{parts.username}@127.0.0.1:{port}" if parts.username else f"127.0.0.1:{port}"
    relayed = urlunsplit(parts._replace(netloc=netloc))
    try:
        store = await StateStore.connect(relayed)
        try:
            execution = WorkflowExecution(
                workflow_id=WORKFLOW_ID, workflow_version=WORKFLOW_VERSION, status="running"
            )
            await store.create_execution(execution)
            counts = []
            for sample in range(samples + 3):
                item = await claimed(store, execution.execution_id, "wire")
                before = counter.round_trips
                await store_turn(store, item.id, item.execution_id, "wire", item.lease_fence)
                if sample >= 3:
                    counts.append(counter.round_trips - before)
            result.store = int(statistics.median(counts))
            result.statements = await turn_statements(store, execution.execution_id, 3)
            turn = pg_raw_turn(store)
            conn = await asyncpg.connect(relayed)
            try:
                counts = []
                for sample in range(samples + 3):
                    item = await claimed(store, execution.execution_id, "wire-raw")
                    before = counter.round_trips
                    await pg_run(
                        conn,
                        turn.steps(item.id, "wire-raw", state_patch("wire-raw"), item.lease_fence),
                    )
                    if sample >= 3:
                        counts.append(counter.round_trips - before)
                result.raw = int(statistics.median(counts))
            finally:
                await conn.close()
        finally:
            await store.close()
    finally:
        await counter.close()
    progress(
        f"  postgresql round trips per turn: store {result.store}, raw {result.raw};"
        f" statements: {', '.join(result.statements)}"
    )


# ------------------------------------------------------------------------------ driver


@dataclass
class Results:
    cells: list[Cell] = field(default_factory=list)
    engines: list[EngineRun] = field(default_factory=list)
    trips: RoundTrips = field(default_factory=RoundTrips)
    info: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


async def bench_sqlite(args: argparse.Namespace, results: Results) -> None:
    results.info["sqlite"] = sqlite3.sqlite_version
    with tempfile.TemporaryDirectory(prefix="statestore-turns-") as folder:
        path = Path(folder) / "turns.db"
        progress(f"sqlite: {path} (WAL, synchronous=NORMAL)")
        async with await StateStore.open(f"sqlite:///{path}") as store:
            results.cells += await sqlite_turn_cells(path, store, args.duration)
            probe = WorkflowExecution(
                workflow_id=WORKFLOW_ID, workflow_version=WORKFLOW_VERSION, status="running"
            )
            await store.create_execution(probe)
            results.trips.sqlite_statements = await turn_statements(store, probe.execution_id, 3)
        # The engines on a fresh file, so the turn cells' rows do not weigh on them.
        async with await StateStore.open(f"sqlite:///{Path(folder) / 'engine.db'}") as store:
            results.engines += await engine_runs("sqlite", store, args.executions, args.rounds)
        if not args.no_dbos:
            dbos_url = f"sqlite:///{Path(folder) / 'dbos.db'}"
            results.engines.append(await dbos_run("sqlite", dbos_url, args.executions))


async def bench_postgres(args: argparse.Namespace, results: Results) -> None:
    admin = args.pg_url
    try:
        await pg_admin(
            admin,
            f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)",
            f"CREATE DATABASE {PG_DATABASE}",
        )
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise BenchError(
            f"PostgreSQL unreachable at {urlsplit(admin).netloc}: {exc}"
            " (start it, pass --pg-url, or run with --only sqlite)"
        ) from exc
    url = with_database(admin, PG_DATABASE)
    try:
        progress(f"postgresql: database {PG_DATABASE}")
        async with await StateStore.open(url, pool_size=PG_WORKERS + 2) as store:
            conn = await asyncpg.connect(url)
            try:
                settings = {
                    name: await conn.fetchval(f"SHOW {name}")
                    for name in ("server_version", "synchronous_commit")
                }
            finally:
                await conn.close()
            results.info["postgresql"] = (
                f"{settings['server_version'].split()[0]}"
                f" (synchronous_commit={settings['synchronous_commit']})"
            )
            results.cells += await pg_turn_cells(url, store, args.duration)
        await pg_round_trips(url, 5, results.trips)
        await pg_admin(
            admin,
            f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)",
            f"CREATE DATABASE {PG_DATABASE}",
        )
        async with await StateStore.open(url, pool_size=ENGINE_WORKERS + 2) as store:
            results.engines += await engine_runs("postgresql", store, args.executions, args.rounds)
    finally:
        await pg_admin(admin, f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")
    if not args.no_dbos:
        await pg_admin(admin, f"DROP DATABASE IF EXISTS {PG_DBOS_DATABASE} WITH (FORCE)")
        try:
            dbos_url = with_database(admin, PG_DBOS_DATABASE)
            results.engines.append(await dbos_run("postgresql", dbos_url, args.executions))
        finally:
            await pg_admin(admin, f"DROP DATABASE IF EXISTS {PG_DBOS_DATABASE} WITH (FORCE)")


async def run(args: argparse.Namespace) -> Results:
    results = Results()
    results.info["load_start"] = f"{os.getloadavg()[0]:.1f}"
    backends = [args.only] if args.only else list(BACKENDS)
    progress(
        f"turns bench: {', '.join(backends)}, {args.duration:g} s per commit_turn cell,"
        f" {args.executions} executions per engine"
    )
    if "sqlite" in backends:
        await bench_sqlite(args, results)
    if "postgresql" in backends:
        try:
            await bench_postgres(args, results)
        except BenchError as exc:
            results.errors.append(str(exc))
    results.info["load"] = (
        f"1-minute load average {results.info['load_start']} at the start,"
        f" {os.getloadavg()[0]:.1f} at the end, on {nproc()} CPUs shared with other work:"
        " compare the ratios of one run, not the figures of different runs"
    )
    for cell in results.cells:
        results.errors += cell.errors()
    results.errors += [
        f"{run.backend} engine {run.engine}: {run.error}"
        for run in results.engines
        if run.error is not None and run.engine != DBOS_ENGINE
    ]
    return results


# ------------------------------------------------------------------------------ output


def verdict(ratio: float | None, wanted: float) -> str:
    if ratio is None:
        return f"{wanted:g}x: -"
    if ratio >= wanted:
        return f"{wanted:g}x: met"
    return f"{wanted:g}x: missed by {1 - ratio / wanted:.0%}"


def turn_table(cells: Sequence[Cell]) -> str:
    header = (
        "backend",
        "callers",
        "store turns/s",
        "store p50 µs",
        "store p99 µs",
        "raw turns/s",
        "raw p50 µs",
        "raw p99 µs",
        "ratio",
        "target",
    )
    rows = []
    for cell in cells:
        store, raw = cell.timings["store"], cell.timings["raw"]
        rows.append(
            (
                cell.backend,
                str(cell.callers),
                fmt_rate(store),
                fmt_us(store, 50),
                fmt_us(store, 99),
                fmt_rate(raw),
                fmt_us(raw, 50),
                fmt_us(raw, 99),
                fmt_ratio(cell.ratio),
                verdict(cell.ratio, TARGET_TURN),
            )
        )
    return table(header, rows, [False, *([True] * 8), False])


def engine_ratio(runs: Sequence[EngineRun], backend: str, against: str) -> float | None:
    by_engine = {run.engine: run for run in runs if run.backend == backend}
    turns, other = by_engine.get(TURNS_ENGINE), by_engine.get(against)
    if turns is None or other is None or not (turns.ok and other.ok):
        return None
    return turns.steps_s / other.steps_s


def engine_table(runs: Sequence[EngineRun]) -> str:
    header = (
        "backend",
        "engine",
        "executions",
        "steps",
        "seconds",
        "steps/s",
        "transactions per step",
        "turns engine / this",
        "target",
    )
    rows = []
    targets = {SEPARATE_ENGINE: TARGET_VS_SEPARATE, DBOS_ENGINE: TARGET_VS_DBOS}
    for run in runs:
        name = run.engine if not run.note else f"{run.engine} ({run.note})"
        if not run.ok:
            rows.append((run.backend, name, "-", "-", "-", "not run", "-", "-", "-"))
            continue
        ratio = engine_ratio(runs, run.backend, run.engine) if run.engine != TURNS_ENGINE else None
        rows.append(
            (
                run.backend,
                name,
                f"{run.executions:,}",
                f"{run.steps:,}",
                f"{run.seconds:.2f}",
                f"{run.steps_s:,.0f}",
                f"{run.calls / run.steps:.1f}" if run.calls else "-",
                "-" if run.engine == TURNS_ENGINE else fmt_ratio(ratio),
                verdict(ratio, targets[run.engine]) if run.engine in targets else "-",
            )
        )
    return table(header, rows, [False, False, True, True, True, True, True, True, False])


def trips_text(trips: RoundTrips, backends: Sequence[str]) -> str:
    lines = []
    if "postgresql" in backends and trips.store:
        lines.append(
            f"- PostgreSQL: one `commit_turn` (one event, a state patch, one successor) takes"
            f" **{trips.store} round trips**; the raw transaction {trips.raw} (BEGIN,"
            f" {RAW_STATEMENTS} statements, COMMIT). Counted on the wire by a relay between the"
            f" client and the server (each Sync or simple Query the client sends is one round"
            f" trip), the median of 5 turns after 3 untimed ones (prepared statements cached). The"
            f" store's statements, in order (a `before_cursor_execute` listener, a separate"
            f" run): {', '.join(trips.statements)}."
        )
    if "sqlite" in backends and trips.sqlite_statements:
        inner = [name for name in trips.sqlite_statements if name not in ("BEGIN", "COMMIT")]
        lines.append(
            f"- SQLite (no round trips: the turn is one writer operation, which joins group"
            f" commit): {len(inner)} statements in the writer's transaction, {', '.join(inner)};"
            f" the raw transaction runs the same {RAW_STATEMENTS}."
        )
    return "\n".join(lines)


ENGINE_NOTE = (
    "The workflow is a chain of five nodes, a → b → c → d → e, the same for every engine;"
    " a chain rather than a fan-out and join so that every engine does the same five steps"
    " per execution (a join on the store parks the joining item until its inputs are"
    " done, extra turns that depend on timing, while a DBOS workflow would simply await"
    " both steps), keeping the cell about the cost of a step. The node's work is empty:"
    " the cell measures what the engine costs around it."
)


def markdown(results: Results, args: argparse.Namespace) -> str:
    backends = [args.only] if args.only else list(BACKENDS)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{nproc()} CPUs (nproc), {cpu_model()}; {platform.system()} {platform.release()}"
    software = ", ".join(
        [
            f"Python {platform.python_version()}",
            f"SQLite {results.info.get('sqlite', 'not measured')}",
            f"PostgreSQL {results.info.get('postgresql', 'not measured')}",
            f"SQLAlchemy {sqlalchemy.__version__}",
            f"asyncpg {asyncpg.__version__}",
            f"DBOS {dbos_version() or 'not installed'}",
        ]
    )
    parts = [
        "## Atomic turns",
        "",
        "`commit_turn` against the same transaction written raw, and an engine on turns against"
        " the same engine on separate calls and against DBOS, in the same run (issue 13,"
        " item 6). This section is written by `bench/turns.py --write`"
        " (`make bench-turns`); the other scripts keep it.",
        "",
        f"- Command: `{command_line()}`",
        f"- Date: {when}",
        f"- Code: {code_version()}",
        f"- Machine: {machine}",
        f"- Software: {software}",
        f"- Load: {results.info.get('load', 'unknown')}",
        "",
        "### commit_turn against its raw transaction",
        "",
        turn_table(results.cells),
        "",
        TURN_LEGEND,
        "",
        "### Engine: five steps per execution, 4 workers",
        "",
        engine_table(results.engines),
        "",
        ENGINE_NOTE + " " + ENGINE_LEGEND,
        "",
        "### Round trips of one turn",
        "",
        trips_text(results.trips, backends),
        "",
        "### Where we stand",
        "",
        standing(results, backends),
    ]
    return "\n".join(parts) + "\n"


TURN_LEGEND = (
    f"Each turn settles a claimed item (fenced), appends one event (~{len(dumps(KIND_JSON))} B"
    " of JSON), merge-patches the execution's state and enqueues one successor item."
    f" callers: concurrent asyncio tasks on one store on SQLite, workers on PostgreSQL (the"
    f" store with a pool of {PG_WORKERS + 2}, raw with an `asyncpg` connection each); each"
    f" caller settles items of its own executions ({TURN_EXECUTIONS} split between them), so"
    " no turn waits on another's execution row. raw = the same transaction through the bare"
    f" driver, its {RAW_STATEMENTS} statements the store's own, compiled by the store"
    " (bench/statements.py; a test checks they are among what the store sends for the"
    " turn): lock the item's execution and read its state (`SELECT … FOR UPDATE OF"
    " workflow_executions` on PostgreSQL; on SQLite under the `BEGIN IMMEDIATE` write lock),"
    " settle the item with the fenced `UPDATE work_items … WHERE id = ? AND status ="
    " 'claimed' AND worker_id = ? AND lease_fence = ?`, reserve the sequence and write the"
    " merged state in one `UPDATE workflow_executions … RETURNING last_sequence`, insert the"
    " event, insert the successor (`INSERT … SELECT` from its execution, which must take new"
    " work), commit; what raw leaves out is the store's Python around them. SQLite raw runs"
    " through one thread with group commit (bench/sqlite_raw.py's gc layer:"
    " up to 64 waiting calls in one transaction, a SAVEPOINT each; a lone call is one"
    " transaction); PostgreSQL raw is `asyncpg` with its statement cache. The claimed items"
    " are inserted untimed before every timed run. ratio = store turns/s / raw turns/s;"
    f" target: the issue's {TARGET_TURN}x. Method: as bench/run.py (bench/harness.py), a"
    f" warm-up then {ROUNDS} rounds alternating store and raw, {DEFAULT_DURATION:g} s per"
    " contender by default."
)

ENGINE_LEGEND = (
    "turns: each start is one `start_execution` (the execution, its first two events and"
    " the first item); each step a claim, the node's work under `heartbeat`, and ONE"
    " `commit_turn` (item settled, `node_completed` and `node_scheduled` events, the node's"
    " state patch, the next item; on the last node `workflow_completed`, the status and the"
    " materialized snapshot). separate calls: the same engine on the calls from before"
    " turns, as the demo at commit 278d6f7 made them: each start `create_execution`,"
    " `append_events`, `enqueue_work_item`; each step a claim, `renew_lease`, `append_events`"
    " (the same two events), `patch_append_array`, `complete_work_item`, `enqueue_work_item`;"
    " the last node instead `get_execution`, `latest_sequence`, `write_snapshot`,"
    " `update_execution_status`. Both store engines: one store, one starter task that starts"
    " the executions while 4 worker tasks claim and run steps (a worker that finds the queue"
    " empty sleeps 2 ms); steps/s = 5 x executions / the time from the first start to the"
    f" last completion; {ENGINE_ROUNDS} rounds alternating the two engines on one database"
    f" after {WARMUP_EXECUTIONS} untimed executions each; afterwards the bench checks that"
    " every execution completed and no item is left pending or claimed. store calls per"
    " step = the engine's store calls (claims that found nothing and starts included) /"
    " steps. DBOS: a `@DBOS.workflow` calling five `@DBOS.step` functions (each step's"
    " output checkpointed in DBOS's system database, the workflow's status recorded at"
    " start and end), run in a subprocess per backend (DBOS is a process-wide singleton) by"
    " 4 threads that each call the workflow for their share of the executions (DBOS's"
    " synchronous API: its async one, tried here, was slower on SQLite); the same number of"
    f" executions after {WARMUP_EXECUTIONS} untimed ones. DBOS on SQLite runs with the"
    " store's settings, WAL and `synchronous=NORMAL` (its default, the rollback journal at"
    " FULL, was about 10x slower here); on PostgreSQL its own database on the same server."
)


def standing(results: Results, backends: Sequence[str]) -> str:
    """The verdicts of this run against the issue's targets, and why."""
    sentences = []
    for cell in results.cells:
        ratio = cell.ratio
        sentences.append(
            f"{cell.backend} commit_turn with {cell.callers} caller"
            f"{'s' if cell.callers > 1 else ''}: {fmt_ratio(ratio)}x raw"
            f" ({verdict(ratio, TARGET_TURN).split(': ', 1)[1]})"
        )
    for backend in backends:
        for against, wanted in ((SEPARATE_ENGINE, TARGET_VS_SEPARATE), (DBOS_ENGINE, 10.0)):
            ratio = engine_ratio(results.engines, backend, against)
            if ratio is None:
                missing = next(
                    (r for r in results.engines if r.backend == backend and r.engine == against),
                    None,
                )
                why = missing.error if missing is not None and missing.error else "not run"
                sentences.append(f"{backend} engine against {against}: not measured ({why})")
                continue
            sentences.append(
                f"{backend} engine on turns {ratio:.2f}x {against}"
                f" ({verdict(ratio, wanted).split(': ', 1)[1]})"
            )
    paragraphs = ["Against the issue's targets: " + "; ".join(sentences) + "."]
    paragraphs += [text for text in (why_turn(results), why_engine(results)) if text]
    return "\n\n".join(paragraphs)


def why_turn(results: Results) -> str:
    trips = results.trips
    statements = [
        s for s in trips.statements or trips.sqlite_statements if s not in ("BEGIN", "COMMIT")
    ]
    if not statements:
        return ""
    wire = f" (on PostgreSQL {trips.store} round trips against {trips.raw})" if trips.store else ""
    return (
        f"Where the gap to raw is: the store's turn sends {len(statements)} statements where"
        f" raw sends {RAW_STATEMENTS}{wire} — the execution locked through the item, the"
        " fenced settle, one `UPDATE` of the execution for the sequences and the state, the"
        " events' `INSERT`, the successor's `INSERT` — the same statements, all on the"
        " precompiled driver path (statestore/db/driver.py). What is left is the Python raw"
        " does not do: every argument checked and encoded before the first statement (event"
        " kinds validated by their models, JSON checked for size, depth and NaN), the merge"
        " patch, the tenant scope, the successor's checks, the runner's task and typed"
        " results. On SQLite the writer thread runs that Python under the GIL it shares with"
        " the event loop, so"
        " concurrent callers gain less than raw group commit does."
    )


def why_engine(results: Results) -> str:
    parts = []
    by = {(run.backend, run.engine): run for run in results.engines if run.ok}
    for backend in BACKENDS:
        turns, separate = by.get((backend, TURNS_ENGINE)), by.get((backend, SEPARATE_ENGINE))
        if turns is None or separate is None:
            continue
        parts.append(
            f"{backend}: {turns.calls / turns.steps:.1f} transactions per step on turns against"
            f" {separate.calls / separate.steps:.1f} on separate calls, yet"
            f" {turns.steps_s:,.0f} against {separate.steps_s:,.0f} steps/s"
        )
    text = ""
    if parts:
        text = (
            "Why the engine on turns is not 3x the one on separate calls: it makes a third of"
            " the store calls, but each turn costs several of the separate engine's"
            " fast-path calls (above) — "
            + "; ".join(parts)
            + ". Each step still pays its claim (a transaction of its own) and the workers'"
            " 2 ms idle poll, which both engines share; with five steps per execution and"
            " four workers the claim and the poll are a large part of a turns step."
        )
    dbos = []
    for backend in BACKENDS:
        peer = by.get((backend, DBOS_ENGINE))
        raw = [c for c in results.cells if c.backend == backend and c.timings["raw"].ok]
        if peer is None or not peer.steps:
            continue
        sentence = (
            f"on {backend} DBOS commits {peer.calls / peer.steps:.1f} transactions"
            f" ({peer.statements / peer.steps:.1f} statements) per step on its system database"
        )
        if raw:
            best = max(c.timings["raw"].ops_s for c in raw)
            sentence += (
                f", and even the raw turn transaction alone, with no claim, runs at"
                f" {best:,.0f}/s in its best cell above, {best / peer.steps_s:.1f}x DBOS's"
                " steps/s"
            )
        dbos.append(sentence)
    if dbos:
        text += (
            ("\n\n" if text else "")
            + "Why 10x DBOS is out of reach on the same database: a DBOS step is a checkpoint"
            " of the step's output, no claim and no queue between steps (the workflow runs on"
            " in the calling thread), and its statements are small: "
            + "; ".join(dbos)
            + ". An engine that claims and commits one turn per step does at least two"
            " transactions per step, about what DBOS does, so it can be faster per step only"
            " by doing less per transaction; ten times would need several steps per"
            " transaction (batched claims and turns), which is not what this cell measures."
        )
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
        help=f"seconds per commit_turn cell and contender (default {DEFAULT_DURATION})",
    )
    parser.add_argument(
        "--executions",
        type=int,
        default=DEFAULT_EXECUTIONS,
        help=f"executions per engine and backend (default {DEFAULT_EXECUTIONS})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_DURATION} s per cell and {QUICK_EXECUTIONS} executions per engine:"
        " checks the harness, not a measurement",
    )
    parser.add_argument("--only", choices=BACKENDS, help="run one backend only")
    parser.add_argument("--no-dbos", action="store_true", help="leave DBOS out")
    parser.add_argument(
        "--write",
        nargs="?",
        const="docs/benchmarks.md",
        metavar="PATH",
        help="also write the section into PATH (default docs/benchmarks.md)",
    )
    parser.add_argument(
        "--pg-url",
        default=DEFAULT_PG_ADMIN_URL,
        help="PostgreSQL server to use; the bench creates its own databases there"
        " (default $STATESTORE_BENCH_PG_URL or postgresql://postgres@127.0.0.1:5432/test)",
    )
    parser.add_argument(
        "--dbos-child", nargs=3, metavar=("BACKEND", "URL", "N"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    args.rounds = ENGINE_ROUNDS
    if args.quick:
        args.duration = QUICK_DURATION
        args.executions = QUICK_EXECUTIONS
        args.rounds = QUICK_ENGINE_ROUNDS
    if args.duration <= 0 or args.executions <= 0:
        parser.error("--duration and --executions must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dbos_child:
        backend, url, executions = args.dbos_child
        return dbos_child(backend, url, int(executions))
    started = time.perf_counter()
    results = asyncio.run(run(args))
    progress(f"done in {time.perf_counter() - started:.1f} s")
    section = markdown(results, args)
    print(section)
    for error in results.errors:
        print(f"ERROR: {error}", file=sys.stderr)
    if results.errors:
        if args.write:
            print(f"not writing {args.write}: the run had errors", file=sys.stderr)
        return 1
    if args.write:
        target = Path(args.write)
        if not target.is_absolute():
            target = REPO / target
        existing = target.read_text(encoding="utf-8") if target.exists() else "# Benchmarks\n"
        write_document(target, existing, turns=f"{TURNS_BEGIN}\n{section}{TURNS_END}\n")
        progress(f"wrote the turns section of {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
