"""``close()`` cancelled part-way (a shutdown with a timeout, a cancelled task) still
finishes closing the store: its database connections (and on SQLite its writer thread) are
released, and a second ``close()`` returns once they are, on both databases."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from conftest import client_backends

from statestore import StateStore, WorkflowExecution
from statestore.db.sqlite_runner import SqliteRunner

CUTS = range(8)
"""Loop passes ``close()`` runs before it is cancelled: from "at once" to "after it has
stopped the waker and is stopping the runner"."""
GONE = 30.0
"""Generous bound for the server to see a closed connection go: a hang guard only."""


async def _released(store: StateStore, url: str, before: set[int]) -> bool:
    """Whether ``store`` holds nothing on its database any more."""
    runner = store._backend.runner
    if isinstance(runner, SqliteRunner):
        thread = runner.writer._thread
        if thread is None:
            return True
        await asyncio.to_thread(thread.join, GONE)
        return not thread.is_alive()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GONE
    while await client_backends(url) - before:
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_a_cancelled_close_still_closes_the_store(database_url: str) -> None:
    for cut in CUTS:
        postgres = database_url.startswith("postgresql")
        before = await client_backends(database_url) if postgres else set()
        store = await StateStore.connect(database_url)
        await store.create_execution(WorkflowExecution(workflow_id="wf", workflow_version="1"))
        await store.claim_work_item("w", ["q"])
        closing = asyncio.create_task(store.close())
        for _ in range(cut):
            await asyncio.sleep(0)
        closing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await closing
        # A second close returns once the first one's work is done (a hang guard only).
        await asyncio.wait_for(store.close(), GONE)
        assert await _released(store, database_url, before), f"left open (cut {cut})"
        with pytest.raises(Exception, match="closed"):
            await store.claim_work_item("w", ["q"])


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_close_returns_after_the_sqlite_writer_thread_died(tmp_path: Path) -> None:
    """The SQLite writer's thread ended by an unexpected error (a bug in the writer itself,
    injected here): ``close()`` still returns, instead of waiting for a no-op job that
    thread will never run. (SQLite only: PostgreSQL has no writer thread.)"""
    store = await StateStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    await store.create_execution(WorkflowExecution(workflow_id="wf", workflow_version="1"))
    writer = store._backend.runner.writer  # type: ignore[attr-defined]
    thread = writer._thread

    def boom(*_args: object) -> None:
        raise RuntimeError("the writer thread dies")

    writer._run_group = boom
    write = asyncio.create_task(
        store.create_execution(WorkflowExecution(workflow_id="wf", workflow_version="1"))
    )
    await asyncio.to_thread(thread.join, GONE)
    assert not thread.is_alive()
    write.cancel()  # its outcome will never come
    with contextlib.suppress(asyncio.CancelledError):
        await write
    await asyncio.wait_for(store.close(), GONE)


async def test_a_failing_after_commit_hook_neither_stops_the_writer_nor_loses_the_outcome(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The writer's after-commit hook (the store's waker) raising is logged; the group's
    callers still get their outcomes and later writes still run. (SQLite only.)"""
    store = await StateStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        writer = store._backend.runner.writer  # type: ignore[attr-defined]

        def boom() -> None:
            raise RuntimeError("the hook fails")

        writer.after_commit = boom
        executions = [WorkflowExecution(workflow_id="wf", workflow_version="1") for _ in range(5)]
        await asyncio.wait_for(
            asyncio.gather(*(store.create_execution(e) for e in executions)), GONE
        )
        for execution in executions:
            assert await store.get_execution(execution.execution_id) is not None
        assert writer._thread.is_alive()
        assert "after-commit hook failed" in caplog.text
    finally:
        await asyncio.wait_for(store.close(), GONE)
