"""How an operation reaches the database.

An *operation* is a synchronous function ``op(session) -> result`` built by a repository.
One public call is one operation is one transaction. The runner decides where it runs:

- :class:`SqliteRunner`: one writer thread owning one connection (``BEGIN IMMEDIATE``), and a
  small pool of reader threads with their own connections (WAL lets them read beside the
  writer). Each call costs exactly one hop between the event loop and a thread; SQLAlchemy's
  async layer over aiosqlite would cost eight or nine. The writer takes jobs from a queue and
  commits every write waiting at that moment in one transaction (group commit, see
  :meth:`SqliteRunner._run_group`); repositories do not know about it.
- :class:`PostgresRunner`: ``AsyncConnection.run_sync`` over asyncpg; many connections in
  parallel, READ COMMITTED.

A store belongs to the event loop it is first used on (its futures, tasks and PostgreSQL
connections are bound to that loop); a call from another loop raises
:class:`~statestore.errors.ConfigurationError`.

Both translate every failure into :mod:`statestore.errors` (see :mod:`statestore.db.errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Pool, QueuePool
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import Session

from statestore.db.errors import sqlstate, translate
from statestore.db.tenancy import SCOPE_KEY, Scope, TenantSession
from statestore.errors import ConfigurationError, DatabaseError

T = TypeVar("T")
Operation = Callable[[Session], T]
"""A unit of repository work: runs inside one transaction, on one session."""


def _new_session(bind: Connection) -> TenantSession:
    # "rollback_only": the runner, not the session, owns the transaction on the connection.
    return TenantSession(
        bind=bind,
        expire_on_commit=False,
        autoflush=False,
        join_transaction_mode="rollback_only",
    )


def _used(session: Session) -> bool:
    return bool(session.in_transaction() or session.identity_map or session.new or session.deleted)


def run_in_session(
    connection: Connection, op: Operation[T], scope: Scope, session: TenantSession | None = None
) -> T:
    """Run ``op`` on a scoped session bound to ``connection``'s open transaction: a fresh
    one, or ``session`` re-bound to ``connection`` (a runner thread reuses its own: most
    operations, the Core hot paths, never begin a session transaction, so building and
    closing a Session for each would cost more than their own Python). Either way the
    session is clean when ``op`` starts and left clean, its scope removed."""
    if session is None:
        session = _new_session(connection)
    else:
        session.bind = connection
    session.info[SCOPE_KEY] = scope
    try:
        result = op(session)
        if _used(session):
            session.flush()
    finally:
        if _used(session):
            session.close()
        session.info.pop(SCOPE_KEY, None)  # fail closed if it were ever used outside a call
    return result


class Runner(ABC):
    """Where operations run. One per store; scoped views share it."""

    @abstractmethod
    async def write(self, op: Operation[T], scope: Scope, *, single_statement: bool = False) -> T:
        """Run ``op`` in a write transaction and commit it. ``single_statement``: ``op``
        changes the database in at most one statement (it may read before or after), so a
        runner may run it without a transaction around it."""

    @abstractmethod
    async def read(self, op: Operation[T], scope: Scope) -> T:
        """Run ``op``, which only reads: in a read transaction on a reader (SQLite), or in
        autocommit, retried once if its connection turned out dead (PostgreSQL)."""

    @abstractmethod
    async def with_connection(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` with a sync connection and no transaction opened (migrations)."""

    @abstractmethod
    async def close(self) -> None:
        """Release threads and connections. Idempotent."""


