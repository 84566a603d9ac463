"""Waking waiting claims: a :class:`Waker` per store tells the callers blocked in
``claim_work_item(..., wait=...)`` that an item may have become claimable.

- SQLite: the group-commit writer calls :meth:`Waker.committed` after each COMMIT (from its
  thread); for writers in other processes a watcher task reads ``PRAGMA data_version`` on
  a connection of its own every :data:`SQLITE_CHECK_S` seconds, and only while someone waits.
- PostgreSQL: one ``LISTEN`` connection per store (raw asyncpg), started by the first
  waiter; the writes that make an item claimable send ``pg_notify`` with the queue type
  (:func:`statestore.db.queries.notify_work`). The listener reconnects after a dropped
  connection; while it is down :attr:`Waker.reliable` is false and waiters poll at most
  every :data:`FALLBACK_POLL_S` seconds.

A wake-up is a hint: the woken waiter claims again, and if another worker took the item
it goes back to waiting until its deadline.

Feed followers (``iter_feed(follow=True)``, :meth:`Waker.following`) wait here too, apart
from the claims, and each of them wakes on every signal: each commit of this store's SQLite
writer, each change of the file by another process, each work notification on PostgreSQL
(a turn or an enqueue committed), and :meth:`Waker.wrote`, called after each of this
store's own PostgreSQL writes returns. Appends do not ``NOTIFY`` (docs/architecture.md,
"The feed", says why): a follower on PostgreSQL sees another process's plain appends by
its bounded poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from statestore.db.engine import DatabaseConfig
from statestore.errors import ConfigurationError

WORK_CHANNEL = "statestore_work"
"""The PostgreSQL channel a claimable item is announced on (payload: its queue type)."""
SQLITE_CHECK_S = 0.025
"""How often a waiter's store checks whether another process wrote the SQLite file."""
FALLBACK_POLL_S = 0.25
"""How often waiters poll while the PostgreSQL listener is down."""
RECONNECT_S = (0.1, 0.5, 1.0, 2.0)
"""Delays between attempts to re-open a dropped listener connection."""

_log = logging.getLogger("statestore")


class _Waiter:
    __slots__ = ("event", "types")

    def __init__(self, types: frozenset[str]) -> None:
        self.event = asyncio.Event()
        self.types = types


