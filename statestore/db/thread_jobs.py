"""Handing work from the event loop to a database thread and the result back: one hop
each way (an executor future costs more).

A :class:`Job` is queued by the event loop; a thread runs it on its own connection and
session and :func:`deliver` resolves the caller's future with one wake-up per event loop,
however many jobs it resolves (a group commit typically resolves a dozen callers at once).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection

from statestore.db.runner import Operation, new_session, run_in_session
from statestore.db.tenancy import Scope, TenantSession

T = TypeVar("T")
Work = Callable[[Connection, TenantSession], Any]
Outcome = tuple[Any, BaseException | None]


@dataclass(slots=True)
class Job:
    """One caller's work for a database thread, and the future it awaits."""

    work: Work
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    exclusive: bool = False
    """Manages its own transactions (migrations): runs alone, outside any group."""
    abandoned: Callable[[Any, BaseException | None], None] | None = None
    """Called on the loop with the outcome (result, error) if the caller stopped waiting
    (its future was cancelled) before it was delivered."""


def operation_work(op: Operation[T], scope: Scope) -> Work:
    """``op`` run on the thread's own session (see :func:`run_in_session`)."""
    return lambda connection, session: run_in_session(connection, op, scope, session)


def connection_work(fn: Callable[[Connection], T]) -> Work:
    """``fn`` given the thread's connection and nothing else."""
    return lambda connection, _session: fn(connection)


class ThreadState:
    """What a database thread keeps between jobs: its connection (opened on first use)
    and one reused session."""

    __slots__ = ("connection", "session")

    def __init__(self) -> None:
        self.connection: Connection | None = None
        self.session = new_session()

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def after_failure(self) -> None:
        """Keep the connection only if the driver reports it idle (no transaction left
        open); otherwise close it. A failed COMMIT, BEGIN or ROLLBACK can leave the driver
        inside a transaction that SQLAlchemy believes ended: the next BEGIN would then fail,
        or worse, the next job would run inside the stale transaction."""
        connection = self.connection
        if connection is None:
            return
        if not (connection.invalidated or connection.closed):
            driver = connection.connection.dbapi_connection
            idle = driver is not None and not driver.in_transaction
            if idle and not connection.in_transaction():
                return
        with contextlib.suppress(Exception):
            connection.invalidate()  # closes the driver connection (rolling back)
        with contextlib.suppress(Exception):
            connection.close()
        self.connection = None


def deliver(jobs: list[Job], outcomes: list[Outcome]) -> None:
    """Hand each job its outcome: one wake-up per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, Outcome]]] = {}
    for job, outcome in zip(jobs, outcomes, strict=True):
        by_loop.setdefault(job.loop, []).append((job, outcome))
    for loop, resolved in by_loop.items():
        # RuntimeError: the caller's event loop is closed; nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve_all, resolved)


def _resolve_all(resolved: list[tuple[Job, Outcome]]) -> None:
    for job, (result, error) in resolved:
        future = job.future
        if future.done():  # the caller was cancelled; the write may still have committed
            if job.abandoned is not None:
                job.abandoned(result, error)
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
