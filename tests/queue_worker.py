"""A worker process for the queue tests.

    python queue_worker.py URL MODE NAME TASKS [CLOCK_ISO] [ITEM_IDS_JSON]

MODE "work": TASKS concurrent loops claim one item at a time from queue "q" and complete it
with their fence, until the queue is empty; prints the JSON list of [item_id, worker] they
completed. MODE "reclaim": with the clock fixed at CLOCK_ISO, runs reclaim once; prints the
JSON list of ids it reported. MODE "renew": with the clock fixed at CLOCK_ISO, renews each
of ITEM_IDS_JSON (as worker NAME); prints the ids it renewed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import datetime

from statestore import LeaseLostError, StateStore


async def start_together(store: StateStore) -> None:
    """With $QUEUE_WORKER_BARRIER set: connect, print "ready", and wait for a line on stdin,
    so that every worker process starts claiming at the same moment."""
    if not os.environ.get("QUEUE_WORKER_BARRIER"):
        return
    await store.queue_stats()  # connected and warm
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)


async def work(store: StateStore, name: str, tasks: int) -> list[list[str]]:
    done: list[list[str]] = []
    await start_together(store)

    async def loop(task: int) -> None:
        worker = f"{name}-{task}"
        while True:
            item = await store.claim_work_item(worker, ["q"])
            if item is None:
                return
            await store.complete_work_item(item.id, worker_id=worker, lease_fence=item.lease_fence)
            done.append([str(item.id), worker])

    await asyncio.gather(*(loop(t) for t in range(tasks)))
    return done


async def main() -> None:
    url, mode, name, tasks = sys.argv[1:5]
    clock_at = datetime.fromisoformat(sys.argv[5]) if len(sys.argv) > 5 else None
    options = {"clock": (lambda: clock_at)} if clock_at else {}
    store = await StateStore.connect(url, **options)
    try:
        if mode == "work":
            result: object = await work(store, name, int(tasks))
        elif mode == "reclaim":
            reclaimed = await store.reclaim_expired_leases()
            result = [str(i.id) for i in reclaimed.retryable + reclaimed.exhausted]
        else:
            renewed = []
            for item_id in json.loads(sys.argv[6]):
                try:
                    await store.renew_lease(item_id, name)
                    renewed.append(item_id)
                except LeaseLostError:
                    pass
            result = renewed
    finally:
        await store.close()
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
