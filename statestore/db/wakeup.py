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
it goes back to waiting until its deadline. A signal wakes one waiter of each group that
would claim the same items (same tenant scope and queue types), not all of them: waking
all would have every idle worker run a claim that all but one lose. The woken waiter
passes the signal on to the next of its group when its claim came back full (there may be
more) or when it leaves without claiming, so no claimable item is left with nobody awake.

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
import math
import sqlite3
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
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


class Waiter:
    """One claim waiting for work (:meth:`Waker.waiting`)."""

    __slots__ = ("due_at", "event", "group", "types", "wakes_at")

    def __init__(self, types: frozenset[str], group: Hashable) -> None:
        self.event = asyncio.Event()
        """Set when it should claim (clear it before each claim, so none is missed)."""
        self.types = types
        self.group = group
        """Waiters of one group would claim the same items: a signal wakes one of them."""
        self.wakes_at = math.inf
        """Loop time at which its wait ends by itself (its deadline, or a delayed item's)."""
        self.due_at: float | None = None
        """Loop time at which the earliest delayed item it knows of comes due."""


class Waker:
    """Wakes the claims of one store that wait for work."""

    def __init__(self, config: DatabaseConfig) -> None:
        self._config = config
        self._waiters: dict[Waiter, None] = {}
        """In the order they started waiting: the longest waiting is woken first."""
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
    def waiting(self, queue_types: Sequence[str], scope: Hashable = None) -> Iterator[Waiter]:
        """Register a waiter for ``queue_types`` (claiming in ``scope``) for the block.
        Leaving the block with its event set passes the wake-up on; so does leaving before a
        delayed item it knows of comes due when no other waiter of its group would wake by
        then (they may have gone to sleep before the item was enqueued, and only this one
        was woken for it)."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        types = frozenset(queue_types)
        waiter = Waiter(types, (scope, types))
        self._waiters[waiter] = None
        self._start()
        try:
            yield waiter
        finally:
            del self._waiters[waiter]
            if waiter.event.is_set() or self._left_uncovered(waiter):
                self.pass_on(queue_types)

    def _left_uncovered(self, gone: Waiter) -> bool:
        due_at = gone.due_at
        return due_at is not None and not any(
            w.group == gone.group and w.wakes_at <= due_at for w in self._waiters
        )

    def signal(self, queue_type: str | None = None, *, everyone: bool = False) -> None:
        """Items of ``queue_type`` (of any type if ``None``) may be claimable: wake one waiter
        of each group concerned (``everyone``: every waiter), and every feed follower. On
        the loop."""
        self.wakeups += 1
        self._wake_followers()
        self._wake(lambda types: queue_type is None or queue_type in types, everyone)

    def pass_on(self, queue_types: Sequence[str]) -> None:
        """A woken waiter claimed a full batch (more may be there), or left without
        claiming: wake the next waiter of each group that claims any of ``queue_types``."""
        self._wake(lambda types: not types.isdisjoint(queue_types))

    def _wake(self, concerns: Callable[[frozenset[str]], bool], everyone: bool = False) -> None:
        # A group with a waiter already woken needs no other: that waiter's claim comes
        # after this commit, and it passes on if there is more.
        awake = set() if everyone else {w.group for w in self._waiters if w.event.is_set()}
        for waiter in self._waiters:
            if waiter.group not in awake and concerns(waiter.types):
                waiter.event.set()
                if not everyone:
                    awake.add(waiter.group)

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
            self._wake_followers()

    def _wake_followers(self) -> None:
        for follower in self._followers:
            follower.set()

    def bounded(self, timeout: float) -> float:
        """``timeout`` in seconds, cut to :data:`FALLBACK_POLL_S` while no signal is sure to
        come (:attr:`reliable` is false)."""
        return timeout if self.reliable else min(timeout, FALLBACK_POLL_S)

    @staticmethod
    async def woken(event: asyncio.Event, seconds: float) -> bool:
        """Wait up to ``seconds`` for ``event``; whether it was set."""
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # arrives as the event is set.
        try:
            async with asyncio.timeout(seconds):
                await event.wait()
        except TimeoutError:
            return False
        return True

    def committed(self) -> None:
        """A write transaction committed (any thread): wake one waiter of each group."""
        loop = self._loop
        if loop is None or not (self._waiters or self._followers) or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self.signal)

    async def close(self) -> None:
        """Stop the watcher or listener, and wake every waiter and follower. Idempotent."""
        self._closed = True
        # Nothing would wake them any more: each reads or claims again at once and learns
        # that the store is closed, instead of sleeping on to its deadline.
        self.signal(everyone=True)
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
            self.signal(everyone=True)  # all fall back to polling
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
