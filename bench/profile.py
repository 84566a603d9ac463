"""Where a hot-path call's time goes: per-call µs of the store and of the raw driver on the
same SQL, and the store's call split by layer (cProfile), one cell per hot path per database.

Each cell runs ``--calls`` calls of one operation through the public facade and through the
bare driver, alternating in ``--rounds`` rounds. It reports, for the least disturbed round
of each (the lowest; the machine is shared), the wall µs and the CPU µs of this process per
call, and the ratio raw µs / store µs (the bench's ops/s ratio). Then it runs the store's
calls once more under cProfile and splits the profiled time by layer: each function's own
time goes to the layer the function belongs to or, for shared code (pydantic, json, uuid,
builtins), to its callers' layers in proportion to the time each caller spent in it.

- ``driver``: asyncpg / sqlite3, their Python and C code (not the wait for the server);
- ``wait``: the event loop idle in ``epoll``: the server's reply on PostgreSQL; on SQLite
  the database thread's work and the hop, seen from the loop;
- ``sqlalchemy``: SQLAlchemy's Connection, transaction, pool, Session and event code;
- ``bridge``: the greenlet bridge (``greenlet_spawn`` / ``await_`` and the asyncpg DBAPI
  adapter that runs the sync dialect over asyncpg);
- ``statement``: statestore's statement layer (``db/driver.py``, ``db/queries.py``:
  parameters, processors, row tuples);
- ``validation``: the input checks (``validation.py``, pydantic validating the caller's
  model, the kind's JSON text);
- ``models``: building the result models (``*_from_row``, kinds parsed from JSON);
- ``runner``: runners, thread hops, session bookkeeping and asyncio;
- ``store``: the rest of the facade and repositories;
- ``caller``: the bench's own loop (it builds the ``Event`` given to ``append_event``).

The layers are profiled seconds scaled to the unprofiled wall µs per call (cProfile slows
Python-heavy code more, so read them as shares). On SQLite the database threads are
profiled too (switched on and off by a job on each thread), and their layers overlap the
loop's ``wait``: the columns then add up to more than the wall time.

The raw contenders send the store's own compiled SQL (taken from its prepared statements):
asyncpg with its statement cache on PostgreSQL, ``sqlite3`` behind one thread hop (a
dedicated thread and ``call_soon_threadsafe``) on SQLite, one transaction per call.
``get_events`` raw decodes every row into a tuple of Python objects (UUIDs, datetimes, the
kind as a dict from ``json.loads``), not into typed models.

``--layers`` peels ``get_execution`` on PostgreSQL layer by layer instead (unprofiled):
raw asyncpg, inside a task, through the greenlet bridge, the statement layer, the session
and model, the runner (with and without its kept connections), the facade.

Usage::

    .venv/bin/python bench/profile.py [--only sqlite|postgresql] [--calls 400] [--rounds 3]
    .venv/bin/python bench/profile.py --layers [--calls 400] [--rounds 5]
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named profile.py, like the standard module cProfile imports: running it puts
# bench/ first on the path, so take bench/ off before importing anything else (hence E402).
# ruff: noqa: E402
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import argparse
import asyncio
import contextlib
import cProfile
import itertools
import json
import os
import pstats
import queue
import sqlite3
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import Dialect
from sqlalchemy.dialects import postgresql, sqlite

from statestore import StateStore
from statestore.db import queries
from statestore.db.schema import EventRow
from statestore.models import Event, WorkflowExecution, WorkItem
from statestore.repositories.auth import TOKEN_HASHES
from statestore.validation import dump_json

# cProfile has its standard ``profile`` now: bench/ can go back on the path for common.py.
sys.path.insert(0, str(Path(__file__).parent))
from common import KIND  # the event every bench writes

AsyncOp = Callable[[], Awaitable[Any]]

KIND_JSON = KIND.to_json_dict()
EVENTS_PER_READ = 100
QUEUE = "profile"
WORKER = "profiler"
LEASE = timedelta(seconds=30)
PG_ADMIN_URL = os.environ.get(
    "STATESTORE_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
OPERATIONS = ("append_event", "get_execution", "get_events", "validate_token", "claim_complete")
LAYERS = (
    "driver",
    "wait",
    "sqlalchemy",
    "bridge",
    "statement",
    "validation",
    "models",
    "runner",
    "store",
    "caller",
)


# ---------------------------------------------------------------- the store's own SQL


@dataclass(frozen=True)
class Sql:
    """A statement of the store, compiled for a dialect: its SQL and parameter order."""

    text: str
    names: tuple[str, ...]
    bind: tuple[Any, ...]
    defaults: dict[str, Any]

    def args(self, **values: Any) -> tuple[Any, ...]:
        """Positional arguments in driver form (the column types' bind processors)."""
        values = {**self.defaults, **values}
        pairs = zip(self.names, self.bind, strict=True)
        return tuple(
            values[name] if process is None else process(values[name]) for name, process in pairs
        )

    def plain(self, **values: Any) -> tuple[Any, ...]:
        """Positional arguments as given (asyncpg takes Python values)."""
        values = {**self.defaults, **values}
        return tuple(values[name] for name in self.names)


def store_sql(dialect: Dialect, build: Callable[..., Any], *shape: Any) -> Sql:
    compiled = queries._prepared(build, False, *shape)._compiled_for(dialect)
    return Sql(compiled.sql, compiled.names, compiled.bind, compiled.defaults)


# ---------------------------------------------------------------- seeding


@dataclass
class Seeded:
    append_ids: list[uuid.UUID]
    read_ids: list[uuid.UUID]
    token: str
    queue_execution: uuid.UUID


def new_execution() -> WorkflowExecution:
    return WorkflowExecution(workflow_id="profile", workflow_version="1", initial_input={"a": 1})


async def seed(store: StateStore) -> Seeded:
    append_ids, read_ids = [], []
    for target, count in ((append_ids, 20), (read_ids, 10)):
        for _ in range(count):
            execution = new_execution()
            await store.create_execution(execution)
            target.append(execution.execution_id)
    for execution_id in read_ids:
        await store.append_events(execution_id, [KIND] * EVENTS_PER_READ)
    token, _record = await store.create_token("profile", "viewer")
    queued = new_execution()
    await store.create_execution(queued)
    return Seeded(append_ids, read_ids, token, queued.execution_id)


async def top_up(store: StateStore, seeded: Seeded, count: int) -> None:
    for _ in range(count):
        await store.enqueue_work_item(
            WorkItem(execution_id=seeded.queue_execution, node_id="n", queue_type=QUEUE)
        )


# ---------------------------------------------------------------- store contenders


def store_ops(store: StateStore, seeded: Seeded) -> dict[str, AsyncOp]:
    append_ids = itertools.cycle(seeded.append_ids)
    read_ids = itertools.cycle(seeded.read_ids)

    async def append_event() -> None:
        assert await store.append_event(Event(execution_id=next(append_ids), kind=KIND)) > 0

    async def get_execution() -> None:
        assert await store.get_execution(next(read_ids)) is not None

    async def get_events() -> None:
        assert len(await store.get_events(next(read_ids))) == EVENTS_PER_READ

    async def validate_token() -> None:
        assert await store.validate_token(seeded.token) is not None

    async def claim_complete() -> None:
        item = await store.claim_work_item(WORKER, [QUEUE])
        assert item is not None
        await store.complete_work_item(item.id, worker_id=WORKER, lease_fence=item.lease_fence)

    return {
        "append_event": append_event,
        "get_execution": get_execution,
        "get_events": get_events,
        "validate_token": validate_token,
        "claim_complete": claim_complete,
    }


def check_token(secret: str, row: Any, now: datetime) -> bool:
    """What the store checks once it has the token's row (the same passlib verify)."""
    valid, _new = TOKEN_HASHES.verify_and_update(secret, row["secret_hash"])
    expires_at = row["expires_at"]
    unexpired = expires_at is None or expires_at > now
    return bool(valid) and row["revoked_at"] is None and unexpired and row["tenant_active"]


def token_stand_in() -> dict[str, Any]:
    """Values for the token statement's stand-in parameters (unused: the token exists)."""
    now = datetime.now(UTC)
    return {
        "s_id": uuid.UUID(int=0),
        "s_name": "",
        "s_role": "viewer",
        "s_secret_hash": "",
        "s_created_at": now,
        "s_tenant_id": "",
        "s_tenant_status": "archived",
    }


# ---------------------------------------------------------------- PostgreSQL raw


def pg_raw_ops(conn: asyncpg.Connection, seeded: Seeded) -> dict[str, AsyncOp]:
    dialect = postgresql.asyncpg.dialect()  # type: ignore[attr-defined]
    append = store_sql(dialect, queries._append_one, False)
    execution = store_sql(dialect, queries._execution)
    events = store_sql(dialect, queries._events_since)
    token = store_sql(dialect, queries._token)
    claim = store_sql(dialect, queries._claim, 1)
    complete = store_sql(dialect, queries._complete, 1, True, True)
    append_ids = itertools.cycle(seeded.append_ids)
    read_ids = itertools.cycle(seeded.read_ids)
    kind_text = dump_json(KIND_JSON)
    stand_in = token_stand_in()
    token_id = uuid.UUID(seeded.token.split("_", 2)[1])
    secret = seeded.token.split("_", 2)[2]

    async def append_event() -> None:
        execution_id = next(append_ids)
        values = {"id": uuid.uuid4(), "p_execution_id": execution_id, "p_count": 1}
        values |= {"event_type": "node_completed", "created_at": datetime.now(UTC)}
        args = tuple(values.get(n, kind_text) for n in append.names if n != "p_tenant")
        assert await conn.fetchval(append.text, *args) > 0

    async def get_execution() -> None:
        assert await conn.fetchrow(execution.text, next(read_ids)) is not None

    async def get_events() -> None:
        rows = await conn.fetch(events.text, next(read_ids), 0, queries.NO_LIMIT)
        decoded = [(*row.values(), json.loads(row["kind"])) for row in rows]
        assert len(decoded) == EVENTS_PER_READ

    async def validate_token() -> None:
        values = {**stand_in, "p_id": token_id}
        row = await conn.fetchrow(token.text, *token.plain(**values))
        assert check_token(secret, row, datetime.now(UTC))

    async def claim_complete() -> None:
        now = datetime.now(UTC)
        values = {"p_type0": QUEUE, "p_now": now, "p_limit": 1, "p_worker": WORKER}
        values["p_expires"] = now + LEASE
        rows = await conn.fetch(claim.text, *claim.plain(**values))
        assert len(rows) == 1
        values = {"p_id0": rows[0]["id"], "p_worker0": WORKER, "p_fence0": rows[0]["lease_fence"]}
        values["p_now"] = datetime.now(UTC)
        assert await conn.fetch(complete.text, *complete.plain(**values))

    return {
        "append_event": append_event,
        "get_execution": get_execution,
        "get_events": get_events,
        "validate_token": validate_token,
        "claim_complete": claim_complete,
    }


# ---------------------------------------------------------------- SQLite raw


class OneHop:
    """One database thread; each call is one hop there and back (``call_soon_threadsafe``)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, loop, future = job
            try:
                result, error = fn(), None
            except BaseException as exc:  # handed to the caller
                result, error = None, exc
            loop.call_soon_threadsafe(_settle, future, result, error)

    def run(self, fn: Callable[[], Any]) -> Awaitable[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((fn, loop, future))
        return future

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join()


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def sqlite_raw_ops(hop: OneHop, seeded: Seeded) -> dict[str, AsyncOp]:
    dialect = sqlite.pysqlite.dialect()  # type: ignore[attr-defined]
    reserve = store_sql(dialect, queries._reserve, False)
    insert = store_sql(dialect, queries._insert, EventRow)
    execution = store_sql(dialect, queries._execution)
    events = store_sql(dialect, queries._events_since)
    token = store_sql(dialect, queries._token)
    claim = store_sql(dialect, queries._claim, 1)
    complete = store_sql(dialect, queries._complete, 1, True, True)
    conn = hop.conn
    append_ids = itertools.cycle(seeded.append_ids)
    read_ids = itertools.cycle(seeded.read_ids)
    kind_text = dump_json(KIND_JSON)
    stand_in = token_stand_in()
    token_id = uuid.UUID(seeded.token.split("_", 2)[1])
    secret = seeded.token.split("_", 2)[2]

    def transaction(body: Callable[[], Any], write: bool) -> Any:
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = body()
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    def append_body(execution_id: uuid.UUID) -> int:
        now = datetime.now(UTC)
        row = conn.execute(
            reserve.text, reserve.args(p_execution_id=execution_id, p_count=1)
        ).fetchone()
        args = insert.args(
            id=uuid.uuid4(),
            tenant_id=row[1],
            execution_id=execution_id,
            sequence=row[0],
            event_type="node_completed",
            kind=None,
            created_at=now,
        )
        named = zip(insert.names, args, strict=True)
        args = tuple(kind_text if name == "kind" else arg for name, arg in named)
        conn.execute(insert.text, args)
        return int(row[0])

    async def append_event() -> None:
        execution_id = next(append_ids)
        assert await hop.run(lambda: transaction(lambda: append_body(execution_id), True)) > 0

    async def get_execution() -> None:
        args = execution.args(p_id=next(read_ids))
        body = lambda: conn.execute(execution.text, args).fetchone()  # noqa: E731
        assert await hop.run(lambda: transaction(body, False)) is not None

    def decode_events(rows: list[Any]) -> list[Any]:
        # id, execution_id, sequence, event_type, kind, created_at, tenant_id, position
        return [
            (
                uuid.UUID(row[0]),
                uuid.UUID(row[1]),
                row[2],
                row[3],
                json.loads(row[4]),
                datetime.fromisoformat(row[5]),
                row[6],
                row[7],
            )
            for row in rows
        ]

    async def get_events() -> None:
        args = events.args(p_id=next(read_ids), p_since=0, p_limit=queries.NO_LIMIT)
        body = lambda: decode_events(conn.execute(events.text, args).fetchall())  # noqa: E731
        assert len(await hop.run(lambda: transaction(body, False))) == EVENTS_PER_READ

    def token_body() -> bool:
        args = token.args(**stand_in, p_id=token_id)
        cursor = conn.execute(token.text, args)
        names = [d[0] for d in cursor.description]
        row = dict(zip(names, cursor.fetchone(), strict=True))
        row["tenant_active"] = bool(row["tenant_active"])
        if row["expires_at"] is not None:
            row["expires_at"] = datetime.fromisoformat(row["expires_at"]).replace(tzinfo=UTC)
        return check_token(secret, row, datetime.now(UTC))

    async def validate_token() -> None:
        assert await hop.run(lambda: transaction(token_body, False))

    def claim_body() -> Any:
        now = datetime.now(UTC)
        args = claim.args(
            p_type0=QUEUE, p_now=now, p_limit=1, p_worker=WORKER, p_expires=now + LEASE
        )
        rows = conn.execute(claim.text, args).fetchall()
        assert len(rows) == 1
        return rows[0]

    def complete_body(item_id: str, fence: int) -> None:
        args = complete.args(
            p_id0=uuid.UUID(item_id), p_worker0=WORKER, p_fence0=fence, p_now=datetime.now(UTC)
        )
        assert conn.execute(complete.text, args).fetchall()

    item_columns = [c.key for c in queries.row_columns(queries.WorkItemRow)]
    at_id, at_fence = item_columns.index("id"), item_columns.index("lease_fence")

    async def claim_complete() -> None:
        row = await hop.run(lambda: transaction(claim_body, True))
        await hop.run(lambda: transaction(lambda: complete_body(row[at_id], row[at_fence]), True))

    return {
        "append_event": append_event,
        "get_execution": get_execution,
        "get_events": get_events,
        "validate_token": validate_token,
        "claim_complete": claim_complete,
    }


# ---------------------------------------------------------------- timing and profiling


async def per_call_us(op: AsyncOp, calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        await op()
    return (time.perf_counter_ns() - start) / calls / 1000


def layer_of(path: str, name: str) -> str | None:
    """The layer a function belongs to by itself, or ``None`` (shared code: its callers
    decide)."""
    if path == "~":
        if "epoll" in name or "select" in name:
            return "wait"
        if "SimpleQueue" in name or "acquire" in name:
            return "idle"  # a database thread waiting for work (not part of a call)
        if "sqlite3" in name:
            return "driver"
        if "greenlet" in name:
            return "bridge"
        return None
    if "/asyncpg/" in path:
        return "driver"
    if "_concurrency_py3k" in path or "dialects/postgresql/asyncpg" in path:
        return "bridge"
    if "/greenlet/" in path:
        return "bridge"
    if "/sqlalchemy/" in path:
        return "sqlalchemy"
    if "/statestore/validation" in path:
        return "validation"
    if "/statestore/models" in path:
        return None  # validators: input or output, by caller
    if name in ("event_from_row", "execution_from_row", "load_stored_kind", "_token_model"):
        return "models"
    if name.endswith("_from_row") or name.startswith("item_from"):
        return "models"
    if name in ("coerce_model", "parse_event_kind", "check_str_keys", "json_text", "to_json_dict"):
        return "validation"
    if "/statestore/db/driver" in path or "/statestore/db/queries" in path:
        return "statement"
    if "/statestore/db/" in path or "/asyncio/" in path or "/threading" in path:
        return "runner"
    if "/statestore/" in path:
        return "store"
    if path.endswith("bench/profile.py"):
        return "caller"
    return None


def split(stats: pstats.Stats) -> dict[str, float]:
    """Every function's own time by layer (shared functions: by their callers)."""
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    memo: dict[Any, dict[str, float]] = {}

    def shares(func: Any, seen: frozenset[Any]) -> dict[str, float]:
        """How ``func``'s time divides between layers (fractions summing to 1)."""
        if func in memo:
            return memo[func]
        path, _line, name = func
        own = layer_of(path, name)
        if own is not None:
            return {own: 1.0}
        callers = table.get(func, (0, 0, 0, 0, {}))[4]
        total = sum(c[3] for c in callers.values()) or 0.0
        result: dict[str, float] = defaultdict(float)
        if total == 0 or func in seen:
            result["store"] = 1.0
        else:
            for caller, c in callers.items():
                for layer, fraction in shares(caller, seen | {func}).items():
                    result[layer] += fraction * c[3] / total
        memo[func] = dict(result)
        return memo[func]

    times: dict[str, float] = defaultdict(float)
    for func, (_cc, _nc, tt, _ct, _callers) in table.items():
        if func[2] in ("<method 'disable' of '_lsprof.Profiler' objects>",):
            continue
        for layer, fraction in shares(func, frozenset()).items():
            times[layer] += tt * fraction
            if DEBUG and layer == DEBUG and tt * fraction > 0.002:
                print(f"  {layer}: {tt * fraction:.4f} {func}", file=sys.stderr)
    return times


DEBUG = os.environ.get("PROFILE_DEBUG_LAYER")


async def on_store_threads(store: StateStore, fn: Callable[[], None]) -> None:
    """Run ``fn`` once on each of a SQLite store's database threads (the writer and every
    reader: as many reader jobs as readers, each waiting for the others)."""
    runner = store._backend.runner  # type: ignore[attr-defined]
    loop = asyncio.get_running_loop()
    await runner.writer.run(lambda _c, _s: fn(), loop)
    readers = runner.readers
    if readers is not None:
        barrier = threading.Barrier(readers.size)

        def each(_c: Any, _s: Any) -> None:
            fn()
            barrier.wait(timeout=30)

        await asyncio.gather(*(readers.run(each, loop) for _ in range(readers.size)))


class ThreadProfiles:
    """A cProfile per database thread of a SQLite store, switched on and off by a job on
    that thread (a profile only sees the thread it was enabled in)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.profiles: dict[int, cProfile.Profile] = {}

    async def enable(self) -> None:
        def enable() -> None:
            profile = cProfile.Profile()
            self.profiles[threading.get_ident()] = profile
            profile.enable()

        await on_store_threads(self.store, enable)

    async def disable(self) -> None:
        await on_store_threads(self.store, lambda: self.profiles[threading.get_ident()].disable())


async def profile_calls(op: AsyncOp, calls: int) -> tuple[pstats.Stats, float]:
    """``calls`` calls of ``op`` under cProfile (this thread); the stats and the wall time."""
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    for _ in range(calls):
        await op()
    profile.disable()
    return pstats.Stats(profile), time.perf_counter() - started


Profiler = Callable[[int], Awaitable[tuple[pstats.Stats, float]]]
"""Profiles ``n`` calls of the store's operation: the stats and the profiled wall time."""


@dataclass
class Row:
    database: str
    operation: str
    store_us: float
    raw_us: float
    store_cpu_us: float
    raw_cpu_us: float
    layers: dict[str, float]

    @property
    def ratio(self) -> float:
        return self.raw_us / self.store_us


async def timed(op: AsyncOp, calls: int) -> tuple[float, float]:
    """(wall µs, CPU µs of this process) per call."""
    cpu = time.process_time_ns()
    wall = await per_call_us(op, calls)
    return wall, (time.process_time_ns() - cpu) / calls / 1000


async def cell(
    database: str,
    operation: str,
    store_op: AsyncOp,
    raw_op: AsyncOp,
    calls: int,
    rounds: int,
    before: Callable[[int], Awaitable[None]] | None,
    profiler: Profiler,
) -> Row:
    store_times: list[tuple[float, float]] = []
    raw_times: list[tuple[float, float]] = []
    for _ in range(rounds):
        for op, into in ((store_op, store_times), (raw_op, raw_times)):
            if before is not None:
                await before(calls)
            into.append(await timed(op, calls))
    if before is not None:
        await before(calls)
    stats, wall = await profiler(calls)
    profiled = split(stats)
    # The least disturbed round (this machine is shared); CPU from the same round.
    store_us, store_cpu = min(store_times)
    raw_us, raw_cpu = min(raw_times)
    # Profiled seconds → unprofiled µs per call: every layer shrinks by the same factor.
    scale = store_us / (wall or 1.0)
    layers = {layer: scale * profiled.get(layer, 0.0) for layer in LAYERS}
    return Row(database, operation, store_us, raw_us, store_cpu, raw_cpu, layers)


# ---------------------------------------------------------------- the databases


async def cells(
    database: str,
    store: StateStore,
    seeded: Seeded,
    raw_side: dict[str, AsyncOp],
    size: tuple[int, int, set[str]],
    profile: Callable[[AsyncOp, int], Awaitable[tuple[pstats.Stats, float]]],
) -> list[Row]:
    """One row per operation in ``size``'s set: the store's call against ``raw_side``'s,
    ``size`` = (calls, rounds, operations); the queue is topped up before each claim run."""
    calls, rounds, only = size
    store_side = store_ops(store, seeded)

    async def before(count: int) -> None:
        await top_up(store, seeded, count)

    rows: list[Row] = []
    for operation in OPERATIONS:
        if operation not in only:
            continue
        hook = before if operation == "claim_complete" else None
        rows.append(
            await cell(
                database,
                operation,
                store_side[operation],
                raw_side[operation],
                calls,
                rounds,
                hook,
                lambda n, op=store_side[operation]: profile(op, n),
            )
        )
        progress(rows[-1])
    return rows


async def postgresql_rows(calls: int, rounds: int, only: set[str]) -> list[Row]:
    name = f"statestore_profile_{os.getpid()}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    await admin.execute(f"CREATE DATABASE {name}")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    rows: list[Row] = []
    try:
        store = await StateStore.open(url)
        conn = await asyncpg.connect(url)
        try:
            seeded = await seed(store)
            await conn.execute("ANALYZE")
            rows += await cells(
                "postgresql",
                store,
                seeded,
                pg_raw_ops(conn, seeded),
                (calls, rounds, only),
                profile_calls,
            )
        finally:
            await conn.close()
            await store.close()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
    return rows


async def profile_sqlite(store: StateStore, op: AsyncOp, calls: int) -> tuple[pstats.Stats, float]:
    """Profile ``calls`` calls on the event loop and on the store's database threads."""
    threads = ThreadProfiles(store)
    await threads.enable()
    stats, wall = await profile_calls(op, calls)
    await threads.disable()
    for profile in threads.profiles.values():
        with contextlib.suppress(TypeError):  # a thread that ran nothing
            stats.add(profile)
    return stats, wall


async def sqlite_rows(calls: int, rounds: int, only: set[str]) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "profile.db"
        store = await StateStore.open(f"sqlite:///{path}")
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA foreign_keys=ON")
        hop = OneHop(conn)
        try:
            seeded = await seed(store)
            rows += await cells(
                "sqlite",
                store,
                seeded,
                sqlite_raw_ops(hop, seeded),
                (calls, rounds, only),
                lambda op, n: profile_sqlite(store, op, n),
            )
        finally:
            hop.stop()
            conn.close()
            await store.close()
    return rows


async def postgresql_layers(calls: int, rounds: int) -> list[tuple[str, float, float]]:
    """``get_execution`` on PostgreSQL peeled layer by layer, unprofiled: each step adds one
    layer of the store's path to the one before, so the differences are what each costs."""
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.util import await_

    from statestore.db import postgres_runner
    from statestore.db.runner import Call, new_session

    name = f"statestore_layers_{os.getpid()}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    await admin.execute(f"CREATE DATABASE {name}")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        store = await StateStore.open(url)
        conn = await asyncpg.connect(url)
        engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://"))
        held = await engine.connect()
        await held.execution_options(isolation_level="AUTOCOMMIT")
        stack = contextlib.AsyncExitStack()
        try:
            seeded = await seed(store)
            ids = itertools.cycle(seeded.read_ids)
            statement = queries._prepared(queries._execution, False)
            sql = statement._compiled_for(held.sync_engine.dialect).sql
            runner = store._backend.runner  # type: ignore[attr-defined]
            scope = store._scope  # type: ignore[attr-defined]
            get = store.executions.get  # type: ignore[attr-defined]

            async def raw() -> None:
                await conn.fetchrow(sql, next(ids))

            async def raw_in_task() -> None:
                await asyncio.shield(asyncio.ensure_future(conn.fetchrow(sql, next(ids))))

            async def bridge_exec_driver_sql() -> None:
                execution_id = next(ids)
                await held.run_sync(lambda c: c.exec_driver_sql(sql, (execution_id,)).fetchall())

            async def bridge_direct() -> None:
                execution_id = next(ids)

                def fetch(c: Any) -> Any:
                    adapted = c.connection.dbapi_connection
                    return await_(adapted._connection.fetch(sql, execution_id))

                await held.run_sync(fetch)

            async def bridge_statement() -> None:
                execution_id = next(ids)
                await held.run_sync(lambda c: statement.execute(c, {"p_id": execution_id}))

            session = new_session()  # the runner reuses its sessions too

            async def bridge_operation() -> None:
                op = Call(get, (next(ids),))
                await held.run_sync(postgres_runner._transaction, op, scope, True, session)

            async def runner_read() -> None:
                await runner.read(Call(get, (next(ids),)), scope)

            async def facade() -> None:
                await store.get_execution(next(ids))

            # The same runner without kept connections: every call checks one out of the
            # pool and returns it.
            unkept = await StateStore.open(url)
            stack.push_async_callback(unkept.close)
            unkept_runner = unkept._backend.runner  # type: ignore[attr-defined]
            unkept_runner._keep_idle = 0
            unkept_get = unkept.executions.get  # type: ignore[attr-defined]
            await unkept.get_execution(seeded.read_ids[0])

            async def runner_read_unkept() -> None:
                await unkept_runner.read(Call(unkept_get, (next(ids),)), scope)

            steps: list[tuple[str, AsyncOp]] = [
                ("asyncpg fetchrow (raw)", raw),
                ("+ a task and shield around it", raw_in_task),
                ("greenlet bridge + exec_driver_sql", bridge_exec_driver_sql),
                ("greenlet bridge + asyncpg fetch (no DBAPI adapter)", bridge_direct),
                ("greenlet bridge + DriverStatement (DBAPI cursor adapter)", bridge_statement),
                ("+ session, repository, model", bridge_operation),
                ("+ PostgresRunner.read (task, shield, kept connection)", runner_read),
                ("  the same, no kept connection (pool checkout per call)", runner_read_unkept),
                ("+ facade (backend, telemetry)", facade),
            ]
            results: dict[str, list[tuple[float, float]]] = defaultdict(list)
            for _ in range(rounds):
                for label, op in steps:
                    await per_call_us(op, calls // 4)  # warm
                    results[label].append(await timed(op, calls))
            return [(label, *min(results[label])) for label, _op in steps]
        finally:
            await stack.aclose()
            await held.close()
            await engine.dispose()
            await conn.close()
            await store.close()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


def progress(row: Row) -> None:
    print(
        f"{row.database:10} {row.operation:15} store {row.store_us:7.0f} µs"
        f"  raw {row.raw_us:7.0f} µs  ratio {row.ratio:.2f}"
        f"  (CPU µs: store {row.store_cpu_us:.0f}, raw {row.raw_cpu_us:.0f})",
        file=sys.stderr,
        flush=True,
    )


def markdown(rows: list[Row], command: str) -> str:
    head = ["database", "operation", "store µs", "raw µs", "ratio", "store CPU µs", "raw CPU µs"]
    head += list(LAYERS)
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|",
    ]
    for row in rows:
        cells = [
            row.database,
            row.operation,
            f"{row.store_us:.0f}",
            f"{row.raw_us:.0f}",
            f"{row.ratio:.2f}",
            f"{row.store_cpu_us:.0f}",
            f"{row.raw_cpu_us:.0f}",
            *(f"{row.layers[layer]:.0f}" for layer in LAYERS),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return f"Produced by `{command}`.\n\n" + "\n".join(lines) + "\n"


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("sqlite", "postgresql"))
    parser.add_argument("--calls", type=int, default=400, help="calls per round and per side")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--operations", nargs="*", default=list(OPERATIONS), choices=OPERATIONS)
    parser.add_argument(
        "--layers", action="store_true", help="get_execution on PostgreSQL, layer by layer"
    )
    args = parser.parse_args(argv)
    only = set(args.operations)
    if args.layers:
        print("| path | µs per call | CPU µs per call |\n|---|---:|---:|")
        for label, us, cpu in await postgresql_layers(args.calls, args.rounds):
            print(f"| {label} | {us:.0f} | {cpu:.0f} |")
        return 0
    rows: list[Row] = []
    if args.only in (None, "postgresql"):
        rows += await postgresql_rows(args.calls, args.rounds, only)
    if args.only in (None, "sqlite"):
        rows += await sqlite_rows(args.calls, args.rounds, only)
    command = "bench/profile.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(markdown(rows, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
