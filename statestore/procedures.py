"""Public calls made of several transactions: each step is one repository operation
through the backend, so the facade stays a list of delegations."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exc as sa_exc

from statestore.db.backend import Backend
from statestore.db.errors import sqlstate
from statestore.db.maintenance import Leadership, sqlite_housekeeping
from statestore.db.runner import Call
from statestore.db.tenancy import Scope
from statestore.errors import (
    ConflictError,
    LeaseLostError,
    NotFoundError,
    StateStoreError,
    ValidationError,
)
from statestore.models import ApiToken, Event, ReclaimResult, WorkflowExecution, WorkItem
from statestore.repositories.auth import AuthRepository
from statestore.repositories.events import EventRepository
from statestore.repositories.queue import RECLAIM_BATCH, QueueRepository
from statestore.repositories.turns import TurnRepository
from statestore.validation import check_identifier, check_int, check_timedelta, coerce_model

_log = logging.getLogger("statestore")


async def iter_events(
    backend: Backend,
    scope: Scope,
    events: EventRepository,
    execution_id: uuid.UUID | str,
    since: int,
    batch: int,
) -> AsyncIterator[Event]:
    """An execution's events after ``since``, read ``batch`` at a time by sequence (one
    read per page, so memory stays flat however long the history)."""
    check_int("batch", batch, minimum=1, maximum=10_000)
    cursor = since
    while True:
        page = await backend.read(Call(events.since, (execution_id, cursor, batch)), scope)
        for event in page:
            yield event
        if len(page) < batch:
            return
        cursor = page[-1].sequence


def wait_seconds(wait: timedelta | float | None) -> float:
    """``wait`` of a claim in seconds (0: do not wait)."""
    if wait is None:
        return 0.0
    if isinstance(wait, bool) or not isinstance(wait, timedelta | int | float):
        raise ValidationError(f"wait must be a timedelta or seconds, got {type(wait).__name__}")
    if not isinstance(wait, timedelta):
        if not math.isfinite(wait) or abs(wait) > 1e10:
            raise ValidationError("wait must be a finite number of seconds")
        wait = timedelta(seconds=float(wait))
    return check_timedelta("wait", wait).total_seconds()


async def claim_waiting(
    backend: Backend,
    scope: Scope,
    queue: QueueRepository,
    worker_id: str,
    queue_types: Sequence[str],
    limit: int,
    wait: timedelta | float | None,
) -> list[WorkItem]:
    """Claim up to ``limit`` items; with none eligible, wait up to ``wait`` for one, woken
    by the database (:mod:`statestore.db.wakeup`) or by the timer of the earliest delayed
    item, and claim again; a waiter that loses the race waits on until its deadline.
    Cancelling it while it waits claims nothing (each claim is one shielded transaction):
    a claim that commits after its caller left gives its items back (:func:`_give_back`).
    A claim that fails passes a wake-up on: on PostgreSQL it may have locked items that
    concurrent claims skipped (``SKIP LOCKED``) before going to wait for them."""
    seconds = wait_seconds(wait)
    claim = Call(queue.claim, (worker_id, queue_types, limit))
    give_back = functools.partial(_give_back, backend, queue, queue_types)
    if seconds <= 0:
        return await _claim(backend, scope, claim, give_back)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    waker = backend.waker
    waited = False
    with waker.waiting(queue_types, scope) as waiter:
        woken = waiter.event
        try:
            while True:
                woken.clear()  # before the claim: a commit after it wakes the wait below
                items = await _claim(backend, scope, claim, give_back)
                if waited and len(items) == limit:
                    woken.set()  # there may be more: leaving with it set wakes the next waiter
                remaining = deadline - loop.time()
                if items or remaining <= 0:
                    return items
                waited = True
                due = await backend.read(Call(queue.next_due, (queue_types,)), scope)
                timeout = remaining
                waiter.due_at = None
                if due is not None:
                    until_due = max((due - queue.context.now()).total_seconds(), 0.0)
                    timeout = min(timeout, until_due + 0.001)
                    waiter.due_at = loop.time() + until_due
                timeout = waker.bounded(timeout)
                waiter.wakes_at = loop.time() + timeout
                await waker.woken(woken, timeout)
        except BaseException:
            # A claim that failed or was cancelled may have been the one this waiter was
            # woken for: pass the wake-up on, or the item waits for the others' deadlines.
            woken.set()
            raise


async def _claim(
    backend: Backend,
    scope: Scope,
    claim: Call[list[WorkItem]],
    give_back: functools.partial[Call[Any] | None],
) -> list[WorkItem]:
    """One claim transaction; if it fails, the wake-up is passed on (:func:`_claim_failed`)
    before the error is raised."""
    try:
        return await backend.write(claim, scope, if_abandoned=give_back)
    except StateStoreError as exc:
        announce = give_back(None, exc)
        if announce is not None:
            with contextlib.suppress(StateStoreError):
                await backend.write(announce, scope)
        raise


def _give_back(
    backend: Backend,
    queue: QueueRepository,
    queue_types: Sequence[str],
    items: list[WorkItem] | None,
    error: BaseException | None,
) -> Call[Any] | None:
    """What follows a claim whose caller stopped waiting (cancelled, a timeout) while it
    ran. If it committed with items, nobody received them: they go back to the queue at
    once (:meth:`QueueRepository.release_abandoned`), instead of staying leased to nobody
    until the lease expires, with an attempt counted towards dead-lettering. If it failed,
    the wake-up is passed on (:func:`_claim_failed`), as for a caller still there."""
    if error is not None:
        return _claim_failed(backend, queue, queue_types, error)
    if not items:
        return None
    return Call(queue.release_abandoned, (items,))


def _claim_failed(
    backend: Backend, queue: QueueRepository, queue_types: Sequence[str], error: BaseException
) -> Call[None] | None:
    """A claim's transaction failed (and rolled back, releasing whatever rows it locked).
    On PostgreSQL concurrent claims skip rows another claim has locked (``SKIP LOCKED``)
    and go to wait, and a rollback sends no ``NOTIFY``: without a wake-up they would sleep
    to their deadline. So a waiter of each group claiming these queue types in this process
    is woken at once, and, when the server reported the failure (its connection is sound
    and the rollback done), the returned write announces the queue types to the waiters
    of every process (:meth:`QueueRepository.announce`). After a lost connection nothing
    is announced: the server may not be reachable, nor have rolled back yet; other
    processes' waiters then find the items at their next wake-up or deadline. A
    ``ValidationError`` is refused before any SQL ran: nothing was locked."""
    if isinstance(error, ValidationError):
        return None
    backend.waker.pass_on(queue_types)
    if backend.config.dialect != "postgresql" or not _server_reported(error):
        return None
    return Call(queue.announce, (queue_types,))


def _server_reported(error: BaseException) -> bool:
    """Whether the server reported ``error`` (a SQLSTATE): its connection answered."""
    cause = error.__cause__
    return isinstance(cause, sa_exc.DBAPIError) and sqlstate(cause) is not None


async def reclaim_expired_leases(
    backend: Backend, scope: Scope, queue: QueueRepository
) -> ReclaimResult:
    """Every expired lease back to the queue or the dead-letter queue, ``RECLAIM_BATCH``
    items per transaction (a short lock however many leases expired)."""
    result = ReclaimResult()
    while True:
        retryable, exhausted = await backend.write(
            Call(queue.reclaim_batch, (RECLAIM_BATCH,)), scope
        )
        result.retryable += retryable
        result.exhausted += exhausted
        if len(retryable) + len(exhausted) < RECLAIM_BATCH:
            return result


async def run_reclaimer(
    backend: Backend, scope: Scope, queue: QueueRepository, every: float | timedelta
) -> None:
    """:func:`reclaim_expired_leases` every ``every`` seconds until cancelled; a failing
    round is logged and retried on the next tick."""
    interval = every.total_seconds() if isinstance(every, timedelta) else float(every)
    if not interval > 0:
        raise ValidationError("every must be a positive number of seconds")
    while True:
        try:
            await reclaim_expired_leases(backend, scope, queue)
        except StateStoreError:
            _log.exception("reclaim_expired_leases failed; retrying in %.1f s", interval)
        await asyncio.sleep(interval)


async def validate_token(
    backend: Backend, scope: Scope, tokens: AuthRepository, token: str
) -> ApiToken | None:
    """Check ``token`` on a reader; only when its use must be recorded (at most once a
    minute) or its hash upgraded, one single-statement write follows."""
    found = await backend.read(Call(tokens.check, (token,)), scope)
    if found.token is None:
        return None
    if found.touch or found.new_hash is not None:
        found.token.last_used_at = await backend.write(
            Call(tokens.record_use, (found.token.id, found.new_hash)), scope
        )
    return found.token


@contextlib.asynccontextmanager
async def heartbeat(
    renew: Callable[[], Awaitable[datetime]], every: timedelta
) -> AsyncIterator[None]:
    """Call ``renew`` every ``every`` while the block runs. If a renewal finds the lease
    lost (or the item gone), the block is cancelled and :class:`LeaseLostError` raised out
    of it; any other failure of a renewal is logged and retried at the next tick (the lease
    may still hold)."""
    if not isinstance(every, timedelta) or not every.total_seconds() > 0:
        raise ValidationError("every must be a positive timedelta")
    interval = every.total_seconds()
    block = asyncio.current_task()
    assert block is not None
    lost: list[LeaseLostError] = []
    inside = True

    async def beat() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                try:
                    await renew()
                except NotFoundError as gone:
                    # The item is gone (or was never this scope's): no lease can be held on
                    # it, and retrying would only log the same failure at every tick.
                    raise LeaseLostError(str(gone)) from None
            except LeaseLostError as exc:
                # This task runs only while the block is suspended: if the block is still
                # inside, the cancellation lands in it, never after it.
                if inside:
                    lost.append(exc)
                    block.cancel()
                return
            except StateStoreError:
                _log.exception("lease renewal failed; retrying in %.1f s", interval)

    beater = asyncio.ensure_future(beat())
    try:
        yield
    except asyncio.CancelledError:
        if lost and block.uncancel() == 0:
            raise lost[0] from None
        raise
    finally:
        inside = False
        beater.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beater


async def start_execution(
    backend: Backend,
    scope: Scope,
    turns: TurnRepository,
    execution: WorkflowExecution,
    events: Sequence[Any],
    enqueue: Sequence[Any],
    idempotency_key: str | None,
) -> tuple[WorkflowExecution, bool]:
    """One transaction that starts the execution, or finds the one started with the key.
    Two concurrent starts with one key both miss it and both insert: the unique index lets
    one commit and refuses the other (``ConflictError``), which then reads the winner."""
    start = Call(turns.start, (execution, events, enqueue, idempotency_key))
    try:
        return await backend.write(start, scope)
    except ConflictError:
        if idempotency_key is None:
            raise
        checked = coerce_model("execution", WorkflowExecution, execution)
        key = check_identifier("idempotency_key", idempotency_key)
        found = await backend.read(Call(turns.find_started, (checked, key)), scope)
        if found is None:
            raise  # the conflict was not the key (e.g. a duplicate execution id)
        return found, False


RETENTION_BATCH = 1000
"""Settled items deleted per transaction by retention (short locks however many are due)."""
OPTIMIZE_EVERY = 720
"""SQLite: ``PRAGMA optimize`` on the first maintenance round and every this many after."""


async def maintain_once(
    backend: Backend,
    scope: Scope,
    queue: QueueRepository,
    retention: timedelta | None,
    *,
    optimize: bool = False,
) -> tuple[ReclaimResult, int]:
    """One maintenance round: reclaim expired leases; with ``retention``, delete the
    completed and failed items settled longer ago, :data:`RETENTION_BATCH` per
    transaction; on a SQLite file, checkpoint the WAL (and optimize). Returns what was
    reclaimed and how many items were deleted."""
    reclaimed = await reclaim_expired_leases(backend, scope, queue)
    deleted = 0
    if retention is not None:
        while True:
            count = await backend.write(
                Call(queue.delete_settled, (retention, RETENTION_BATCH)), scope
            )
            deleted += count
            if count < RETENTION_BATCH:
                break
    if backend.config.dialect == "sqlite" and not backend.config.is_memory:
        await backend.on_connection(lambda connection: sqlite_housekeeping(connection, optimize))
    return reclaimed, deleted


async def run_maintenance(
    backend: Backend,
    scope: Scope,
    queue: QueueRepository,
    every: timedelta | float,
    retention: timedelta | None,
) -> None:
    """:func:`maintain_once` every ``every`` until cancelled, while this process leads
    (:class:`statestore.db.maintenance.Leadership`: one process at a time on PostgreSQL).
    A failing round is logged and retried on the next tick; cancelling gives up the lead."""
    interval = every.total_seconds() if isinstance(every, timedelta) else every
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not interval > 0:
        raise ValidationError("every must be a positive number of seconds or a timedelta")
    if retention is not None:
        retention = check_timedelta("retention", retention)
    leadership = Leadership(backend.config, scope.tenant_id or "*")
    rounds = 0
    try:
        while True:
            try:
                if await leadership.held():
                    reclaimed, deleted = await maintain_once(
                        backend, scope, queue, retention, optimize=rounds % OPTIMIZE_EVERY == 0
                    )
                    rounds += 1
                    if reclaimed.retryable or reclaimed.exhausted or deleted:
                        _log.info(
                            "maintenance: reclaimed %d (%d dead-lettered), deleted %d",
                            len(reclaimed.retryable) + len(reclaimed.exhausted),
                            len(reclaimed.exhausted),
                            deleted,
                            extra={"reclaimed": reclaimed, "deleted": deleted},
                        )
            except (StateStoreError, OSError, TimeoutError) as exc:
                _log.warning("maintenance round failed (%s); retrying in %.1f s", exc, interval)
            except Exception as exc:  # asyncpg's errors on the leadership session
                if type(exc).__module__.split(".")[0] != "asyncpg":
                    raise
                _log.warning("maintenance leadership failed (%s); retrying", exc)
            await asyncio.sleep(interval)
    finally:
        await leadership.release()
