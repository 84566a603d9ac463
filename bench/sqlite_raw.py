"""SQLite: the store against stdlib ``sqlite3`` running the store's statements.

- ``raw``: ``sqlite3`` behind exactly one thread hop from asyncio (a dedicated thread, a
  queue in and ``call_soon_threadsafe`` out), one transaction per call: the fair async floor.
- ``gc`` (concurrent rows): raw group commit, one database thread draining up to 64 waiting
  calls into one ``BEGIN IMMEDIATE … COMMIT``, a SAVEPOINT per call, one loop wake-up per
  batch.
- ``sync`` (one caller, a reference): the same calls made inline on the event loop's thread,
  no hop, never yielding.

:class:`SqliteRaw` runs the store's statements on one connection; :func:`layer` puts it
behind one of these layers as a :class:`cells.Side`.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import tempfile
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import otel
from cells import (
    APPEND,
    APPEND_FULL,
    KIND_JSON,
    KIND_TYPE,
    LEASE,
    SINGLE,
    SQLITE_CALLERS,
    TENANT,
    Seeded,
    Side,
    StoreSide,
    appender,
    claimer,
    event_decoder,
    execution_row,
    item_row,
    queue_cell,
    seed,
    single_ops,
    split_token,
    token_ok,
)
from common import check, dumps, progress
from harness import Cell, Contender, measure
from statements import CLAIM_BATCH, RawStatement, bulk_completion, compiled

from statestore import StateStore
from statestore.repositories.auth import STAND_IN

T = TypeVar("T")
GROUP_COMMIT_MAX = 64


def sqlite_connect(path: Path, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """A stdlib connection set up like the store's: autocommit mode (we BEGIN ourselves),
    WAL, synchronous=NORMAL (or FULL), foreign keys, a busy timeout."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in ("busy_timeout = 30000", "journal_mode = WAL", f"synchronous = {synchronous}"):
        conn.execute(f"PRAGMA {pragma}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def sqlite_time(moment: datetime) -> str:
    """A timestamp as the store writes it on SQLite: naive UTC text, microseconds."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def sqlite_now() -> str:
    return sqlite_time(datetime.now(UTC))


def from_sqlite_time(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def in_transaction(conn: sqlite3.Connection, body: Callable[[], T]) -> T:
    """``body`` in its own ``BEGIN IMMEDIATE … COMMIT``, as the store's writer runs a call."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = body()
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


class SqliteRaw:
    """The store's statements (bench/statements.py) through one ``sqlite3`` connection, the
    values in the form the store stores them: ids as 32 hex digits, times as naive UTC text,
    JSON as text. No method opens a transaction: the caller's layer (:class:`Through`) does."""

    def __init__(self, conn: sqlite3.Connection, sql: dict[str, RawStatement]) -> None:
        self.conn, self.sql = conn, sql
        self._reserve = sql["reserve"].binder("p_execution_id", "p_count")
        self._events = sql["events"].binder("p_id", "p_since", "p_limit")
        self._decode = event_decoder(sql["events"].columns, uuid.UUID, from_sqlite_time)
        self._claim = sql["claim"].binder("p_type0", "p_now", "p_limit", "p_worker", "p_expires")
        self._complete = sql["complete"].binder("p_id0", "p_worker0", "p_fence0", "p_now")
        self._id, self._fence = sql["claim"].column("id"), sql["claim"].column("lease_fence")
        self._stand_in = {k: to_sqlite(v) for k, v in STAND_IN.items()}

    def append(self, execution_id: uuid.UUID) -> int:
        """append_event: bump the execution's sequence, insert the event."""
        sequence, tenant_id = self.conn.execute(
            self.sql["reserve"].sql, self._reserve(execution_id.hex, 1)
        ).fetchone()
        event = {
            "id": uuid.uuid4().hex,
            "execution_id": execution_id.hex,
            "sequence": sequence,
            "event_type": KIND_TYPE,
            "kind": dumps(KIND_JSON),
            "created_at": sqlite_now(),
            "tenant_id": tenant_id,
        }
        self.conn.execute(self.sql["insert_event"].sql, self.sql["insert_event"].args(event))
        return int(sequence)

    def get_events(self, execution_id: uuid.UUID) -> list[dict[str, Any]]:
        args = self._events(execution_id.hex, 0, 2**62)
        rows = self.conn.execute(self.sql["events"].sql, args)
        return self._decode(rows.fetchall())

    def create_execution(self) -> None:
        """create_execution: the tenant check, then the insert."""
        sql = self.sql
        tenant = self.conn.execute(sql["tenant"].sql, (TENANT,)).fetchone()
        check(tenant is not None and tenant[sql["tenant"].column("active")], "tenant inactive")
        now = sqlite_now()
        row = execution_row(uuid.uuid4().hex, now)
        self.conn.execute(sql["insert_execution"].sql, sql["insert_execution"].args(row))

    def get_execution(self, execution_id: uuid.UUID) -> Any:
        return self.conn.execute(self.sql["execution"].sql, (execution_id.hex,)).fetchone()

    def claim(self, queue_type: str, worker: str, limit: int) -> list[Any]:
        now = datetime.now(UTC)
        args = self._claim(queue_type, sqlite_time(now), limit, worker, sqlite_time(now + LEASE))
        return self.conn.execute(self.sql["claim"].sql, args).fetchall()

    def complete(self, rows: Sequence[Any], worker: str) -> int:
        """Complete claimed rows (the store's single or bulk statement); how many were still
        held by ``worker``."""
        now = sqlite_now()
        if len(rows) == 1:
            args = self._complete(rows[0][self._id], worker, rows[0][self._fence], now)
            return len(self.conn.execute(self.sql["complete"].sql, args).fetchall())
        sql, args = bulk_completion(self.sql, rows, worker, now, self._id, self._fence)
        return len(self.conn.execute(sql, args).fetchall())

    def validate(self, token: str) -> bool:
        token_id, secret = split_token(token)
        statement = self.sql["token"]
        args = statement.args({**self._stand_in, "p_id": token_id.hex})
        row = self.conn.execute(statement.sql, args).fetchone()
        return token_ok(row, statement.columns, secret, sqlite_now())

    def fill(self, execution_id: uuid.UUID, queue_type: str, count: int) -> None:
        """Untimed: ``count`` pending items inserted in one transaction."""
        statement, now = self.sql["insert_item"], sqlite_now()
        rows = [
            statement.args(item_row(uuid.uuid4().hex, execution_id.hex, queue_type, now))
            for _ in range(count)
        ]
        in_transaction(self.conn, lambda: self.conn.executemany(statement.sql, rows))

    def counts(self, queue_type: str) -> list[Any]:
        return self.conn.execute(self.sql["queue_counts"].sql, (queue_type,)).fetchall()


def to_sqlite(value: Any) -> Any:
    """A value in the form the store stores it on SQLite."""
    if isinstance(value, uuid.UUID):
        return value.hex
    return sqlite_time(value) if isinstance(value, datetime) else value


# ------------------------------------------------------------------ the layers


class Submit(Protocol):
    """How a raw layer runs a call's statements from asyncio, in one transaction."""

    def __call__(self, body: Callable[[], T], /) -> Awaitable[T]: ...


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if not future.done():
        future.set_result(result) if error is None else future.set_exception(error)


Job = tuple[asyncio.Future[Any], Callable[[], Any]]
Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]


