"""A worker process for the concurrency tests: one store, several concurrent tasks.

    python concurrency_worker.py URL EXECUTION_ID MODE TASKS PER_TASK TAG

MODE "append": each task appends PER_TASK events; "patch": each task appends PER_TASK
values to current_state["items"]. Prints one JSON line: what this process saw acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import sys

from statestore import CustomEvent, Event, StateStore


async def main(url: str, execution_id: str, mode: str, tasks: int, per_task: int, tag: str) -> None:
    store = await StateStore.connect(url)
    acknowledged: list[object] = []

    async def work(task: int) -> None:
        for i in range(per_task):
            label = f"{tag}-{task}-{i}"
            if mode == "append":
                event = Event(
                    execution_id=execution_id, kind=CustomEvent(type="probe", label=label)
                )
                acknowledged.append(await store.append_event(event))
            else:
                await store.patch_append_array(execution_id, "items", label)
                acknowledged.append(label)

    try:
        await asyncio.gather(*(work(t) for t in range(tasks)))
    finally:
        await store.close()
    print(json.dumps(acknowledged))


if __name__ == "__main__":
    url, execution_id, mode, tasks, per_task, tag = sys.argv[1:]
    asyncio.run(main(url, execution_id, mode, int(tasks), int(per_task), tag))
