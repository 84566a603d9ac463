"""Group commit on SQLite: concurrent writes share transactions, each isolated by a
SAVEPOINT; results agree exactly with one-at-a-time execution; nothing acknowledged is lost
when the process is killed mid-batch."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from statestore import (
    CustomEvent,
    Event,
    SequenceConflictError,
    StateStore,
    StateStoreError,
    WorkflowExecution,
)
from statestore.db.sqlite_runner import SqliteRunner

WORKER = Path(__file__).with_name("group_commit_worker.py")


async def scenario(store: StateStore, executions: list[uuid.UUID], concurrent: bool) -> list[str]:
    """A fixed mix of writes, some of which must fail; returns each call's outcome."""
    duplicate = WorkflowExecution(
        execution_id=executions[0], workflow_id="wf", workflow_version="1"
    )

    def calls() -> list[Any]:
        made: list[Any] = []
        for n in range(60):
            target = executions[n % len(executions)]
            made.append(store.append_event(Event(execution_id=target, kind={"type": f"e{n}"})))
            if n % 7 == 0:
                made.append(store.create_execution(duplicate))  # ConflictError
            if n % 11 == 0:
                made.append(
                    store.append_event(Event(execution_id=uuid.uuid4(), kind={"type": "x"}))
                )
            if n % 5 == 0:
                made.append(store.patch_append_array(target, "seen", n))
            if n % 13 == 0:
                made.append(store.update_execution_current_state(target, {"bad": float("nan")}))
        return made

    async def outcome(call: Any) -> str:
        try:
            result = await call
        except StateStoreError as error:
            return type(error).__name__
        return "ok" if result is None else "ok:int" if isinstance(result, int) else repr(result)

    if concurrent:
        return list(await asyncio.gather(*(outcome(c) for c in calls())))
    return [await outcome(c) for c in calls()]


async def snapshot(store: StateStore, executions: list[uuid.UUID]) -> list[Any]:
    state = []
    for eid in executions:
        execution = await store.get_execution(eid)
        assert execution is not None
        kinds = sorted(e.kind.type for e in await store.get_events(eid))
        sequences = [e.sequence for e in await store.get_events(eid)]
        state.append((kinds, sequences, sorted(execution.current_state.get("seen", []))))
    return state


async def make_executions(store: StateStore) -> list[uuid.UUID]:
    ids = []
    for _ in range(3):
        run = WorkflowExecution(workflow_id="wf", workflow_version="1", current_state={})
        await store.create_execution(run)
        ids.append(run.execution_id)
    return ids


async def test_concurrent_mixed_writes_match_a_one_at_a_time_run(tmp_path: Path) -> None:
    async with await StateStore.open(f"sqlite:///{tmp_path / 'serial.db'}") as serial:
        serial_ids = await make_executions(serial)
        serial_outcomes = await scenario(serial, serial_ids, concurrent=False)
        serial_state = await snapshot(serial, serial_ids)

    async with await StateStore.open(f"sqlite:///{tmp_path / 'grouped.db'}") as grouped:
        ids = await make_executions(grouped)
        runner = grouped._shared.runner
        assert isinstance(runner, SqliteRunner)
        before_tx, before_ops = runner.writer.transactions, runner.writer.operations
        grouped_outcomes = await scenario(grouped, ids, concurrent=True)
        grouped_state = await snapshot(grouped, ids)
        transactions = runner.writer.transactions - before_tx
        operations = runner.writer.operations - before_ops

    assert grouped_outcomes == serial_outcomes  # every caller got the same answer…
    assert grouped_state == serial_state  # …and the databases agree exactly
    assert {"ok", "ok:int", "ConflictError", "NotFoundError", "ValidationError"} <= set(
        serial_outcomes
    )
    # every call was one operation on the writer, and they shared transactions
    assert operations == len(serial_outcomes)
    assert transactions < operations / 2, (transactions, operations)


async def test_a_failing_operation_in_a_group_reaches_only_its_caller(tmp_path: Path) -> None:
    async with await StateStore.open(f"sqlite:///{tmp_path / 'g.db'}") as store:
        (eid, *_) = await make_executions(store)
        calls = [
            store.append_event(Event(execution_id=eid, kind={"type": "a"}), expected_sequence=0),
            store.append_event(Event(execution_id=eid, kind={"type": "b"}), expected_sequence=0),
            store.append_event(Event(execution_id=eid, kind={"type": "c"}), expected_sequence=1),
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert results[0] == 1
        assert isinstance(results[1], SequenceConflictError)
        assert results[2] == 2
        assert [e.kind.type for e in await store.get_events(eid)] == ["a", "c"]


@pytest.mark.parametrize("round_", range(3))
async def test_kill_9_mid_batch_loses_no_acknowledged_write(tmp_path: Path, round_: int) -> None:
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    async with await StateStore.open(url) as store:
        (eid, *_) = await make_executions(store)

    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKER),
        url,
        str(eid),
        "16",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    acknowledged: dict[str, int] = {}
    assert child.stdout is not None
    target = 150 + 100 * round_
    while len(acknowledged) < target:
        line = await asyncio.wait_for(child.stdout.readline(), timeout=60)
        assert line, (await child.stderr.read()).decode() if child.stderr else "child died"
        _, label, sequence = line.decode().split()
        acknowledged[label] = int(sequence)
    os.kill(child.pid, signal.SIGKILL)  # mid-batch: sixteen appenders are in flight
    await child.wait()

    check = sqlite3.connect(tmp_path / "crash.db")
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    check.close()
    async with await StateStore.open(url) as store:
        events = await store.get_events(eid)
        stored = {e.kind.model_dump()["label"]: e.sequence for e in events}
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))  # gapless
        for label, sequence in acknowledged.items():
            assert stored.get(label) == sequence  # every acknowledged write is there
        # and the store carries on
        assert await store.append_event(Event(execution_id=eid, kind=CustomEvent(type="after")))