class DbThread:
    """A dedicated database thread: each ``run(fn)`` is exactly one hop from the event loop
    to the thread and back (a SimpleQueue in, ``call_soon_threadsafe`` out)."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            future, fn = item
            try:
                outcome: Outcome = (future, fn(), None)
            except Exception as exc:
                outcome = (future, None, exc)
            future.get_loop().call_soon_threadsafe(_settle, *outcome)

    def run(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put((future, fn))
        return future

    async def close(self) -> None:
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)


def _settle_all(outcomes: list[Outcome]) -> None:
    for outcome in outcomes:
        _settle(*outcome)


class GroupCommitThread(DbThread):
    """Raw group commit: the thread takes every call waiting at that moment (up to 64) and
    runs them in one ``BEGIN IMMEDIATE … COMMIT``, each in its own SAVEPOINT (none for a call
    alone), then wakes the loop once for the batch. ``run(body)`` runs ``body`` without a
    transaction of its own."""

    def __init__(self, name: str, conn: sqlite3.Connection) -> None:
        self._conn = conn
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
            try:
                outcomes = in_transaction(self._conn, partial(self._run_group, group))
            except Exception as exc:
                outcomes = [(future, None, exc) for future, _fn in group]
            group[0][0].get_loop().call_soon_threadsafe(_settle_all, outcomes)

    def _run_group(self, group: list[Job]) -> list[Outcome]:
        if len(group) == 1:
            future, fn = group[0]
            return [(future, fn(), None)]
        outcomes: list[Outcome] = []
        for future, fn in group:
            self._conn.execute("SAVEPOINT call")
            try:
                outcomes.append((future, fn(), None))
            except Exception as exc:
                self._conn.execute("ROLLBACK TO call")
                outcomes.append((future, None, exc))
            self._conn.execute("RELEASE call")
        return outcomes


class Through:
    """A :class:`SqliteRaw`'s calls made from asyncio through a layer (a :class:`Side`):
    writes by ``write`` (which gives them a transaction), reads by ``read``."""

    def __init__(self, raw: SqliteRaw, write: Submit, read: Submit) -> None:
        self.raw, self.write, self.read = raw, write, read

    def append(self, execution_id: uuid.UUID) -> Awaitable[int]:
        return self.write(partial(self.raw.append, execution_id))

    def get_events(self, execution_id: uuid.UUID) -> Awaitable[list[dict[str, Any]]]:
        return self.read(partial(self.raw.get_events, execution_id))

    def create_execution(self) -> Awaitable[None]:
        return self.write(self.raw.create_execution)

    def get_execution(self, execution_id: uuid.UUID) -> Awaitable[Any]:
        return self.read(partial(self.raw.get_execution, execution_id))

    def claim(self, queue_type: str, worker: str, limit: int) -> Awaitable[list[Any]]:
        return self.write(partial(self.raw.claim, queue_type, worker, limit))

    def complete(self, claimed: Sequence[Any], worker: str) -> Awaitable[int]:
        return self.write(partial(self.raw.complete, claimed, worker))

    def validate(self, token: str) -> Awaitable[bool]:
        return self.read(partial(self.raw.validate, token))


async def _inline(body: Callable[[], T]) -> T:
    return body()


def layer(
    stack: contextlib.AsyncExitStack,
    path: Path,
    synchronous: str,
    sql: dict[str, RawStatement],
    kind: str,
) -> Through:
    """A raw connection at ``synchronous`` and how calls reach it: ``hop``, a thread of its
    own, one transaction per call; ``gc``, the group-commit thread; ``inline``, called on
    the event loop's thread, never yielding (the sync reference)."""
    conn = sqlite_connect(path, synchronous)
    stack.callback(conn.close)

    def in_own_transaction(body: Callable[[], T]) -> T:
        return in_transaction(conn, body)

    if kind == "inline":
        return Through(
            SqliteRaw(conn, sql), lambda body: _inline(partial(in_own_transaction, body)), _inline
        )
    name = f"bench-sqlite-{kind}-{synchronous}"
    thread = GroupCommitThread(name, conn) if kind == "gc" else DbThread(name)
    stack.push_async_callback(thread.close)
    if kind == "gc":
        return Through(SqliteRaw(conn, sql), thread.run, thread.run)
    return Through(
        SqliteRaw(conn, sql), lambda body: thread.run(partial(in_own_transaction, body)), thread.run
    )


