"""What :func:`statestore.procedures.run_maintenance` needs from the database beyond the
repositories: who leads (one maintaining process at a time on PostgreSQL) and SQLite's own
housekeeping (WAL checkpoint, ``PRAGMA optimize``)."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from sqlalchemy import Connection

from statestore.db.engine import DatabaseConfig
from statestore.db.wakeup import asyncpg_dsn

MAINTENANCE_LOCK_KEY = 0x5354_4154  # "STAT"
"""The PostgreSQL advisory lock its leader holds: ``pg_try_advisory_lock(MAINTENANCE_LOCK_KEY,
hashtext(<tenant or '*'>))``, one per scope (the unscoped store's and each tenant view's)."""

_log = logging.getLogger("statestore")


class Leadership:
    """Whether this process does the maintenance now.

    PostgreSQL: the leader holds :data:`MAINTENANCE_LOCK_KEY` on a session of its own
    (a raw asyncpg connection); the server releases it when that session ends, so the lock
    passes on when the leader's process dies or its connection drops. Each round a
    follower tries to take it (one statement); the leader checks that its session is alive.
    The session goes to the store's direct URL behind PgBouncer (a session lock taken
    through transaction pooling would stay on a server connection other clients then use);
    without one, constructing this raises :class:`ConfigurationError`. SQLite: every
    process leads (its writes are serialised by the file's write lock, and each
    maintenance write re-checks its terms)."""

    def __init__(self, config: DatabaseConfig, scope_name: str) -> None:
        if config.dialect == "postgresql":
            asyncpg_dsn(config)  # ConfigurationError now, not a warning every round
        self._config = config
        self._scope_name = scope_name
        self._connection: Any = None
        self._held = False

    async def held(self) -> bool:
        """Take or keep the lead; ``False`` if another process has it. Connection errors
        are raised (the caller retries next round, as a follower until it takes the lock)."""
        if self._config.dialect != "postgresql":
            return True
        import asyncpg

        if self._connection is not None and self._connection.is_closed():
            self._connection, self._held = None, False
        if self._connection is None:
            self._connection = await asyncpg.connect(asyncpg_dsn(self._config), timeout=10)
        try:
            if self._held:
                await self._connection.fetchval("SELECT 1")  # is the session still alive?
            else:
                self._held = bool(
                    await self._connection.fetchval(
                        "SELECT pg_try_advisory_lock($1, hashtext($2))",
                        MAINTENANCE_LOCK_KEY,
                        self._scope_name,
                    )
                )
        except BaseException:
            await self.release()
            raise
        return self._held

    async def release(self) -> None:
        """Give up the lead (closing the session releases the lock). Idempotent."""
        connection, self._connection, self._held = self._connection, None, False
        if connection is not None and not connection.is_closed():
            try:
                await connection.close(timeout=5)
            except Exception:
                connection.terminate()


def sqlite_housekeeping(connection: Connection, optimize: bool) -> None:
    """Checkpoint the WAL (PASSIVE: what it can, never waiting for readers or writers) and,
    with ``optimize``, ``PRAGMA optimize`` (refreshes the planner's statistics where they
    are stale). Runs on the store's writer connection, with no write beside it."""
    driver = connection.connection.dbapi_connection
    assert driver is not None
    driver.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    if optimize:
        with contextlib.suppress(Exception):  # statistics are an optimisation only
            driver.execute("PRAGMA optimize").fetchall()