@dataclass
class _Job:
    fn: Callable[[Connection], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    transactional: bool = True


def _same_loop(bound: asyncio.AbstractEventLoop | None) -> asyncio.AbstractEventLoop:
    """The running loop, which must be the one the store was first used on: futures,
    tasks and asyncpg connections cannot move between loops (on another loop they fail
    with "another operation is in progress" or hang)."""
    loop = asyncio.get_running_loop()
    if bound is not None and loop is not bound:
        raise ConfigurationError(
            "this store is bound to the event loop it was first used on; "
            "open a separate store for each event loop"
        )
    return loop


def _idle_or_closed(connection: Connection | None) -> Connection | None:
    """After a failure: ``connection`` if the driver reports it idle (no transaction left
    open), else ``None`` after closing it. A failed COMMIT, BEGIN or ROLLBACK can leave the
    driver inside a transaction that SQLAlchemy believes ended; the next BEGIN would then
    fail, or worse, the next job would run inside the stale transaction."""
    if connection is None:
        return None
    if not (connection.invalidated or connection.closed):
        driver = connection.connection.dbapi_connection
        if driver is not None and not driver.in_transaction and not connection.in_transaction():
            return connection
    with contextlib.suppress(Exception):
        connection.invalidate()  # closes the driver connection (rolling back) and drops it
    with contextlib.suppress(Exception):
        connection.close()
    return None


def _translated(exc: BaseException) -> BaseException:
    error = translate(exc)
    if error is not exc:
        error.__cause__ = exc
    return error


_Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]


def _deliver(job: _Job, result: Any, error: BaseException | None) -> None:
    _deliver_all([job], [(result, error)])


