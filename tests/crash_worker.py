"""A child process for the kill -9 tests: a mixed write workload on one store, printing one
JSON line per acknowledged write as soon as its await returns.

    python crash_worker.py URL EXECUTION_ID TASKS TAG [HOLD_QUEUE LEASE_SECONDS]

With ``HOLD_QUEUE`` the worker first claims one item of that queue type (leased for
``LEASE_SECONDS``), reports it (``op="hold"``) and never settles it: the item a killed
worker leaves leased.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from datetime import timedelta

from statestore import CustomEvent, Event, StateStore, WorkItem


def ack(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def main(url: str, execution_id: str, tasks: int, tag: str, hold: list[str]) -> None:
    lease = timedelta(seconds=float(hold[1])) if hold else timedelta(seconds=30)
    store = await StateStore.connect(url, lease_duration=lease)
    eid = uuid.UUID(execution_id)
    if hold:
        held = await store.claim_work_item("holder", [hold[0]])
        assert held is not None, "nothing to hold"
        ack(op="hold", id=str(held.id), lease_fence=held.lease_fence)

    async def worker(task: int) -> None:
        n = 0
        while True:
            label = f"{tag}-{task}-{n}"
            step = n % 4
            if step == 0:
                event = Event(execution_id=eid, kind=CustomEvent(type="probe", label=label))
                ack(op="append", label=label, sequence=await store.append_event(event))
            elif step == 1:
                await store.patch_append_array(eid, "items", label)
                ack(op="patch", label=label)
            elif step == 2:
                item = WorkItem(execution_id=eid, node_id=label, queue_type="crash")
                await store.enqueue_work_item(item)
                ack(op="enqueue", id=str(item.id))
            else:
                claimed = await store.claim_work_item(f"w{task}", ["crash"])
                if claimed is not None:
                    ack(op="claim", id=str(claimed.id))
                    await store.complete_work_item(
                        claimed.id, worker_id=f"w{task}", lease_fence=claimed.lease_fence
                    )
                    ack(op="complete", id=str(claimed.id))
            n += 1

    await asyncio.gather(*(worker(t) for t in range(tasks)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:7]))
