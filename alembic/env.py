"""Alembic environment for statestore (SQLite in batch mode, PostgreSQL; async-capable).

The database comes from, in order: a connection handed over by statestore itself
(``config.attributes["connection"]``, used by ``store.migrate()``), ``-x url=...``,
``$STATESTORE_DATABASE_URL``, ``sqlalchemy.url`` in alembic.ini, or the embedded default.
Without a handed-over connection it connects with the async driver (aiosqlite / asyncpg)
and runs the migrations through ``run_sync``.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from statestore.db.engine import SqliteSettings, create_user_engine, parse_database_url
from statestore.db.migrations import include_object_for, take_migration_lock
from statestore.db.schema import Base

config = context.config
target_metadata = Base.metadata


def run_migrations(connection: Connection) -> None:
    """Run the pending revisions in one transaction, holding the migration lock."""
    external = connection.in_transaction()
    transaction = None if external else connection.begin()
    take_migration_lock(connection)
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=include_object_for(connection.dialect.name),
    )
    context.run_migrations()
    if transaction is not None:
        transaction.commit()


async def run_async_migrations(url: str | None) -> None:
    engine = create_user_engine(parse_database_url(url), SqliteSettings(), {})
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_migrations)
    finally:
        await engine.dispose()


def main() -> None:
    if context.is_offline_mode():
        raise SystemExit("statestore migrations run online only (no --sql mode)")
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    asyncio.run(run_async_migrations(url))


main()