def _deliver_all(jobs: list[_Job], outcomes: list[tuple[Any, BaseException | None]]) -> None:
    """Hand each job its outcome: one wake-up per event loop, however many jobs it waits on
    (a group commit typically resolves a dozen callers of one loop)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for job, (result, error) in zip(jobs, outcomes, strict=True):
        by_loop.setdefault(job.loop, []).append((job.future, result, error))
    for loop, resolved in by_loop.items():
        # RuntimeError: the caller's event loop is closed; nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve_all, resolved)


def _resolve_all(resolved: list[_Outcome]) -> None:
    for future, result, error in resolved:
        if future.done():  # the caller was cancelled; the write may still have committed
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


@dataclass
class SqliteRunner(Runner):
    """One writer thread with one connection, plus reader threads (none for ``:memory:``)."""

    writer_engine: Engine
    reader_engine: Engine | None
    readers: int = 2
    max_group: int = 64
    """At most this many waiting writes share one transaction (group commit)."""
    transactions: int = 0
    """Write transactions committed so far (with ``operations``: the group-commit ratio)."""
    operations: int = 0
    _queue: queue.SimpleQueue[_Job | None] = field(default_factory=queue.SimpleQueue)
    _thread: threading.Thread | None = None
    _read_queue: queue.SimpleQueue[_Job | None] = field(default_factory=queue.SimpleQueue)
    _reader_threads: list[threading.Thread] = field(default_factory=list)
    _local: threading.local = field(default_factory=threading.local)
    _closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None

    async def write(self, op: Operation[T], scope: Scope, *, single_statement: bool = False) -> T:
        # Every write shares the writer's group transaction, single statement or not.
        return await self._submit(lambda conn: self._run_op(conn, op, scope))

    async def read(self, op: Operation[T], scope: Scope) -> T:
        if self.reader_engine is None:
            return await self._submit(lambda conn: self._run_op(conn, op, scope))
        if self._closed:
            raise DatabaseError("the store is closed")
        self._ensure_readers()
        loop = self._loop = _same_loop(self._loop)
        future: asyncio.Future[T] = loop.create_future()
        self._read_queue.put(_Job(lambda conn: self._run_op(conn, op, scope), loop, future))
        return await future

    async def with_connection(self, fn: Callable[[Connection], T]) -> T:
        return await self._submit(fn, transactional=False)

    def _run_op(self, connection: Connection, op: Operation[T], scope: Scope) -> T:
        """On a runner thread: ``op`` on that thread's own reused session."""
        session: TenantSession | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = _new_session(connection)
        return run_in_session(connection, op, scope, session)

    def _ensure_readers(self) -> None:
        if not self._reader_threads:
            with self._lock:
                if not self._reader_threads:
                    for number in range(self.readers):
                        thread = threading.Thread(
                            target=self._reader_loop,
                            name=f"statestore-reader-{number}",
                            daemon=True,
                        )
                        thread.start()
                        self._reader_threads.append(thread)

    def _reader_loop(self) -> None:
        """A reader thread: its own connection, one read transaction per job, the result
        handed back with one hop (as the writer does; an executor future costs more)."""
        assert self.reader_engine is not None
        connection: Connection | None = None
        while (job := self._read_queue.get()) is not None:
            result: Any = None
            error: BaseException | None = None
            try:
                if connection is None:
                    connection = self.reader_engine.connect()
                with connection.begin():
                    result = job.fn(connection)
            except BaseException as exc:
                error = _translated(exc)
                connection = _idle_or_closed(connection)
            _deliver(job, result, error)
        if connection is not None:
            connection.close()

    async def _submit(self, fn: Callable[[Connection], T], *, transactional: bool = True) -> T:
        if self._closed:
            raise DatabaseError("the store is closed")
        self._ensure_writer()
        loop = self._loop = _same_loop(self._loop)
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(fn, loop, future, transactional))
        return await future

    def _ensure_writer(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._writer_loop, name="statestore-writer", daemon=True
                    )
                    self._thread.start()

    def _writer_loop(self) -> None:
        connection: Connection | None = None
        held: _Job | None = None  # taken while draining, but must run on its own
        stopping = False
        while not stopping:
            job = held or self._queue.get()
            held = None
            if job is None:
                break
            if not job.transactional:
                connection = self._run_alone(job, connection)
                continue
            group = [job]
            while len(group) < self.max_group:
                try:
                    waiting = self._queue.get_nowait()
                except queue.Empty:
                    break
                if waiting is None:
                    stopping = True  # run what was drained, then stop
                    break
                if not waiting.transactional:
                    held = waiting
                    break
                group.append(waiting)
            connection = self._run_group(group, connection)
        if connection is not None:
            connection.close()

    def _run_group(self, jobs: list[_Job], connection: Connection | None) -> Connection | None:
        """Group commit: every job waiting for the writer runs in one ``BEGIN IMMEDIATE …
        COMMIT``, each inside its own SAVEPOINT, so one job's error rolls back only that job
        and reaches only its caller. Results are released only after the COMMIT succeeded;
        a failed BEGIN or COMMIT fails every job of the group. Returns the connection to
        keep using."""
        outcomes: list[tuple[Any, BaseException | None]] = []
        try:
            if connection is None:
                connection = self.writer_engine.connect()
            with connection.begin():
                if len(jobs) == 1:  # nothing to isolate it from: no savepoint needed
                    outcomes.append((jobs[0].fn(connection), None))
                else:
                    for job in jobs:
                        outcomes.append(self._run_in_savepoint(job, connection))
            self.transactions += 1
            self.operations += len(jobs)
        except BaseException as exc:
            outcomes = [(None, _translated(exc)) for _ in jobs]
            connection = _idle_or_closed(connection)
        _deliver_all(jobs, outcomes)
        return connection

    @staticmethod
    def _run_in_savepoint(job: _Job, connection: Connection) -> tuple[Any, BaseException | None]:
        savepoint = connection.begin_nested()
        try:
            result = job.fn(connection)
        except Exception as exc:
            if savepoint.is_active:  # a failed flush may have rolled it back already
                savepoint.rollback()
            return None, _translated(exc)
        savepoint.commit()
        return result, None

    def _run_alone(self, job: _Job, connection: Connection | None) -> Connection | None:
        """A job that manages its own transactions (migrations, schema checks)."""
        result: Any = None
        error: BaseException | None = None
        try:
            if connection is None:
                connection = self.writer_engine.connect()
            try:
                result = job.fn(connection)
            finally:
                if connection.in_transaction():
                    connection.rollback()
        except BaseException as exc:
            error = _translated(exc)
            connection = _idle_or_closed(connection)
        _deliver(job, result, error)
        return connection

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)
        for _thread in self._reader_threads:
            self._read_queue.put(None)
        for thread in self._reader_threads:
            await asyncio.to_thread(thread.join)
        self.writer_engine.dispose()
        if self.reader_engine is not None:
            self.reader_engine.dispose()


