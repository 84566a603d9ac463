"""A process running maintenance, for the maintenance tests.

    python maintain_worker.py URL SECONDS

Connects, prints "ready", runs ``run_maintenance(every=0.05)`` for SECONDS, then prints the
JSON list of the ids of the items it reclaimed (from the maintenance log records).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from datetime import timedelta

from statestore import StateStore

reclaimed: list[str] = []


class Collect(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        result = getattr(record, "reclaimed", None)
        if result is not None:
            reclaimed.extend(str(item.id) for item in [*result.retryable, *result.exhausted])


async def main(url: str, seconds: float) -> None:
    logger = logging.getLogger("statestore")
    logger.setLevel(logging.INFO)
    logger.addHandler(Collect())
    store = await StateStore.connect(url)
    try:
        await store.queue_stats()
        print("ready", flush=True)
        task = asyncio.create_task(store.run_maintenance(every=timedelta(seconds=0.05)))
        await asyncio.sleep(seconds)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        await store.close()
    print(json.dumps(reclaimed), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
