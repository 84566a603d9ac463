"""The SQLite writer: one thread owning one connection, committing every write waiting at
that moment in one transaction (group commit). Repositories do not know about it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import Connection, Engine

from statestore.db.runner import follow_up_failed, translated
from statestore.db.thread_jobs import Job, Outcome, ThreadState, Work, deliver
from statestore.errors import DatabaseError

_log = logging.getLogger("statestore")


class GroupCommitWriter:
    """Runs write jobs on its thread, each waiting batch in one ``BEGIN IMMEDIATE …
    COMMIT`` with every job in its own SAVEPOINT. A caller's future resolves only after
    the COMMIT succeeded, so no durability is given up for the batching."""

    def __init__(self, engine: Engine, *, max_group: int = 64) -> None:
        self.engine = engine
        self.max_group = max_group
        """At most this many waiting writes share one transaction."""
        self.transactions = 0
        """Write transactions committed so far (with ``operations``: the group-commit
        ratio, for monitoring)."""
        self.operations = 0
        self.after_commit: Callable[[], None] | None = None
        """Called on the writer thread after each group's COMMIT (the store's waker)."""
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._follow_ups: set[asyncio.Future[Any]] = set()

    async def run(
        self,
        work: Work,
        loop: asyncio.AbstractEventLoop,
        *,
        exclusive: bool = False,
        abandoned: Callable[[Any, BaseException | None], None] | None = None,
    ) -> Any:
        """Queue ``work`` (``exclusive``: alone, outside any group) and await its outcome.
        ``abandoned``: called on the loop with the outcome (result, error) if the caller
        stops waiting before it arrives (it may queue a follow-up: :meth:`follow_up`)."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._loop, name="statestore-writer", daemon=True
                    )
                    self._thread.start()
        future: asyncio.Future[Any] = loop.create_future()
        self._jobs.put(Job(work, loop, future, exclusive, abandoned))
        try:
            return await future
        except asyncio.CancelledError:
            # Cancelled just as the outcome arrived: delivered to a future nobody takes it
            # from any more (a future cancelled before is handled where it is delivered).
            if abandoned is not None and future.done() and not future.cancelled():
                error = future.exception()
                abandoned(None if error else future.result(), error)
            raise

    def follow_up(self, work: Work, loop: asyncio.AbstractEventLoop) -> None:
        """Queue ``work`` that nobody waits for (the follow-up of an abandoned write, queued
        on the loop): :meth:`stop` runs it, and its failure is logged."""
        future: asyncio.Future[Any] = loop.create_future()
        self._follow_ups.add(future)
        future.add_done_callback(self._followed_up)
        self._jobs.put(Job(work, loop, future))

    def _followed_up(self, future: asyncio.Future[Any]) -> None:
        self._follow_ups.discard(future)
        error = None if future.cancelled() else future.exception()
        if error is not None:
            follow_up_failed(error)

    async def stop(self) -> None:
        """Run what is queued, and the follow-ups it leads to, then stop the thread and
        close its connection."""
        if self._thread is not None:
            # Outcomes reach the loop in the order the jobs ran, one hop each: once this
            # no-op's has, every job queued before it was delivered, and the follow-up of
            # an abandoned one was queued as it was, ahead of the stop marker. A thread
            # that died (an unexpected error) never delivers it: stop waiting at its end.
            joined = asyncio.ensure_future(asyncio.to_thread(self._thread.join))
            loop = asyncio.get_running_loop()
            nothing = asyncio.ensure_future(self.run(_nothing, loop, exclusive=True))
            try:
                await asyncio.wait({joined, nothing}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                nothing.cancel()
                with contextlib.suppress(BaseException):
                    await nothing
                self._jobs.put(None)
            await joined
            # Every outcome the thread delivered has reached the loop (before the join's):
            # a follow-up still pending never ran, its thread having died first.
            for future in list(self._follow_ups):
                if not future.done():
                    follow_up_failed(DatabaseError("the writer stopped before it ran"))
                    with contextlib.suppress(RuntimeError):  # its event loop is closed
                        future.cancel()

    def _loop(self) -> None:
        state = ThreadState()
        for group in self._groups():
            if group[0].exclusive:
                self._run_exclusive(group[0], state)
            else:
                self._run_group(group, state)
        state.close()

    def _groups(self) -> Iterator[list[Job]]:
        """The jobs as they come: every waiting job up to ``max_group`` in one group; an
        exclusive job always alone. Ends at the stop marker, after what was drained."""
        taken: list[Job | None] = []  # taken while draining, but must run on its own
        while True:
            job = taken.pop() if taken else self._jobs.get()
            if job is None:
                return
            group = [job]
            while not job.exclusive and len(group) < self.max_group:
                try:
                    waiting = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if waiting is None or waiting.exclusive:
                    taken.append(waiting)
                    break
                group.append(waiting)
            yield group

    def _run_group(self, jobs: list[Job], state: ThreadState) -> None:
        """One transaction for the group; a failed BEGIN or COMMIT fails every job of it
        (and the connection is replaced if the driver was left inside a transaction)."""
        outcomes: list[Outcome] = []
        try:
            if state.connection is None:
                state.connection = self.engine.connect()
            connection = state.connection
            changes_before = _total_changes(connection)
            with connection.begin():
                if len(jobs) == 1:  # nothing to isolate it from: no savepoint needed
                    outcomes.append((jobs[0].work(connection, state.session), None))
                else:
                    outcomes.extend(_in_savepoint(job, connection, state) for job in jobs)
            self.transactions += 1
            self.operations += len(jobs)
        except BaseException as exc:
            outcomes = [(None, translated(exc))] * len(jobs)
            state.after_failure()
        else:
            # Only a group that changed rows wakes waiters: a claim that found nothing
            # commits too, and must not wake the other waiters into claiming in turn.
            if self.after_commit is not None and _total_changes(connection) != changes_before:
                _signal(self.after_commit)
        deliver(jobs, outcomes)

    def _run_exclusive(self, job: Job, state: ThreadState) -> None:
        """A job that manages its own transactions (migrations, schema checks)."""
        outcome: Outcome
        try:
            if state.connection is None:
                state.connection = self.engine.connect()
            connection = state.connection
            try:
                outcome = (job.work(connection, state.session), None)
            finally:
                if connection.in_transaction():
                    connection.rollback()
        except BaseException as exc:
            outcome = (None, translated(exc))
            state.after_failure()
        deliver([job], [outcome])


def _signal(hook: Callable[[], None]) -> None:
    """Run the after-commit hook; its failure is logged, never raised: the group committed,
    and its callers must still get their outcomes (and the thread must live on)."""
    try:
        hook()
    except Exception:
        _log.exception("the writer's after-commit hook failed (waiting claims poll instead)")


def _nothing(_connection: Connection, _session: object) -> None:
    return None


def _in_savepoint(job: Job, connection: Connection, state: ThreadState) -> Outcome:
    """One job of a group: its error rolls back only its own SAVEPOINT and reaches only its
    caller. A failing SAVEPOINT statement itself fails the whole group (raised)."""
    savepoint = connection.begin_nested()
    try:
        result = job.work(connection, state.session)
    except Exception as exc:
        if savepoint.is_active:  # a failed flush may have rolled it back already
            savepoint.rollback()
        return None, translated(exc)
    savepoint.commit()
    return result, None


def _total_changes(connection: Connection) -> int:
    """Rows changed on this SQLite connection since it opened (a counter in memory)."""
    changes: int = connection.connection.dbapi_connection.total_changes  # type: ignore[union-attr]
    return changes
