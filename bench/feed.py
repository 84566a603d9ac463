"""The feed (issue 15): read throughput against the raw SELECT in the same run, append
throughput of writer processes with and without a NOTIFY per append, append throughput of
the raw driver with the feed columns and without them, and how far a follower lags behind
writer processes.

    python bench/feed.py URL [--events N] [--writers W] [--seconds S] [--rounds R]

Read: ``N`` events (20,000) in 40 executions, then ``iter_feed(batch=1000)`` over all of
them against the same pages read with a raw ``SELECT … WHERE position > :last ORDER BY
position LIMIT 1000`` through ``store.engine`` (no horizon, no models), best of 3.

Append: ``W`` writer processes (8), each with its own store and execution, call
``append_event`` as fast as they can for ``S`` seconds (4); events per second of all of
them. On PostgreSQL the same again with each append also sending ``pg_notify`` inside its
statement (the wake-up per append the store does not send: docs/architecture.md, "The
feed"), the two alternating, ``R`` runs each (2), best of each.

Feed columns: the store's own append statement (bench/statements.py) through the raw driver
into the store's ``events`` table, against the same statement without the feed position into
a copy of that table without the feed's column and its indexes (``events_nofeed``, made from
the store's table definition in the same database). ``S`` seconds (4) of each, in blocks of
a quarter of a second, the two alternating; appends per second of all the time each had.
PostgreSQL: 1 and ``W`` ``asyncpg`` connections, each appending to its own execution in
autocommit as the store sends it. SQLite: one ``sqlite3`` writer (SQLite has one writer at a
time), each append as the store's writer runs it: ``BEGIN IMMEDIATE``, bump of the
sequence, insert, ``COMMIT``. Runs first, so both tables start empty; its events are
deleted after it.

Lag: the same writer processes for ``S`` seconds while this process follows with
``iter_feed(follow=True)``; per event, the time from the writer's acknowledged append (the
wall clock right after ``append_event`` returned, sent back with the event's id) to the
follower yielding it (one host, one clock). p50/p99 in milliseconds; on PostgreSQL also
with the NOTIFY per append.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import re
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from cells import KIND_JSON, KIND_TYPE
from common import dumps
from sqlalchemy import Dialect, Executable, Insert, MetaData, Table, delete, text
from sqlalchemy.sql.naming import conv
from sqlite_raw import in_transaction, sqlite_connect, sqlite_now
from statements import RawStatement, compiled

from statestore import CustomEvent, Event, StateStore, WorkflowExecution
from statestore.db import queries
from statestore.db.schema import EventRow, ExecutionRow, TenantRow

RAW = text(
    "SELECT id, execution_id, sequence, event_type, kind, created_at, tenant_id, position"
    " FROM events WHERE position > :last ORDER BY position LIMIT 1000"
)
WARM_UP = 20
"""Appends each writer makes before the timed part (connections open, statements built)."""


async def read_throughput(store: StateStore, events: int) -> tuple[float, float]:
    per_execution = events // 40
    for _ in range(40):
        execution = WorkflowExecution(workflow_id="bench", workflow_version="1")
        await store.create_execution(execution)
        for start in range(0, per_execution, 500):
            count = min(500, per_execution - start)
            await store.append_events(
                execution.execution_id, [CustomEvent(type="tick", n=i) for i in range(count)]
            )
    total = per_execution * 40
    feed_s, raw_s = [], []
    for _ in range(3):
        started = time.perf_counter()
        seen = sum([1 async for _ in store.iter_feed(batch=1000)])
        feed_s.append(time.perf_counter() - started)
        assert seen == total, seen
        started = time.perf_counter()
        seen, last = 0, 0
        async with store.engine.connect() as connection:
            while True:
                rows = (await connection.execute(RAW, {"last": last})).all()
                if not rows:
                    break
                seen += len(rows)
                last = rows[-1].position
        raw_s.append(time.perf_counter() - started)
        assert seen == total, seen
    return total / min(feed_s), total / min(raw_s)


# ---------------------------------------------------------------- the feed columns

FEED_COLUMN = EventRow.position.key
NO_FEED = "events_nofeed"
BLOCK = 0.25
"""Seconds of one variant before the other takes over: short blocks, so that both see the
same moments of a machine whose load changes (the ratio of back-to-back runs of a second
each ranged from 0.4 to 2 here while other work ran)."""
Key = tuple[bool, int]
"""With the feed columns or not, and the number of writers."""


def table_without_feed() -> Table:
    """The store's ``events`` table as ``events_nofeed``: its own definition (columns,
    types, constraints, foreign keys) without the feed's column and the indexes on it; its
    constraints renamed, as PostgreSQL names their indexes per schema."""
    store, metadata = EventRow.metadata.tables, MetaData()
    for referenced in (TenantRow, ExecutionRow):  # for the foreign keys
        store[referenced.__tablename__].to_metadata(metadata)
    table = store[EventRow.__tablename__].to_metadata(metadata, name=NO_FEED)
    for index in [index for index in table.indexes if FEED_COLUMN in index.columns]:
        table.indexes.discard(index)
    table._columns.remove(table.c[FEED_COLUMN])  # no public API takes a column out
    for constraint in table.constraints:
        assert constraint.name is not None
        constraint.name = conv(f"{constraint.name}_nofeed")
    return table


def without_feed(statement: RawStatement, dialect: Dialect) -> RawStatement:
    """The store's compiled insert of an event with the feed left out: into
    ``events_nofeed``, without the position column and its value.

    Derived from the compiled statement rather than built: the store's builders write the
    feed position into every insert of an event (it is part of the one definition of an
    append: ``_append_one`` names the column, ``_insert`` adds ``feed_position()``) and take
    no table, so no call of them leaves it out. The parts removed are the store's own
    compiled ``feed_position()`` (with its label) and the column's name, each required to
    occur exactly once; then the table's name. The parameters stay the same."""
    position = str(queries.feed_position().compile(dialect=dialect))
    sql = statement.sql
    for part in (re.escape(f", {position}") + r"( AS \w+)?", rf", {FEED_COLUMN}\b"):
        sql, found = re.subn(part, "", sql)
        assert found == 1, (part, statement.sql)
    sql, found = re.subn(r"\bevents\b", NO_FEED, sql)
    assert found and FEED_COLUMN not in sql, sql
    return replace(statement, sql=sql)


