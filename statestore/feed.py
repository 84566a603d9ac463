"""Following the database-wide event feed: pages of :meth:`EventRepository.feed`, one read
each, and with ``follow`` a bounded poll between empty pages (the feed's horizon on
PostgreSQL moves when the oldest running transaction ends, which no notification names)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from statestore.db.backend import Backend
from statestore.db.runner import Call
from statestore.db.tenancy import Scope
from statestore.models import Event
from statestore.repositories.events import MAX_BATCH, EventRepository
from statestore.validation import check_int

FIRST_POLL_S = 0.01
"""The first wait after an empty page; it doubles up to :data:`MAX_POLL_S`."""
MAX_POLL_S = 0.5
"""The longest wait between two reads of a followed feed with nothing new."""


async def iter_feed(
    backend: Backend,
    scope: Scope,
    events: EventRepository,
    after: int,
    follow: bool,
    batch: int,
) -> AsyncIterator[Event]:
    """Feed events after ``after`` in feed order, ``batch`` per read. Without ``follow`` it
    ends at the first short page; with it, it waits (:data:`FIRST_POLL_S` doubling up to
    :data:`MAX_POLL_S`) and reads again, forever."""
    cursor = check_int("after", after, minimum=0)
    batch = check_int("batch", batch, minimum=1, maximum=MAX_BATCH)
    pause = FIRST_POLL_S
    while True:
        page = await backend.read(Call(events.feed, (cursor, batch)), scope)
        for event in page:
            yield event
        if page:
            cursor = page[-1].position or cursor
            pause = FIRST_POLL_S
        if len(page) == batch:
            continue
        if not follow:
            return
        await asyncio.sleep(pause)
        pause = min(pause * 2, MAX_POLL_S)
