"""Following the database-wide event feed: pages of :meth:`EventRepository.feed`, one read
each, and with ``follow`` a wait between short pages for the store's wake-ups
(:meth:`statestore.db.wakeup.Waker.following`), bounded by a poll.

The poll stays because a wake-up cannot cover everything: on PostgreSQL the feed's horizon
moves when the oldest running transaction ends, which no notification names, another
process's plain appends send no notification (docs/architecture.md, "The feed"), and the
listener connection may be down."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

from statestore.db.backend import Backend
from statestore.db.runner import Call
from statestore.db.tenancy import Scope
from statestore.models import Event
from statestore.repositories.events import MAX_BATCH, EventRepository
from statestore.validation import check_int

FIRST_POLL_S = 0.01
"""The first wait after a short page with no wake-up; it doubles up to :data:`MAX_POLL_S`,
and starts again after a page with events or a wake-up."""
MAX_POLL_S = 0.25
"""The longest wait between two reads of a followed feed with nothing new (while the
PostgreSQL listener is down, at most the claims' fallback poll)."""


async def iter_feed(
    backend: Backend,
    scope: Scope,
    events: EventRepository,
    after: int,
    follow: bool,
    batch: int,
) -> AsyncGenerator[Event, None]:
    """Feed events after ``after`` in feed order, ``batch`` per read. Without ``follow`` it
    ends at the first short page; with it, it waits for a wake-up or the poll (see the
    module) and reads again, forever. Closing or cancelling it unregisters its waiter."""
    cursor = check_int("after", after, minimum=0)
    batch = check_int("batch", batch, minimum=1, maximum=MAX_BATCH)
    waker = backend.waker
    # Only a follower registers: a plain read must not start the listener or the watcher.
    waiting = waker.following() if follow else contextlib.nullcontext(asyncio.Event())
    with waiting as woken:
        pause = FIRST_POLL_S
        while True:
            woken.clear()  # before the read: a commit after it wakes the wait below
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
            if await waker.woken(woken, waker.bounded(pause)):
                # Something committed. If the horizon still holds it back, the next read
                # comes soon again.
                pause = FIRST_POLL_S
            else:
                pause = min(pause * 2, MAX_POLL_S)
