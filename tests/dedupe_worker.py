"""A child process for the dedupe test: enqueue items with one dedupe key, as fast as it
can, printing each returned id.

    python dedupe_worker.py URL EXECUTION_ID KEY COUNT
"""

from __future__ import annotations

import asyncio
import sys
import uuid

from statestore import StateStore, WorkItem


async def main(url: str, execution_id: str, key: str, count: int) -> None:
    store = await StateStore.connect(url)
    try:
        for _ in range(count):
            item = WorkItem(
                execution_id=uuid.UUID(execution_id), node_id="n", queue_type="dq", dedupe_key=key
            )
            print(await store.enqueue_work_item(item), flush=True)
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
