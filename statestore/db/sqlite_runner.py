"""The SQLite runner: writes to the group-commit writer, reads to the reader pool.

Each call costs exactly one hop between the event loop and a thread; SQLAlchemy's async
layer over aiosqlite would cost eight or nine. ``:memory:`` has one connection, so there
every call goes to the writer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Connection

from statestore.db.runner import IfAbandoned, Operation, Runner, bind_loop, follow_up
from statestore.db.sqlite_readers import ReaderPool
from statestore.db.sqlite_writer import GroupCommitWriter
from statestore.db.tenancy import Scope
from statestore.db.thread_jobs import connection_work, operation_work
from statestore.errors import DatabaseError

T = TypeVar("T")


class SqliteRunner(Runner):
    """One :class:`GroupCommitWriter` and an optional :class:`ReaderPool`."""

    def __init__(self, writer: GroupCommitWriter, readers: ReaderPool | None) -> None:
        self.writer = writer
        self.readers = readers
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def write(
        self, op: Operation[T], scope: Scope, *, if_abandoned: IfAbandoned | None = None
    ) -> T:
        # Every write shares the writer's group transaction, single statement or not.
        loop = self._check()
        work = operation_work(op, scope)
        if if_abandoned is None:
            result: T = await self.writer.run(work, loop)
            return result
        writer = self.writer

        def abandoned(result: object, error: BaseException | None) -> None:
            op = follow_up(if_abandoned, result, error)
            if op is not None:
                writer.follow_up(operation_work(op, scope), loop)

        result = await writer.run(work, loop, abandoned=abandoned)
        return result

    async def read(self, op: Operation[T], scope: Scope) -> T:
        loop = self._check()
        work = operation_work(op, scope)
        pool = self.readers
        result: T = await (pool.run(work, loop) if pool else self.writer.run(work, loop))
        return result

    async def with_connection(self, fn: Callable[[Connection], T]) -> T:
        result: T = await self.writer.run(connection_work(fn), self._check(), exclusive=True)
        return result

    def _check(self) -> asyncio.AbstractEventLoop:
        if self._closed:
            raise DatabaseError("the store is closed")
        self._loop = bind_loop(self._loop)
        return self._loop

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.writer.stop()
        if self.readers is not None:
            await self.readers.stop()
        self.writer.engine.dispose()
        if self.readers is not None:
            self.readers.engine.dispose()
