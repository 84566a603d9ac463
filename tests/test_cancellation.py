"""Cancellation: cancelling a call may or may not commit that call, and never affects any
other call. Every acknowledged write is visible from a second store and survives close();
no later call waits on a lock the cancelled one left behind; nothing is logged as a
never-retrieved exception."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sqlite3
import threading
import time
import uuid
from typing import Any

import asyncpg
import pytest
from conftest import client_backends

from statestore import (
    ConfigurationError,
    ConflictError,
    NotFoundError,
    StateStore,
    WorkflowExecution,
)
from statestore.db.postgres_runner import PostgresRunner

# From "before the first statement" (0) through "between statements" to "during COMMIT":
# a multi-statement write takes roughly 1-5 ms here, so these delays land everywhere in it.
DELAYS = (0.0, 0.0001, 0.0003, 0.0006, 0.001, 0.0015, 0.002, 0.003, 0.005)
ROUNDS_PER_DELAY = 12
WAIT_BOUND = 10.0  # seconds: no call may wait on anything a cancelled call left behind


async def _visible(store: StateStore, ids: list[uuid.UUID]) -> list[uuid.UUID]:
    return [i for i in ids if await store.get_execution(i) is not None]


async def test_cancelled_writes_never_lose_other_acknowledged_writes(
    make_store: Any, database_url: str, caplog: pytest.LogCaptureFixture, capfd: Any
) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")
    store: StateStore = await make_store()
    run = WorkflowExecution(workflow_id="w", workflow_version="1")
    await store.create_execution(run)
    acknowledged: list[uuid.UUID] = []
    slowest = 0.0
    for delay in DELAYS:
        for _ in range(ROUNDS_PER_DELAY):
            # A multi-statement write, cancelled somewhere inside.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    store.append_events(run.execution_id, [{"type": "b"}] * 3), delay
                )
            # Ordinary writes that return normally: each one is acknowledged.
            execution = WorkflowExecution(workflow_id="w", workflow_version="1")
            started = time.monotonic()
            await asyncio.wait_for(store.create_execution(execution), WAIT_BOUND)
            await asyncio.wait_for(
                store.append_events(run.execution_id, [{"type": "ok"}]), WAIT_BOUND
            )
            slowest = max(slowest, time.monotonic() - started)
            acknowledged.append(execution.execution_id)

    second = await make_store()
    assert await _visible(second, acknowledged) == acknowledged
    await store.close()
    third = await make_store()
    assert await _visible(third, acknowledged) == acknowledged

    # Each cancelled append_events committed all three events or none: the history is
    # gapless and every "ok" event is there.
    events = await third.get_events(run.execution_id)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    kinds = [e.kind.type for e in events]
    assert kinds.count("ok") == len(acknowledged)
    runs = [len(run) for run in "".join("b" if k == "b" else " " for k in kinds).split()]
    assert all(length % 3 == 0 for length in runs), runs

    assert slowest < WAIT_BOUND
    gc.collect()
    await asyncio.sleep(0.05)
    gc.collect()
    assert not [r for r in caplog.records if r.name == "asyncio"], [
        r.getMessage() for r in caplog.records
    ]
    assert "never retrieved" not in capfd.readouterr().err


async def test_cancelling_many_concurrent_writes_leaves_the_pool_usable(
    make_store: Any,
) -> None:
    """Many calls in flight, half of them cancelled at once: the store keeps working and
    every call that returned is committed."""
    store: StateStore = await make_store()
    for _round in range(5):
        executions = [WorkflowExecution(workflow_id="w", workflow_version="1") for _ in range(20)]
        tasks = [asyncio.ensure_future(store.create_execution(e)) for e in executions]
        await asyncio.sleep(0.001)
        for task in tasks[::2]:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        done = [e.execution_id for e, r in zip(executions, results, strict=True) if r is None]
        other = await make_store()
        assert await _visible(other, done) == done
    late = WorkflowExecution(workflow_id="w", workflow_version="1")
    await asyncio.wait_for(store.create_execution(late), WAIT_BOUND)
    assert await store.get_execution(late.execution_id) is not None


async def test_a_store_belongs_to_one_event_loop(make_store: Any) -> None:
    store: StateStore = await make_store()
    run = WorkflowExecution(workflow_id="w", workflow_version="1")
    await store.create_execution(run)
    errors: list[BaseException] = []

    def elsewhere() -> None:
        async def call() -> None:
            await store.get_execution(run.execution_id)

        try:
            asyncio.run(asyncio.wait_for(call(), 10))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    await asyncio.to_thread(thread.join)
    assert len(errors) == 1 and isinstance(errors[0], ConfigurationError), errors
    assert "event loop" in str(errors[0])
    # The store still works on its own loop.
    assert await store.get_execution(run.execution_id) is not None


async def test_a_translated_error_is_not_its_own_cause(store: StateStore) -> None:
    run = WorkflowExecution(workflow_id="w", workflow_version="1")
    await store.create_execution(run)
    with pytest.raises(ConflictError) as conflict:
        await store.create_execution(run)
    with pytest.raises(NotFoundError) as missing:
        await store.update_execution_status(uuid.uuid4(), "running")
    for error in (conflict.value, missing.value):
        assert error.__cause__ is not error
    # And the store carries on (the connection that saw the error is usable or replaced).
    assert await store.get_execution(run.execution_id) is not None


async def test_close_with_a_call_blocked_on_a_lock_returns_and_leaves_nothing_behind(
    make_store: Any, database_url: str
) -> None:
    """A call blocked on another client's lock: its caller is cancelled, then the store is
    closed. close() returns in bounded time; on PostgreSQL the blocked call's connection is
    terminated (no backend of the store is left waiting or idle in a transaction); once the
    lock is released the database takes writes again."""
    # Backends already there are not the store's: the session's PgBouncer keeps its server
    # connections idle on this database after the tests run through it.
    postgres = database_url.startswith("postgresql")
    others = sorted(await client_backends(database_url)) if postgres else []
    store: StateStore = await make_store(busy_timeout=1.0)
    run = WorkflowExecution(workflow_id="w", workflow_version="1", current_state={"v": 0})
    await store.create_execution(run)
    runner = store._shared.runner
    if isinstance(runner, PostgresRunner):
        runner.close_timeout = 0.5
    async with _lock_held(database_url, run.execution_id):
        blocked = asyncio.ensure_future(
            store.update_execution_current_state(run.execution_id, {"v": 1})
        )
        await asyncio.sleep(0.3)
        blocked.cancel()
        started = time.monotonic()
        with contextlib.suppress(asyncio.CancelledError):
            await blocked
        await asyncio.wait_for(store.close(), 5)
        assert time.monotonic() - started < 5
        if isinstance(runner, PostgresRunner):
            assert await _store_backends(database_url, others) == []
    fresh = await make_store()
    await asyncio.wait_for(fresh.update_execution_current_state(run.execution_id, {"v": 2}), 10)
    assert (await fresh.get_execution(run.execution_id)).current_state == {"v": 2}  # type: ignore[union-attr]


@contextlib.asynccontextmanager
async def _lock_held(url: str, execution_id: uuid.UUID) -> Any:
    """Another client holding the write lock the store needs (SQLite: the database's write
    lock; PostgreSQL: the execution's row lock)."""
    if url.startswith("sqlite"):
        connection = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            connection.execute("ROLLBACK")
            connection.close()
        return
    raw = await asyncpg.connect(url.replace("postgresql://", "postgres://"))
    transaction = raw.transaction()
    await transaction.start()
    await raw.execute("SELECT 1 FROM workflow_executions WHERE id = $1 FOR UPDATE", execution_id)
    try:
        yield
    finally:
        await transaction.rollback()
        await raw.close()


async def _store_backends(url: str, others: list[int]) -> list[str]:
    """States of the other backends on this database but ``others`` (the store's, once it
    is closed)."""
    raw = await asyncpg.connect(url.replace("postgresql://", "postgres://"))
    try:
        rows = await raw.fetch(
            "SELECT state FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
            "AND NOT (state = 'idle in transaction' AND query LIKE '%FOR UPDATE') "
            "AND pid <> ALL($1::int[])",
            others,
        )
        return [row["state"] for row in rows]
    finally:
        await raw.close()
