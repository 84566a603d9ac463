"""How an operation reaches the database.

An *operation* is a synchronous function ``op(session) -> result`` built by a repository.
One public call is one operation is one transaction. The runner decides where it runs:

- :class:`SqliteRunner`: one writer thread owning one connection (``BEGIN IMMEDIATE``), and a
  small pool of reader threads with their own connections (WAL lets them read beside the
  writer). Each call costs exactly one hop between the event loop and a thread; SQLAlchemy's
  async layer over aiosqlite would cost eight or nine. The writer takes jobs from a queue and
  runs them in :meth:`SqliteRunner._run_batch`, the one place group commit will drain several
  waiting jobs into one transaction; repositories do not change for it.
- :class:`PostgresRunner`: ``AsyncSession.run_sync`` over asyncpg; many connections in
  parallel, READ COMMITTED.

Both translate every failure into :mod:`statestore.errors` (see :mod:`statestore.db.errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import Session

from statestore.db.errors import translate
from statestore.db.tenancy import SCOPE_KEY, Scope, TenantSession
from statestore.errors import DatabaseError

T = TypeVar("T")
Operation = Callable[[Session], T]
"""A unit of repository work: runs inside one transaction, on one session."""


def _new_session(bind: Connection, scope: Scope) -> TenantSession:
    # "rollback_only": the runner, not the session, owns the transaction on the connection.
    return TenantSession(
        bind=bind,
        info={SCOPE_KEY: scope},
        expire_on_commit=False,
        autoflush=False,
        join_transaction_mode="rollback_only",
    )


def run_in_session(connection: Connection, op: Operation[T], scope: Scope) -> T:
    """Run ``op`` on a fresh scoped session bound to ``connection``'s open transaction."""
    session = _new_session(connection, scope)
    try:
        result = op(session)
        session.flush()
        return result
    finally:
        session.close()


class Runner(ABC):
    """Where operations run. One per store; scoped views share it."""

    @abstractmethod
    async def write(self, op: Operation[T], scope: Scope) -> T:
        """Run ``op`` in a write transaction and commit it."""

    @abstractmethod
    async def read(self, op: Operation[T], scope: Scope) -> T:
        """Run ``op`` in a read transaction."""

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


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled; the write may still have committed
        return
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
    _queue: queue.SimpleQueue[_Job | None] = field(default_factory=queue.SimpleQueue)
    _thread: threading.Thread | None = None
    _reader_pool: ThreadPoolExecutor | None = None
    _closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def write(self, op: Operation[T], scope: Scope) -> T:
        return await self._submit(lambda conn: run_in_session(conn, op, scope))

    async def read(self, op: Operation[T], scope: Scope) -> T:
        if self.reader_engine is None:
            return await self._submit(lambda conn: run_in_session(conn, op, scope))
        pool = self._readers()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, self._run_read, op, scope)

    async def with_connection(self, fn: Callable[[Connection], T]) -> T:
        return await self._submit(fn, transactional=False)

    def _run_read(self, op: Operation[T], scope: Scope) -> T:
        assert self.reader_engine is not None
        try:
            with self.reader_engine.connect() as conn, conn.begin():
                return run_in_session(conn, op, scope)
        except BaseException as exc:
            raise translate(exc) from exc

    def _readers(self) -> ThreadPoolExecutor:
        if self._closed:
            raise DatabaseError("the store is closed")
        if self._reader_pool is None:
            with self._lock:
                if self._reader_pool is None:
                    self._reader_pool = ThreadPoolExecutor(
                        max_workers=self.readers, thread_name_prefix="statestore-reader"
                    )
        return self._reader_pool

    async def _submit(self, fn: Callable[[Connection], T], *, transactional: bool = True) -> T:
        if self._closed:
            raise DatabaseError("the store is closed")
        self._ensure_writer()
        loop = asyncio.get_running_loop()
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
        while True:
            job = self._queue.get()
            if job is None:
                break
            connection = self._run_batch([job], connection)
        if connection is not None:
            connection.close()

    def _run_batch(self, jobs: list[_Job], connection: Connection | None) -> Connection | None:
        """Run jobs on the writer connection; returns the connection to keep using.

        Today each batch holds one job and one transaction. Group commit will drain the
        queue into one batch here, each job inside its own SAVEPOINT.
        """
        for job in jobs:
            result: Any = None
            error: BaseException | None = None
            try:
                if connection is None:
                    connection = self.writer_engine.connect()
                if job.transactional:
                    with connection.begin():
                        result = job.fn(connection)
                else:
                    try:
                        result = job.fn(connection)
                    finally:
                        if connection.in_transaction():
                            connection.rollback()
            except BaseException as exc:
                error = translate(exc)
                error.__cause__ = exc
                if connection is not None and connection.invalidated:
                    connection.close()
                    connection = None
            # RuntimeError: the caller's event loop is closed; nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                job.loop.call_soon_threadsafe(_resolve, job.future, result, error)
        return connection

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)
        if self._reader_pool is not None:
            self._reader_pool.shutdown(wait=True)
        self.writer_engine.dispose()
        if self.reader_engine is not None:
            self.reader_engine.dispose()


class PostgresRunner(Runner):
    """Operations as ``AsyncSession.run_sync`` over asyncpg."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._sessions = async_sessionmaker(
            engine, sync_session_class=TenantSession, expire_on_commit=False, autoflush=False
        )

    async def write(self, op: Operation[T], scope: Scope) -> T:
        try:
            async with self._sessions(info={SCOPE_KEY: scope}) as session, session.begin():
                return await session.run_sync(op)
        except Exception as exc:
            raise translate(exc) from exc

    async def read(self, op: Operation[T], scope: Scope) -> T:
        return await self.write(op, scope)

    async def with_connection(self, fn: Callable[[Connection], T]) -> T:
        try:
            async with self._engine.connect() as conn:
                return await conn.run_sync(fn)
        except Exception as exc:
            raise translate(exc) from exc

    async def close(self) -> None:
        """The engine belongs to the store, which disposes it."""
