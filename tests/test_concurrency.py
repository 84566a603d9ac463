"""Real concurrency: several processes and connections against one database."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from statestore import StateStore, WorkflowExecution

WORKER = Path(__file__).with_name("concurrency_worker.py")


async def run_workers(
    url: str, execution_id: str, mode: str, processes: int, tasks: int, per_task: int
) -> list[list[object]]:
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            url,
            execution_id,
            mode,
            str(tasks),
            str(per_task),
            f"p{n}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for n in range(processes)
    ]
    results = []
    for proc in procs:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
        assert proc.returncode == 0, err.decode()
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    return results


async def new_execution(store: StateStore) -> str:
    execution = WorkflowExecution(workflow_id="wf", workflow_version="1")
    await store.create_execution(execution)
    return str(execution.execution_id)


async def test_eight_appenders_in_two_processes_leave_gapless_sequences(
    store: StateStore, database_url: str
) -> None:
    execution_id = await new_execution(store)
    processes, tasks, per_task = 2, 4, 25
    acknowledged = await run_workers(
        database_url, execution_id, "append", processes, tasks, per_task
    )

    total = processes * tasks * per_task
    returned = sorted(seq for result in acknowledged for seq in result)
    assert returned == list(range(1, total + 1))  # each sequence handed out exactly once
    events = await store.get_events(execution_id)
    assert [e.sequence for e in events] == list(range(1, total + 1))
    assert await store.latest_sequence(execution_id) == total
    labels = {e.kind.model_dump()["label"] for e in events}
    assert len(labels) == total  # every acknowledged append is stored, none twice


async def test_forty_concurrent_patch_append_array_calls_lose_nothing(
    store: StateStore, database_url: str
) -> None:
    execution_id = await new_execution(store)
    acknowledged = await run_workers(database_url, execution_id, "patch", 2, 20, 1)

    sent = sorted(str(label) for result in acknowledged for label in result)
    assert len(sent) == 40
    execution = await store.get_execution(execution_id)
    assert execution is not None
    assert isinstance(execution.current_state, dict)
    assert sorted(execution.current_state["items"]) == sent


async def test_concurrent_tasks_in_one_process_share_the_store(store: StateStore) -> None:
    execution_id = await new_execution(store)
    await asyncio.gather(*(store.patch_append_array(execution_id, "items", n) for n in range(40)))
    execution = await store.get_execution(execution_id)
    assert execution is not None and isinstance(execution.current_state, dict)
    assert sorted(execution.current_state["items"]) == list(range(40))
