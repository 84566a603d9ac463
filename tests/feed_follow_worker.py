"""A process that writes one event for the feed's wake-up tests.

    python feed_follow_worker.py URL MODE

MODE ``append``: a plain ``append_event`` on a new execution (on PostgreSQL it sends no
notification). MODE ``start``: ``start_execution`` with the event and a work item, one
transaction that notifies on PostgreSQL. Prints the wall-clock time (``time.time()``) right
after the write returned.
"""

from __future__ import annotations

import asyncio
import sys
import time

from statestore import CustomEvent, Event, StateStore, WorkflowExecution, WorkItem


async def main(url: str, mode: str) -> None:
    store = await StateStore.connect(url)
    try:
        execution = WorkflowExecution(workflow_id="child", workflow_version="1")
        kind = CustomEvent(type="from-child")
        if mode == "append":
            await store.create_execution(execution)
            await store.append_event(Event(execution_id=execution.execution_id, kind=kind))
        else:
            work = WorkItem(execution_id=execution.execution_id, node_id="n", queue_type="q")
            await store.start_execution(execution, events=[kind], enqueue=[work])
        print(time.time(), flush=True)
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
