"""A child process for the feed's no-skip test: transactions that take their transaction id,
wait a random time, append events through the store's own statements
(``queries.append_events``), wait again and then commit (or, sometimes, roll back). Prints
the id of every committed event, one per line.

    python feed_writer.py URL EXECUTION_ID TRANSACTIONS SEED
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
import uuid
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

from statestore import DatabaseError, StateStore
from statestore.db import queries


class Abort(Exception):
    pass


async def main(url: str, execution_id: uuid.UUID, transactions: int, seed: int) -> None:
    rng = random.Random(seed)
    store = await StateStore.connect(url)
    try:
        for _ in range(transactions):
            events = [
                queries.NewEvent(uuid.uuid4(), "fed", '{"type":"fed"}')
                for _ in range(rng.choice((1, 1, 2, 3)))
            ]
            before, after = rng.uniform(0, 0.02), rng.uniform(0, 0.03)
            abort = rng.random() < 0.1

            def write(
                session: Session,
                events: list[queries.NewEvent] = events,
                before: float = before,
                after: float = after,
                abort: bool = abort,
            ) -> None:
                session.execute(text("SELECT pg_current_xact_id()"))  # the id is taken now
                time.sleep(before)
                appended = queries.append_events(
                    session, execution_id, events, datetime.now(UTC), None
                )
                assert isinstance(appended, int)
                time.sleep(after)  # commit late
                if abort:
                    raise Abort

            try:
                await store.run(write)
            except DatabaseError as exc:  # the runner wraps what the operation raised
                if not isinstance(exc.__cause__, Abort):
                    raise
                continue
            for event in events:
                print(event.id, flush=True)
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], uuid.UUID(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
