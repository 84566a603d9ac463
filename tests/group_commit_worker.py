"""A child process for the group-commit crash test: many concurrent appenders on one SQLite
store (durability FULL), printing each acknowledged append as soon as its await returns.

    python group_commit_worker.py URL EXECUTION_ID TASKS
"""

from __future__ import annotations

import asyncio
import sys

from statestore import CustomEvent, Event, StateStore


async def main(url: str, execution_id: str, tasks: int) -> None:
    store = await StateStore.connect(url, durability="FULL")

    async def appender(task: int) -> None:
        n = 0
        while True:
            label = f"{task}-{n}"
            event = Event(execution_id=execution_id, kind=CustomEvent(type="probe", label=label))
            sequence = await store.append_event(event)
            print(f"ack {label} {sequence}", flush=True)
            n += 1

    await asyncio.gather(*(appender(t) for t in range(tasks)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