class PostgresRunner(Runner):
    """Operations as ``AsyncConnection.run_sync`` over asyncpg.

    Reads and single-statement writes run on an ``AUTOCOMMIT`` connection: no BEGIN and
    COMMIT round trips around a statement that is atomic on its own (under READ COMMITTED
    each statement of a transaction takes a fresh snapshot anyway, so reads lose nothing).
    Other writes run in a READ COMMITTED transaction, begun and committed inside the same
    ``run_sync`` as the operation. A read that fails because its connection turned out to
    be dead (a server restart) is retried once on a new one.

    Cancellation never reaches a connection mid-statement: each call runs as its own task,
    and a cancelled caller stops waiting for it while the task finishes (commits or rolls
    back) and hands its connection back in a known state. Interrupting asyncpg between a
    request and its reply would leave the connection inside a transaction that the next
    call would silently join (asyncpg turns its BEGIN into a SAVEPOINT), so that call's
    "committed" write would never commit. A connection that saw a driver error, or whose
    own task was cancelled (the store closing, the event loop shutting down), is terminated
    and dropped from the pool, never reused.

    The runner keeps the connections it used checked out of the engine's pool, up to the
    pool's size: taking a connection from the pool and giving it back costs several greenlet
    switches and pool events per call, more than a small statement. A kept connection
    switches between AUTOCOMMIT and READ COMMITTED as calls need (no round trip). Closing
    the runner waits for the calls still running, then returns the kept connections.
    """

    close_timeout: float = 10.0
    """Seconds :meth:`close` waits for calls still running before it cancels them."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        pool = engine.sync_engine.pool
        self._pool = pool if isinstance(pool, QueuePool) else None
        self._capacity, self._keep_idle = _pool_limits(pool)
        self._idle: list[tuple[AsyncConnection, bool]] = []  # (connection, autocommit)
        self._running: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def write(self, op: Operation[T], scope: Scope, *, single_statement: bool = False) -> T:
        return await self._call(op, scope, autocommit=single_statement)

    async def read(self, op: Operation[T], scope: Scope) -> T:
        try:
            return await self._call(op, scope, autocommit=True)
        except DatabaseError as exc:
            if not _lost_connection(exc):
                raise
        return await self._call(op, scope, autocommit=True)  # on a new connection

    async def _call(self, op: Operation[T], scope: Scope, *, autocommit: bool) -> T:
        if self._closed:
            raise DatabaseError("the store is closed")
        self._loop = _same_loop(self._loop)
        task = asyncio.ensure_future(self._run(op, scope, autocommit))
        self._running.add(task)
        task.add_done_callback(_forget(self._running))
        # shield: cancelling the caller must not interrupt the task on its connection.
        return await asyncio.shield(task)

    async def _run(self, op: Operation[T], scope: Scope, autocommit: bool) -> T:
        try:
            connection = await self._acquire(autocommit)
            try:
                result = await connection.run_sync(_transaction, op, scope, autocommit)
            except BaseException as exc:
                if connection.invalidated:
                    # The server dropped it: every kept connection is at least as old.
                    await self._drop_idle()
                if isinstance(exc, Exception) and not _driver_failed(exc):
                    await self._release(connection, autocommit)
                else:  # a driver error or a cancellation: its state is unknown
                    _terminate(connection)
                raise
            await self._release(connection, autocommit)
            return result
        except Exception as exc:
            error = translate(exc)
            if error is exc:
                raise  # already the store's own error, with its own cause
            raise error from exc

    async def _acquire(self, autocommit: bool) -> AsyncConnection:
        while self._idle:
            connection, mode = self._idle.pop()
            if connection.closed or connection.invalidated:
                await connection.close()
                continue
            if mode != autocommit:
                await connection.execution_options(isolation_level=_isolation(autocommit))
            return connection
        connection = await self._engine.connect()
        if autocommit:
            await connection.execution_options(isolation_level=_isolation(autocommit))
        return connection

    async def _release(self, connection: AsyncConnection, autocommit: bool) -> None:
        """Keep a clean connection for the next call, unless that could make anyone else
        wait for the pool: the kept ones stay below the pool's size and always leave one
        slot free, and at capacity the connection goes back to the pool."""
        keep = (
            not self._closed
            and not connection.invalidated
            and not connection.in_transaction()
            and len(self._idle) < self._keep_idle
            and self._pool is not None
            and self._pool.checkedout() < self._capacity
        )
        if keep:
            self._idle.append((connection, autocommit))
        else:
            await connection.close()

    async def _drop_idle(self) -> None:
        while self._idle:
            connection, _mode = self._idle.pop()
            with contextlib.suppress(Exception):
                await connection.close()

    async def with_connection(self, fn: Callable[[Connection], T]) -> T:
        if self._closed:
            raise DatabaseError("the store is closed")
        self._loop = _same_loop(self._loop)
        try:
            async with self._engine.connect() as conn:
                return await conn.run_sync(fn)
        except Exception as exc:
            error = translate(exc)
            if error is exc:
                raise  # already the store's own error, with its own cause
            raise error from exc

    async def close(self) -> None:
        """Wait for the calls still running (at most :attr:`close_timeout` seconds, then
        cancel them), and return the kept connections to the pool (the store then disposes
        the engine)."""
        self._closed = True
        if self._running:
            _done, late = await asyncio.wait(set(self._running), timeout=self.close_timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        await self._drop_idle()


def _transaction(connection: Connection, op: Operation[T], scope: Scope, autocommit: bool) -> T:
    """Inside ``run_sync``: ``op`` in autocommit, or in one READ COMMITTED transaction."""
    if autocommit:
        result = run_in_session(connection, op, scope)
        if connection.in_transaction():  # SQLAlchemy's autobegin: nothing to send
            connection.commit()
        return result
    with connection.begin():
        return run_in_session(connection, op, scope)


def _terminate(connection: AsyncConnection) -> None:
    """Close the driver connection at once and drop it from the pool. Synchronous on
    purpose: outside a greenlet SQLAlchemy terminates the asyncpg connection without
    awaiting, so a second cancellation cannot stop this half-way."""
    sync = connection.sync_connection
    if sync is None or sync.invalidated or sync.closed:
        return
    with contextlib.suppress(Exception):
        sync.invalidate()
    with contextlib.suppress(Exception):
        sync.close()


def _driver_failed(exc: BaseException) -> bool:
    """Whether the driver failed on the way to ``exc`` without the server reporting why: a
    lost connection, an interrupted request, a client-side protocol error. Then the
    connection's transaction state is not known for sure. An error the server reported
    (it carries a SQLSTATE: a duplicate key, a refused value) leaves the connection in a
    known state once the transaction is rolled back, and so does an error the operation
    raised itself (a refused transition, a validation error)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, sa_exc.DBAPIError) and sqlstate(current) is None:
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _forget(running: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        running.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a cancelled caller's failure is not "never retrieved"

    return done


def _pool_limits(pool: Pool) -> tuple[float, int]:
    """(how many connections the pool lends at most, how many the runner may keep): below
    the pool's size and at least one short of its capacity, so that ``store.engine``,
    migrations and a pool without overflow always find a connection."""
    if not isinstance(pool, QueuePool):
        return 0, 0  # NullPool, StaticPool …: nothing to keep
    overflow = getattr(pool, "_max_overflow", 0)
    capacity = math.inf if overflow < 0 else pool.size() + overflow
    return capacity, max(0, min(pool.size(), int(min(capacity, 2**31)) - 1))


def _isolation(autocommit: bool) -> str:
    return "AUTOCOMMIT" if autocommit else "READ COMMITTED"


def _lost_connection(exc: BaseException) -> bool:
    """Whether SQLAlchemy found the connection dead (and invalidated it) on the way to
    ``exc``."""
    cause = exc.__cause__
    return isinstance(cause, sa_exc.DBAPIError) and cause.connection_invalidated
