"""An engine on commit_turn survives kill -9: worker processes running a small DAG (fan-out
and join) are killed at random and replaced; afterwards every execution is completed and
every node's effect is there exactly once, in events and in state, with no step lost."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from statestore import StateStore, WorkflowExecution, WorkflowStatus, WorkItem

WORKER = Path(__file__).with_name("engine_worker.py")
EXECUTIONS = 16
NODES = ("a", "b", "c", "d", "e")
ROUNDS = int(os.environ.get("STATESTORE_CRASH_ROUNDS", "1"))


async def _spawn(url: str, tag: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKER),
        url,
        tag,
        "3",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


@pytest.mark.parametrize("round_", range(ROUNDS))
async def test_kill_9_workers_of_a_dag_engine(
    make_store: Any, database_url: str, round_: int
) -> None:
    store: StateStore = await make_store()
    rng = random.Random(round_)
    runs = []
    for _ in range(EXECUTIONS):
        run = WorkflowExecution(workflow_id="dag", workflow_version="1")
        await store.start_execution(
            run,
            enqueue=[
                WorkItem(
                    execution_id=run.execution_id,
                    node_id="a",
                    queue_type="engine",
                    max_attempts=1000,
                )
            ],
        )
        runs.append(run.execution_id)
    workers = [await _spawn(database_url, f"p{n}") for n in range(3)]
    kills = 0
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(rng.uniform(0.2, 0.6))
            if kills < 12:
                victim = workers.pop(rng.randrange(len(workers)))
                victim.send_signal(signal.SIGKILL)
                await victim.wait()
                kills += 1
                workers.append(await _spawn(database_url, f"p{kills + 3}"))
            await store.reclaim_expired_leases()
            done = await store.list_executions(status=WorkflowStatus.COMPLETED, limit=1000)
            if len(done) == EXECUTIONS:
                break
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGKILL)
            await worker.wait()
    assert kills >= 3, "the workers were not killed enough to test anything"
    for execution_id in runs:
        execution = await store.get_execution(execution_id)
        assert execution is not None and execution.status is WorkflowStatus.COMPLETED
        events = await store.get_events(execution_id)
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        completed = Counter(e.kind.node_id for e in events if e.kind.type == "node_completed")
        assert completed == Counter(NODES), (execution_id, completed)  # each exactly once
        assert [e.kind.type for e in events].count("workflow_completed") == 1
        assert set(execution.current_state) == set(NODES)
        items = await store.list_work_items(execution_id)
        assert Counter(i.node_id for i in items) == Counter(NODES)  # no node enqueued twice
        assert {i.status for i in items} == {"completed"}
        state = await store.materialize(execution_id)
        assert state.status is WorkflowStatus.COMPLETED and state.active_nodes == []
        assert set(state.completed_nodes) == set(NODES)
