"""Public calls made of several transactions: each step is one repository operation
through the backend, so the facade stays a list of delegations."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

from statestore.db.backend import Backend
from statestore.db.runner import Call
from statestore.db.tenancy import Scope
from statestore.errors import StateStoreError, ValidationError
from statestore.models import ApiToken, Event, ReclaimResult
from statestore.repositories.auth import AuthRepository
from statestore.repositories.events import EventRepository
from statestore.repositories.queue import RECLAIM_BATCH, QueueRepository
from statestore.validation import check_int

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
