"""Crashes: a child running a mixed write workload is killed with SIGKILL at random moments;
PostgreSQL backends are terminated under a live store. Nothing acknowledged is lost, nothing
is half-written, and the store carries on."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from statestore import DatabaseError, StateStore, WorkflowExecution, WorkItemStatus

WORKER = Path(__file__).with_name("crash_worker.py")
ROUNDS = int(os.environ.get("STATESTORE_CRASH_ROUNDS", "3"))


async def run_and_kill(
    url: str, execution_id: str, acks_wanted: int, tag: str, *options: str
) -> list[dict[str, Any]]:
    """Run ``crash_worker.py`` (``options``: its optional arguments) until it acknowledged
    ``acks_wanted`` writes, then kill -9 it; the acknowledgements."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKER),
        url,
        execution_id,
        "6",
        tag,
        *options,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None and child.stderr is not None
    acks: list[dict[str, Any]] = []
    while len(acks) < acks_wanted:
        line = await asyncio.wait_for(child.stdout.readline(), timeout=60)
        if not line:
            pytest.fail(f"worker died: {(await child.stderr.read()).decode()[-2000:]}")
        acks.append(json.loads(line))
    os.kill(child.pid, signal.SIGKILL)
    await child.wait()
    return acks


async def verify(store: StateStore, execution_id: str, acks: list[dict[str, Any]]) -> None:
    events = await store.get_events(execution_id)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))  # gapless
    stored = {e.kind.model_dump()["label"]: e.sequence for e in events}
    execution = await store.get_execution(execution_id)
    assert execution is not None and isinstance(execution.current_state, dict)
    patched = execution.current_state.get("items", [])
    assert len(patched) == len(set(patched))  # no append applied twice
    items = {str(i.id): i for i in await store.list_work_items(execution_id)}
    for entry in acks:
        if entry["op"] == "append":
            assert stored.get(entry["label"]) == entry["sequence"], entry
        elif entry["op"] == "patch":
            assert entry["label"] in patched, entry
        elif entry["op"] == "enqueue":
            assert entry["id"] in items, entry
        elif entry["op"] == "claim":
            assert items[entry["id"]].status in {WorkItemStatus.CLAIMED, WorkItemStatus.COMPLETED}
        elif entry["op"] == "complete":
            assert items[entry["id"]].status is WorkItemStatus.COMPLETED, entry
    for item in items.values():  # one status per item: never both completed and pending
        if item.status is WorkItemStatus.COMPLETED:
            assert item.attempt == 1 and item.worker_id is not None


@pytest.mark.parametrize("round_", range(ROUNDS))
async def test_kill_9_during_a_mixed_workload(
    make_store: Any, database_url: str, backend: str, round_: int
) -> None:
    store: StateStore = await make_store()
    execution = WorkflowExecution(workflow_id="wf", workflow_version="1")
    await store.create_execution(execution)
    eid = str(execution.execution_id)
    rng = random.Random(round_)
    all_acks: list[dict[str, Any]] = []
    for life in range(2):  # kill, reopen, carry on, kill again
        all_acks += await run_and_kill(database_url, eid, rng.randint(40, 400), f"life{life}")
        if backend == "sqlite":
            path = database_url.removeprefix("sqlite:///")
            check = sqlite3.connect(path)
            assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            check.close()
        reopened = await StateStore.connect(database_url)
        try:
            await verify(reopened, eid, all_acks)
        finally:
            await reopened.close()
    await verify(store, eid, all_acks)
    assert await store.claim_work_items("after", ["crash"], 1000) is not None


async def test_terminated_postgres_backends_give_database_error_then_recover(
    pg_database: str,
) -> None:
    from conftest import reset_pg

    await reset_pg(pg_database)
    store = await StateStore.connect(pg_database)
    try:
        execution = WorkflowExecution(workflow_id="wf", workflow_version="1")
        await store.create_execution(execution)
        for _ in range(3):
            async with store.engine.connect() as admin:
                await admin.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
            # the call that meets the dead connection may fail, cleanly typed
            with contextlib.suppress(DatabaseError):
                await store.get_execution(execution.execution_id)
            # the next call succeeds on a fresh connection
            found = await store.get_execution(execution.execution_id)
            assert found is not None and found.execution_id == execution.execution_id
            assert await store.patch_append_array(execution.execution_id, "ok", 1) is None
        final = await store.get_execution(execution.execution_id)
        assert final is not None and final.current_state == {"ok": [1, 1, 1]}
    finally:
        await store.close()