async def feed_columns(store: StateStore, writers: int, seconds: float) -> dict[Key, float]:
    """Appends per second with the feed (``True``) and without, by number of writers;
    the executions appended to are deleted after (their events with them)."""
    table = table_without_feed()
    async with store.engine.begin() as connection:
        await connection.run_sync(table.create)  # fails if left behind
    dialect = store.engine.dialect
    sql = compiled(dialect)
    executions = []
    for _ in range(writers):
        execution = WorkflowExecution(workflow_id="bench", workflow_version="1")
        await store.create_execution(execution)
        executions.append(execution.execution_id)
    totals: dict[Key, tuple[int, float]] = {}

    def add(key: Key, done: int, elapsed: float) -> None:
        before = totals.get(key, (0, 0.0))
        totals[key] = (before[0] + done, before[1] + elapsed)

    blocks = max(1, round(seconds / BLOCK))
    try:
        if dialect.name == "postgresql":
            url = store.engine.url.set(drivername="postgresql")
            feed = sql["append_one"]
            plain = without_feed(feed, dialect)
            connections = [
                await asyncpg.connect(url.render_as_string(hide_password=False)) for _ in executions
            ]
            try:
                for conn, execution_id in zip(connections, executions, strict=True):
                    for statement in (feed, plain):  # prepared before the timed blocks
                        await conn.fetchval(statement.sql, *append_args(statement, execution_id))
                for count in sorted({1, writers}):
                    pairs = list(zip(connections, executions, strict=True))[:count]
                    for block in range(blocks):
                        for with_feed, statement in alternate(feed, plain, block):
                            add((with_feed, count), *await pg_appends(statement, pairs))
            finally:
                for conn in connections:
                    await conn.close()
        else:
            path = store.engine.url.database
            assert path is not None
            reserve, feed = sql["reserve"], sql["insert_event"]
            plain = without_feed(feed, dialect)
            with contextlib.closing(sqlite_connect(Path(path))) as conn:
                for block in range(blocks):
                    for with_feed, statement in alternate(feed, plain, block):
                        append = sqlite_append(conn, reserve, statement, executions[0])
                        add((with_feed, 1), *repeat(append))
        async with store.engine.connect() as connection:
            counts = [
                (await connection.execute(text(f"SELECT count(*) FROM {name}"))).scalar_one()
                for name in ("events", NO_FEED)
            ]
        assert min(counts) > 0, counts  # both variants appended (checked, not timed)
    finally:
        # Leave the database as found: the read measurement reads the whole feed.
        async with store.engine.begin() as connection:
            await connection.run_sync(table.drop)
            await connection.execute(delete(ExecutionRow).where(ExecutionRow.id.in_(executions)))
    return {key: done / elapsed for key, (done, elapsed) in totals.items()}


