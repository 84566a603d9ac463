"""A process that enqueues one item, for the wake-up tests.

    python wait_worker.py URL EXECUTION_ID QUEUE_TYPE

Prints the wall-clock time (``time.time()``) right after the enqueue committed.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

from statestore import StateStore, WorkItem


async def main(url: str, execution_id: str, queue_type: str) -> None:
    store = await StateStore.connect(url)
    try:
        await store.queue_stats()  # connected and warm before the timed enqueue
        item = WorkItem(execution_id=uuid.UUID(execution_id), node_id="n", queue_type=queue_type)
        await store.enqueue_work_item(item)
        print(time.time(), flush=True)
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