# ------------------------------------------------------------------ the cells


async def bench_sqlite(duration: float, info: dict[str, str]) -> list[Cell]:
    """Every SQLite cell, on a temporary file (WAL, synchronous=NORMAL, as the store sets
    it; the FULL row at synchronous=FULL)."""
    info["sqlite"] = sqlite3.sqlite_version
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="statestore-bench-") as folder:
        path = Path(folder) / "bench.db"
        progress(f"sqlite: {path} (WAL, synchronous=NORMAL): migrating and seeding")
        async with contextlib.AsyncExitStack() as stack:
            store = await StateStore.open(f"sqlite:///{path}")
            stack.push_async_callback(store.close)
            seeded = await seed(store)
            token, _record = await store.create_token("bench", "viewer")
            sql = compiled(store.engine.dialect)
            hop, gc, sync = (layer(stack, path, "NORMAL", sql, k) for k in ("hop", "gc", "inline"))
            sync.raw.conn.execute("ANALYZE")

            sides: dict[str, Side] = {"store": StoreSide(store), "raw": hop, "sync": sync}
            ops = {label: single_ops(side, seeded, token) for label, side in sides.items()}
            for operation in SINGLE:
                contenders = [Contender(label, async_op=ops[label][operation]) for label in ops]
                cells.append(await measure("sqlite", operation, contenders, duration))
            cells.append(await append_cell(store, seeded, hop, gc, APPEND, duration))
            if otel.available():
                cells.append(await otel.otel_cell("sqlite", store, seeded, duration))

            progress("sqlite: a second store, and raw connections, at synchronous=FULL")
            async with contextlib.AsyncExitStack() as full:
                full_store = await StateStore.open(f"sqlite:///{path}", durability="FULL")
                full.push_async_callback(full_store.close)
                hop_full, gc_full = (layer(full, path, "FULL", sql, k) for k in ("hop", "gc"))
                cells.append(
                    await append_cell(full_store, seeded, hop_full, gc_full, APPEND_FULL, duration)
                )

            queue = (
                lambda queue_type, count: asyncio.to_thread(
                    sync.raw.fill, seeded.queue_execution, queue_type, count
                ),
                lambda queue_type: asyncio.to_thread(sync.raw.counts, queue_type),
            )
            for batch, callers in ((1, 1), (1, SQLITE_CALLERS), (CLAIM_BATCH, 1)):
                # With one caller the sync reference, with many raw group commit.
                other = ("gc", gc) if callers > 1 else ("sync", sync)
                claimers = {"raw": claimer([hop], batch), other[0]: claimer([other[1]], batch)}
                cells.append(
                    await queue_cell("sqlite", store, queue, claimers, batch, callers, duration)
                )
    return cells


async def append_cell(
    store: StateStore, seeded: Seeded, hop: Side, gc: Side, operation: str, duration: float
) -> Cell:
    """16 concurrent appenders, each to its own executions: the store, one transaction per
    call (raw), and raw group commit (gc)."""
    shares = seeded.shares(SQLITE_CALLERS)
    sides: dict[str, Side] = {"store": StoreSide(store), "raw": hop, "gc": gc}
    contenders = [
        Contender(label, callers=[appender(side, own) for own in shares])
        for label, side in sides.items()
    ]
    return await measure("sqlite", operation, contenders, duration, SQLITE_CALLERS)