def alternate(
    feed: RawStatement, plain: RawStatement, block: int
) -> list[tuple[bool, RawStatement]]:
    """With the feed first in even blocks, without it first in odd ones."""
    pairs = [(True, feed), (False, plain)]
    return pairs if block % 2 == 0 else pairs[::-1]


KIND_TEXT = dumps(KIND_JSON)


def append_args(append_one: RawStatement, execution_id: uuid.UUID) -> tuple[Any, ...]:
    """PostgreSQL: the arguments of one append of an event to ``execution_id``."""
    values = {
        "p_execution_id": execution_id,
        "p_count": 1,
        "id": uuid.uuid4(),
        "event_type": KIND_TYPE,
        "kind": KIND_TEXT,
        "created_at": datetime.now(UTC),
    }
    return append_one.args(values)


async def pg_appends(
    statement: RawStatement, pairs: list[tuple[asyncpg.Connection, uuid.UUID]]
) -> tuple[int, float]:
    """Appends of one connection per execution in ``pairs`` for a block: how many, in how
    many seconds."""
    end = time.perf_counter() + BLOCK

    async def append(conn: asyncpg.Connection, execution_id: uuid.UUID) -> int:
        done = 0
        while time.perf_counter() < end:
            values = append_args(statement, execution_id)
            assert await conn.fetchval(statement.sql, *values) is not None
            done += 1
        return done

    started = time.perf_counter()
    done = await asyncio.gather(*(append(conn, execution) for conn, execution in pairs))
    return sum(done), time.perf_counter() - started


def sqlite_append(
    conn: Any, reserve: RawStatement, insert: RawStatement, execution_id: uuid.UUID
) -> Callable[[], None]:
    """One append as the store's SQLite writer runs it: in its own ``BEGIN IMMEDIATE …
    COMMIT``, bump the execution's sequence, then insert the event with ``insert``."""
    bump = reserve.binder("p_execution_id", "p_count")

    def body() -> None:
        sequence, tenant_id = conn.execute(reserve.sql, bump(execution_id.hex, 1)).fetchone()
        event = {
            "id": uuid.uuid4().hex,
            "execution_id": execution_id.hex,
            "sequence": sequence,
            "event_type": KIND_TYPE,
            "kind": KIND_TEXT,
            "created_at": sqlite_now(),
            "tenant_id": tenant_id,
        }
        conn.execute(insert.sql, insert.args(event))

    return lambda: in_transaction(conn, body)


def repeat(call: Callable[[], None]) -> tuple[int, float]:
    """Calls of ``call`` for a block: how many, in how many seconds."""
    done, started = 0, time.perf_counter()
    end = started + BLOCK
    while time.perf_counter() < end:
        call()
        done += 1
    return done, time.perf_counter() - started


# ---------------------------------------------------------------- writer processes


def notify_each_append() -> None:
    """The alternative the store rejected, for its measurement only: each single-event
    append also returns ``pg_notify`` on the work channel from its own statement (the
    store's one definition of the notification, ``queries._NotifyWork``), so every
    appending transaction notifies at commit."""
    plain = queries._append_one

    def notifying(expecting: bool) -> Executable:
        statement = plain(expecting)
        assert isinstance(statement, Insert)
        return statement.returning(queries._NotifyWork(EventRow.tenant_id))

    queries._append_one = notifying


def writer(url: str, seconds: float, notify: bool, ready: Any, go: Any, results: Any) -> None:
    """A writer process: warm up, say so, wait for the start, append for ``seconds``; puts
    ``(event id, wall clock right after its append returned)`` of every timed append."""
    if notify:
        notify_each_append()
    results.put(asyncio.run(_write(url, seconds, ready, go)))


async def _write(url: str, seconds: float, ready: Any, go: Any) -> list[tuple[str, float]]:
    store = await StateStore.connect(url)
    try:
        execution = WorkflowExecution(workflow_id="bench", workflow_version="1")
        await store.create_execution(execution)
        for _ in range(WARM_UP):
            await store.append_event(
                Event(execution_id=execution.execution_id, kind=CustomEvent(type="warm"))
            )
        ready.put(True)
        go.wait()
        acknowledged: list[tuple[str, float]] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            event = Event(execution_id=execution.execution_id, kind=CustomEvent(type="w"))
            await store.append_event(event)
            acknowledged.append((str(event.id), time.time()))
        return acknowledged
    finally:
        await store.close()


