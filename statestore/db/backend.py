"""Wiring and the way in: from a URL and options to the engine and runner a store uses
(the one place that chooses a runner by dialect), and :class:`Backend`, through which every
call of a store and its tenant-scoped views reaches the runner."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from statestore import telemetry
from statestore.db.engine import (
    DatabaseConfig,
    SqliteSettings,
    create_sqlite_engine,
    create_user_engine,
    ensure_sqlite_folder,
)
from statestore.db.postgres_runner import PostgresRunner
from statestore.db.runner import IfAbandoned, Operation, Runner
from statestore.db.sqlite_readers import ReaderPool
from statestore.db.sqlite_runner import SqliteRunner
from statestore.db.sqlite_writer import GroupCommitWriter
from statestore.db.tenancy import Scope
from statestore.db.wakeup import Waker
from statestore.errors import DatabaseError

T = TypeVar("T")


class Backend:
    """A store's database: the user-facing engine (``store.engine``), the runner its
    operations go through, and whether the schema was found at this package's head."""

    def __init__(self, config: DatabaseConfig, engine: AsyncEngine, runner: Runner) -> None:
        self.config = config
        self.engine = engine
        self.runner = runner
        self.closed = False
        self._closing: asyncio.Task[None] | None = None
        self._schema_checked = False
        self.waker = Waker(config)
        """Wakes claims waiting for work (:mod:`statestore.db.wakeup`)."""
        if isinstance(runner, SqliteRunner):
            runner.writer.after_commit = self.waker.committed

    async def write(
        self, op: Operation[T], scope: Scope, *, if_abandoned: IfAbandoned | None = None
    ) -> T:
        """One write transaction (see :meth:`Runner.write`, also for ``if_abandoned``),
        traced when OpenTelemetry is installed and a provider configured
        (:mod:`statestore.telemetry`); then the store's feed followers are woken
        (:meth:`Waker.wrote`: the write may have appended events)."""
        if not self._schema_checked or self.closed:
            await self._ready()
        if telemetry.ENABLED and telemetry.observed():
            write = self.runner.write
            if if_abandoned is not None:
                write = functools.partial(write, if_abandoned=if_abandoned)
            result = await telemetry.traced(
                write, op, scope, db_system=self.config.dialect, write=True
            )
        else:
            result = await self.runner.write(op, scope, if_abandoned=if_abandoned)
        self.waker.wrote()
        return result

    async def read(self, op: Operation[T], scope: Scope) -> T:
        """One read (see :meth:`Runner.read`), traced like :meth:`write`."""
        if not self._schema_checked or self.closed:
            await self._ready()
        if telemetry.ENABLED and telemetry.observed():
            return await telemetry.traced(
                self.runner.read, op, scope, db_system=self.config.dialect, write=False
            )
        return await self.runner.read(op, scope)

    async def on_connection(self, fn: Callable[[Connection], T]) -> T:
        """``fn`` with a connection of its own, before any schema check (migrations)."""
        if self.closed:
            raise DatabaseError("the store is closed")
        return await self.runner.with_connection(fn)

    async def migrate(self, revision: str) -> None:
        """Upgrade to ``revision`` (Alembic, imported only when used)."""
        from statestore.db import migrations

        await self.on_connection(lambda connection: migrations.upgrade(connection, revision))
        self._schema_checked = revision == "head"

    async def downgrade(self, revision: str) -> None:
        """Downgrade to ``revision``."""
        from statestore.db import migrations

        self._schema_checked = False
        await self.on_connection(lambda connection: migrations.downgrade(connection, revision))

    async def current_revision(self) -> str | None:
        """The database's schema revision (``None`` for an empty database)."""
        from statestore.db import migrations

        return await self.on_connection(migrations.current_revision)

    @staticmethod
    def head_revision() -> str:
        """The schema revision this package needs."""
        from statestore.db import migrations

        return migrations.head_revision()

    async def schema_drift(self) -> list[str]:
        """Differences between the database schema and this package's models."""
        from statestore.db import migrations

        return [str(entry) for entry in await self.on_connection(migrations.schema_drift)]

    async def close(self) -> None:
        """Stop the runner and dispose of the engine. Idempotent: a second call returns
        once the first one's closing is done. Cancelling it does not stop the closing
        (shielded): a shutdown cut short by a timeout must not leave the store half closed,
        its connections (and SQLite writer thread) open, with nothing left to close them."""
        if self._closing is None:
            self.closed = True
            self._closing = asyncio.ensure_future(self._close())
        elif self._closing.done():  # closed (also when called from another event loop)
            return
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        await self.waker.close()
        await self.runner.close()
        await self.engine.dispose()

    async def _ready(self) -> None:
        if self.closed:
            raise DatabaseError("the store is closed")
        if not self._schema_checked:
            await self.runner.with_connection(_require_head)
            self._schema_checked = True


def _require_head(connection: Connection) -> None:
    from statestore.db import migrations

    with connection.begin():
        migrations.require_head(connection)


def open_backend(
    config: DatabaseConfig,
    settings: SqliteSettings,
    *,
    readers: int,
    engine_options: dict[str, Any],
) -> Backend:
    """Build the engine and runner for ``config`` (nothing connects yet). SQLite: a writer
    engine of one connection (``BEGIN IMMEDIATE``) and a reader engine of ``readers``
    connections (none for ``:memory:``, which has one connection for everything).
    PostgreSQL: the runner shares the user-facing engine's pool."""
    ensure_sqlite_folder(config)
    engine = create_user_engine(config, settings, engine_options)
    if config.dialect == "postgresql":
        return Backend(config, engine, PostgresRunner(engine))
    writer_engine = create_sqlite_engine(
        config, settings, begin="BEGIN IMMEDIATE", pool_size=1, engine_options=engine_options
    )
    writer = GroupCommitWriter(writer_engine)
    pool = None
    if not config.is_memory:
        reader_engine = create_sqlite_engine(
            config, settings, begin="BEGIN", pool_size=readers, engine_options=engine_options
        )
        pool = ReaderPool(reader_engine, readers)
    return Backend(config, engine, SqliteRunner(writer, pool))