class Waker:
    """Wakes the claims of one store that wait for work."""

    def __init__(self, config: DatabaseConfig) -> None:
        self._config = config
        self._waiters: set[_Waiter] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._listening = False
        self._closed = False
        self.listener_pid: int | None = None
        """The server process id of the LISTEN connection while it is up (PostgreSQL)."""
        self._lock = threading.Lock()
        self.wakeups = 0
        """Signals received so far (for tests and monitoring)."""
        self._followers: set[asyncio.Event] = set()
        """The events of the feed followers (:meth:`following`)."""

    @property
    def reliable(self) -> bool:
        """Whether a signal is sure to come: on PostgreSQL, while the listener is up."""
        return self._config.dialect != "postgresql" or self._listening

    @contextlib.contextmanager
    def waiting(self, queue_types: Sequence[str]) -> Iterator[asyncio.Event]:
        """Register a waiter for ``queue_types`` for the block; its event is set by each
        signal that may concern it (clear it before each claim, so none is missed)."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        waiter = _Waiter(frozenset(queue_types))
        self._waiters.add(waiter)
        self._start()
        try:
            yield waiter.event
        finally:
            self._waiters.discard(waiter)

    def signal(self, queue_type: str | None = None) -> None:
        """Wake the waiters for ``queue_type`` (every waiter if ``None``). On the loop."""
        self.wakeups += 1
        for follower in self._followers:
            follower.set()
        for waiter in self._waiters:
            if queue_type is None or queue_type in waiter.types:
                waiter.event.set()

    @contextlib.contextmanager
    def following(self) -> Iterator[asyncio.Event]:
        """Register a feed follower for the block: its event is set by every signal, of
        whatever queue type (any commit may have appended events; clear it before each
        read). Followers do not compete for anything, so each of them is woken."""
        self._loop = asyncio.get_running_loop()
        event = asyncio.Event()
        self._followers.add(event)
        self._start()
        try:
            yield event
        finally:
            self._followers.discard(event)

    def wrote(self) -> None:
        """One of this store's writes returned (on the loop): wake its feed followers. On
        PostgreSQL only; on SQLite :meth:`committed` already did, after the COMMIT."""
        if self._config.dialect == "postgresql":
            for follower in self._followers:
                follower.set()

    def committed(self) -> None:
        """A write transaction committed (any thread): wake every waiter."""
        loop = self._loop
        if loop is None or not (self._waiters or self._followers) or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self.signal)

    async def close(self) -> None:
        """Stop the watcher or listener. Idempotent."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ------------------------------------------------------------------ background task

    def _start(self) -> None:
        if self._closed or (self._task is not None and not self._task.done()):
            return
        if self._config.dialect == "postgresql":
            if self._config.session_url is not None:  # else: waiters poll (no LISTEN)
                self._task = asyncio.create_task(self._listen(), name="statestore-listener")
        elif not self._config.is_memory:
            self._task = asyncio.create_task(self._watch(), name="statestore-change-check")

    async def _watch(self) -> None:
        """SQLite: signal when another connection (another process) changed the file; runs
        while someone waits, and ends when nobody does."""
        assert self._config.sync_url is not None
        path = self._config.sync_url.database
        assert path is not None
        connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            version = _data_version(connection)
            while self._waiters or self._followers:
                await asyncio.sleep(SQLITE_CHECK_S)
                current = _data_version(connection)
                if current != version:
                    version = current
                    self.signal()
        finally:
            connection.close()

    async def _listen(self) -> None:
        """PostgreSQL: hold one LISTEN connection while the store lives; reconnect when it
        drops. A (re)connection signals every waiter: something may have been missed."""
        import asyncpg

        dsn = asyncpg_dsn(self._config)
        failures = 0
        while not self._closed:
            connection: Any = None
            lost = asyncio.Event()
            try:
                connection = await asyncpg.connect(dsn, timeout=10)
                connection.add_termination_listener(lambda _c, lost=lost: lost.set())
                await connection.add_listener(
                    WORK_CHANNEL, lambda _c, _pid, _channel, payload: self.signal(payload)
                )
                self._listening = True
                self.listener_pid = connection.get_server_pid()
                failures = 0
                self.signal()
                while not lost.is_set() and not connection.is_closed():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), 1.0)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                _log.warning("statestore listener connection failed: %s", exc)
            finally:
                self._listening = False
                self.listener_pid = None
                if connection is not None and not connection.is_closed():
                    connection.terminate()
            if self._closed:
                return
            self.signal()  # waiters fall back to polling
            await asyncio.sleep(RECONNECT_S[min(failures, len(RECONNECT_S) - 1)])
            failures += 1


def asyncpg_dsn(config: DatabaseConfig) -> str:
    """A DSN for a raw ``asyncpg.connect`` to the store's PostgreSQL database (the LISTEN
    and maintenance-leader sessions): its session URL (:attr:`DatabaseConfig.session_url`)
    with asyncpg's own option names (``ssl`` back to ``sslmode``; SQLAlchemy's
    ``prepared_statement_cache_size`` dropped)."""
    session_url = config.session_url
    if session_url is None:
        raise ConfigurationError(
            "behind PgBouncer (pgbouncer=true) a session of its own needs direct_url, the "
            "database without the transaction pooler (StateStore.connect(..., direct_url=...))"
        )
    url = session_url.set(drivername="postgresql")
    query = dict(url.query)
    query.pop("prepared_statement_cache_size", None)
    if "ssl" in query:
        query["sslmode"] = query.pop("ssl")
    return url.set(query=query).render_as_string(hide_password=False)


def _data_version(connection: sqlite3.Connection) -> int:
    row = connection.execute("PRAGMA data_version").fetchone()
    return int(row[0])