@dataclass
class Run:
    appended: int
    seconds: float
    lags_ms: list[float]

    @property
    def per_s(self) -> float:
        return self.appended / self.seconds


async def run_writers(
    url: str, writers: int, seconds: float, *, notify: bool, follow: StateStore | None
) -> Run:
    """``writers`` writer processes for ``seconds``; with ``follow``, a follower of that
    store in this process, and each event's lag."""
    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    processes = [
        context.Process(target=writer, args=(url, seconds, notify, ready, go, results))
        for _ in range(writers)
    ]
    for process in processes:
        process.start()
    loop = asyncio.get_running_loop()
    for _ in processes:
        await loop.run_in_executor(None, ready.get)
    yielded: dict[str, float] = {}
    follower = None
    if follow is not None:
        last = [e async for e in follow.iter_feed(batch=1000)]
        start = last[-1].position or 0 if last else 0

        async def tail() -> None:
            async for event in follow.iter_feed(after=start, follow=True):
                yielded[str(event.id)] = time.time()

        follower = asyncio.create_task(tail())
        await asyncio.sleep(0.5)  # registered, and listening on PostgreSQL
    go.set()
    acknowledged: list[tuple[str, float]] = []
    for _ in processes:
        acknowledged += await loop.run_in_executor(None, results.get)
    for process in processes:
        await loop.run_in_executor(None, process.join)
    lags: list[float] = []
    if follower is not None:
        for _ in range(300):  # the last events: at most the poll's period behind
            if all(event_id in yielded for event_id, _ in acknowledged):
                break
            await asyncio.sleep(0.01)
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        missing = [event_id for event_id, _ in acknowledged if event_id not in yielded]
        assert not missing, f"the follower missed {len(missing)} events"
        lags = [(yielded[event_id] - at) * 1000 for event_id, at in acknowledged]
    return Run(len(acknowledged), seconds, lags)


def percentiles(lags_ms: list[float]) -> str:
    cuts = statistics.quantiles(lags_ms, n=100)
    return f"p50 {cuts[49]:.1f} ms, p99 {cuts[98]:.1f} ms"


async def main(url: str, events: int, writers: int, seconds: float, rounds: int) -> None:
    store = await StateStore.open(url)
    postgresql = store.engine.dialect.name == "postgresql"
    try:
        columns = await feed_columns(store, writers, seconds)
        for count in sorted({count for _, count in columns}):
            on, off = columns[True, count], columns[False, count]
            who = f"{count} connection{'s' * (count > 1)}" if postgresql else "1 writer"
            print(
                f"append, raw driver, {who}: with the feed columns {on:,.0f} events/s,"
                f" without {off:,.0f} events/s ({on / off:.2f}x)"
            )

        feed, raw = await read_throughput(store, events)
        print(f"read: iter_feed {feed:,.0f} events/s, raw SELECT {raw:,.0f} events/s")

        variants = (False, True) if postgresql else (False,)
        best: dict[bool, float] = {}
        for _ in range(rounds):
            for notify in variants:
                run = await run_writers(url, writers, seconds, notify=notify, follow=None)
                best[notify] = max(best.get(notify, 0.0), run.per_s)
        print(f"append, {writers} writer processes: {best[False]:,.0f} events/s")
        if postgresql:
            ratio = best[True] / best[False]
            print(
                f"append, {writers} writer processes, NOTIFY in each append:"
                f" {best[True]:,.0f} events/s ({ratio:.2f}x)"
            )
        for notify in variants:
            run = await run_writers(url, writers, seconds, notify=notify, follow=store)
            name = ", NOTIFY in each append" if notify else ""
            print(
                f"lag, {writers} writer processes{name}: {run.appended} events,"
                f" {percentiles(run.lags_ms)}"
            )
    finally:
        await store.close()


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--events", type=int, default=20_000, help="events read (20,000)")
    parser.add_argument("--writers", type=int, default=8, help="writer processes (8)")
    parser.add_argument("--seconds", type=float, default=4.0, help="per writer run (4)")
    parser.add_argument("--rounds", type=int, default=2, help="append runs of each kind (2)")
    return parser.parse_args()


if __name__ == "__main__":
    args = arguments()
    asyncio.run(main(args.url, args.events, args.writers, args.seconds, args.rounds))
