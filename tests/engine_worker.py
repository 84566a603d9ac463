"""A worker process of a small DAG engine built on the store's public API, for the
engine-level kill -9 test. Each node is one step: claim, work under a heartbeat, then ONE
``commit_turn`` that settles the item, records the node's event and state, and enqueues
what comes next.

The DAG of every execution: ``a`` fans out to ``b`` and ``c`` and enqueues the join ``d``;
``d`` parks itself until ``b`` and ``c`` are both done; ``d`` enqueues ``e``; ``e`` completes
the execution.

    python engine_worker.py URL WORKER_TAG TASKS
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
from datetime import timedelta

from statestore import (
    LeaseLostError,
    NodeCompleted,
    StateStore,
    WorkflowCompleted,
    WorkflowStatus,
    WorkItem,
)

LEASE = timedelta(seconds=1)
QUEUE = "engine"
NEXT = {"a": ["b", "c", "d"], "b": [], "c": [], "d": ["e"], "e": []}


async def step(store: StateStore, worker: str, item: WorkItem) -> None:
    async with store.heartbeat(item, worker_id=worker, every=LEASE / 3):
        await asyncio.sleep(random.uniform(0, 0.03))  # the node's work
        if item.node_id == "d":
            execution = await store.get_execution(item.execution_id)
            assert execution is not None
            if not {"b", "c"} <= set(execution.current_state):
                await store.park_work_item(
                    item.id,
                    worker_id=worker,
                    lease_fence=item.lease_fence,
                    retry_in=timedelta(milliseconds=50),
                )
                return
    node = item.node_id
    events = [NodeCompleted(node_id=node, output=worker, state_patch={node: 1}, duration_ms=1)]
    last = node == "e"
    if last:
        events.append(WorkflowCompleted(final_state={}))
    await store.commit_turn(
        item.id,
        worker_id=worker,
        lease_fence=item.lease_fence,
        events=events,
        state_patch={node: worker},
        enqueue=[
            WorkItem(execution_id=item.execution_id, node_id=n, queue_type=QUEUE, max_attempts=1000)
            for n in NEXT[node]
        ],
        status=WorkflowStatus.COMPLETED if last else None,
        snapshot=last,
    )
    print(f"{node} {item.execution_id}", flush=True)


async def main(url: str, tag: str, tasks: int) -> None:
    store = await StateStore.connect(url, lease_duration=LEASE)

    async def loop(task: int) -> None:
        worker = f"{tag}-{task}"
        while True:
            item = await store.claim_work_item(worker, [QUEUE])
            if item is None:
                await asyncio.sleep(0.01)
                continue
            # LeaseLostError: reclaimed while we worked; another worker runs the node.
            with contextlib.suppress(LeaseLostError):
                await step(store, worker, item)

    await asyncio.gather(*(loop(t) for t in range(tasks)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
