"""The hot paths keep SQLAlchemy's guarantees: logging and cursor events see every statement
(also when switched on after the store opened and its connections are kept), and a
connection found dead is invalidated in the pool the way SQLAlchemy does it.

(``pool_pre_ping`` and ``pool_recycle`` on PostgreSQL: tests/test_runner.py. On SQLite the
store's threads own their connections to a local file for the store's lifetime: there is no
server to lose them, so neither option applies.)"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
import pytest
from sqlalchemy import Engine, event

from statestore import Event, StateStore, WorkflowExecution, WorkItem
from statestore.event_kinds import NodeCompleted
from statestore.models import Tenant

KIND = NodeCompleted(node_id="n", output={}, state_patch={}, duration_ms=1)

# What each hot path sends, as a fragment of its SQL.
HOT = {
    "append_event": "INSERT INTO events",
    "get_execution": "FROM workflow_executions",
    "get_events": "FROM events",
    "claim_work_item": "UPDATE work_items",
    "validate_token": "api_tokens",
}


async def hot_calls(store: StateStore) -> None:
    """Every hot path once (the execution, the item and the token are made by the first
    run; later runs reuse them)."""
    execution = WorkflowExecution(workflow_id="wf", workflow_version="1")
    await store.create_execution(execution)
    await store.append_event(Event(execution_id=execution.execution_id, kind=KIND))
    assert await store.get_execution(execution.execution_id) is not None
    assert len(await store.get_events(execution.execution_id)) == 1
    await store.enqueue_work_item(
        WorkItem(execution_id=execution.execution_id, node_id="n", queue_type="q")
    )
    item = await store.claim_work_item("w", ["q"])
    assert item is not None
    await store.complete_work_item(item.id, worker_id="w", lease_fence=item.lease_fence)
    token, _record = await store.create_token("t", "viewer")
    assert await store.validate_token(token) is not None


def missing(sent: str) -> list[str]:
    return [call for call, fragment in HOT.items() if fragment not in sent]


@contextmanager
def cursor_listener(target: Any) -> Iterator[list[str]]:
    """Statements seen by a ``before_cursor_execute`` listener on ``target`` (an engine,
    or the ``Engine`` class: every engine, as global tracing instrumentation listens)."""
    seen: list[str] = []

    def before(_c: Any, _cur: Any, statement: str, _p: Any, _ctx: Any, _many: bool) -> None:
        seen.append(statement)

    event.listen(target, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(target, "before_cursor_execute", before)


async def test_a_cursor_listener_added_after_hot_calls_sees_every_hot_statement(
    store: StateStore,
) -> None:
    """The store's connections are open and kept, its statements compiled: a listener
    added now (on every engine, as tracing instrumentation does) sees each hot path, and
    stops seeing them once removed."""
    await hot_calls(store)
    with cursor_listener(Engine) as seen:
        await hot_calls(store)
    assert missing(" ".join(seen)) == []
    count = len(seen)
    await hot_calls(store)
    assert len(seen) == count


async def test_postgres_a_listener_on_store_engine_added_later_sees_hot_statements(
    pg_database: str,
) -> None:
    """On PostgreSQL the runner runs on ``store.engine``'s pool: a listener on that engine,
    added while the runner keeps connections checked out, sees the hot paths."""
    async with await StateStore.open(pg_database) as store:
        await hot_calls(store)
        with cursor_listener(store.engine.sync_engine) as seen:
            await hot_calls(store)
        assert missing(" ".join(seen)) == []


@pytest.fixture
def engine_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    yield caplog
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)


async def test_echo_logs_every_hot_statement(make_store: Any, engine_log: Any) -> None:
    """``echo=True`` (an engine option of ``StateStore.open``) logs the hot paths on both
    databases (on SQLite the writer and readers run on engines of their own)."""
    store: StateStore = await make_store(echo=True)
    engine_log.clear()
    await hot_calls(store)
    logged = " ".join(record.getMessage() for record in engine_log.records)
    assert missing(logged) == []


async def test_logging_switched_on_after_hot_calls_logs_them(
    make_store: Any, engine_log: pytest.LogCaptureFixture
) -> None:
    """The runners keep their connections across calls; the ``sqlalchemy.engine`` logger
    set to INFO later still logs every hot statement, and set back stops it."""
    store: StateStore = await make_store()
    await hot_calls(store)
    engine_log.set_level(logging.INFO, logger="sqlalchemy.engine")
    await hot_calls(store)
    logged = " ".join(record.getMessage() for record in engine_log.records)
    assert missing(logged) == []
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    engine_log.clear()
    await hot_calls(store)
    assert engine_log.records == []


@pytest.fixture
async def pg_store(pg_database: str) -> AsyncIterator[StateStore]:
    async with await StateStore.open(pg_database) as store:
        yield store


async def terminate_other_backends(url: str) -> int:
    admin = await asyncpg.connect(url)
    try:
        killed: int = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return killed
    finally:
        await admin.close()


async def test_postgres_a_dead_connection_is_invalidated_in_the_pool(
    pg_store: StateStore, pg_database: str
) -> None:
    """The server drops the connection the runner kept: the hot read that finds it dead
    invalidates it in the pool (the pool's ``invalidate`` event, with the driver's error),
    retries on a new connection and succeeds; the next hot write succeeds too."""
    execution = WorkflowExecution(workflow_id="wf", workflow_version="1")
    await pg_store.create_execution(execution)
    execution_id = execution.execution_id
    assert await pg_store.get_execution(execution_id) is not None  # a connection is kept
    invalidated: list[BaseException | None] = []

    def on_invalidate(_dbapi: Any, _record: Any, exception: BaseException | None) -> None:
        invalidated.append(exception)

    pool = pg_store.engine.sync_engine.pool
    event.listen(pool, "invalidate", on_invalidate)
    try:
        assert await terminate_other_backends(pg_database) >= 1
        assert await pg_store.get_execution(execution_id) is not None
        assert len(invalidated) >= 1 and invalidated[0] is not None
        await pg_store.append_event(Event(execution_id=execution_id, kind=KIND))
        assert [e.sequence for e in await pg_store.get_events(execution_id)] == [1]
    finally:
        event.remove(pool, "invalidate", on_invalidate)


async def test_postgres_a_write_on_a_dead_connection_fails_typed_and_the_next_works(
    pg_store: StateStore, pg_database: str
) -> None:
    """A write is never retried (it may have committed): the one that finds its connection
    dead fails with the store's DatabaseError, the connection is invalidated, and the next
    write runs on a fresh one."""
    from statestore.errors import DatabaseError

    await pg_store.create_tenant(Tenant(id="before", name="t"))
    await terminate_other_backends(pg_database)
    with pytest.raises(DatabaseError):  # on the kept connection the server dropped
        await pg_store.create_tenant(Tenant(id=f"t{uuid.uuid4().hex[:8]}", name="t"))
    await pg_store.create_tenant(Tenant(id="after", name="t"))
    assert {t.id for t in await pg_store.list_tenants()} >= {"before", "after"}
