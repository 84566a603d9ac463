"""bench/turns.py, part 1: ``commit_turn`` against its raw transaction.

``store``: ``StateStore.commit_turn`` of a claimed item with one event, a state merge patch
and one successor. ``raw``: the same transaction through the bare driver, its statements the
store's own (bench/statements.py :func:`compiled_turn`), written once (:class:`RawTurn`) and
run by ``sqlite3`` behind the group-commit thread or by ``asyncpg``, a connection per
worker. The claimed items both settle are inserted untimed before every timed run.
"""

from __future__ import annotations

import collections
import contextlib
import json
import sqlite3
import uuid
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
from cells import KIND_JSON, KIND_TYPE, PG_WORKERS, SQLITE_CALLERS, WORK_PAYLOAD, item_row
from common import KIND, check, dumps
from harness import AsyncOp, Cell, Contender, WorkQueue, measure
from sqlite_raw import GroupCommitThread, in_transaction, sqlite_connect, sqlite_now, sqlite_time
from statements import RawStatement, compiled, compiled_turn, turn_catalogue

from statestore import StateStore, WorkflowExecution, WorkItem

TURN_EXECUTIONS = 64
"""Executions the commit_turn cells settle items of (each caller its own share)."""
TURN_RATE_GUESS = 5_000
"""Turns/s the first untimed top-up of claimed items assumes (then the fastest rate seen)."""
RAW_STATEMENTS = len(turn_catalogue())
"""The statements of the raw turn (and of the store's, between BEGIN and COMMIT)."""
TURN_QUEUE = "turn"
NEXT_QUEUE = "turn-next"
WORKFLOW_ID = "bench-dag"
WORKFLOW_VERSION = "1"
LEASE = timedelta(hours=1)
"""Lease of the items inserted already claimed for the commit_turn cells."""


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
