"""The execution model: where operations run, connection settings, error translation."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Session

from statestore import (
    ConflictError,
    DatabaseError,
    StateStore,
    StateStoreError,
    Tenant,
    TenantError,
    WorkflowDefinition,
    WorkflowExecution,
)
from statestore.db.postgres_runner import MAX_SWITCHES, PostgresRunner
from statestore.db.schema import ExecutionRow
from statestore.db.tenancy import TenantSession, session_scope


def _pragma(name: str):  # type: ignore[no-untyped-def]
    return lambda session: session.execute(text(f"PRAGMA {name}")).scalar()


async def test_sqlite_writes_run_on_the_writer_thread_and_reads_on_readers(
    tmp_path: Path,
) -> None:
    async with await StateStore.open(f"sqlite:///{tmp_path / 's.db'}") as store:
        name = lambda _session: threading.current_thread().name  # noqa: E731
        assert await store.run(name) == "statestore-writer"
        assert (await store.run(name, write=False)).startswith("statestore-reader")


@pytest.mark.parametrize(("durability", "expected"), [("NORMAL", 1), ("FULL", 2)])
async def test_sqlite_connection_settings(tmp_path: Path, durability: str, expected: int) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    async with await StateStore.open(url, durability=durability, busy_timeout=7) as store:
        for write in (True, False):
            assert await store.run(_pragma("synchronous"), write=write) == expected
            assert await store.run(_pragma("journal_mode"), write=write) == "wal"
            assert await store.run(_pragma("foreign_keys"), write=write) == 1
            assert await store.run(_pragma("busy_timeout"), write=write) == 7000


async def test_sqlite_memory_uses_one_connection_for_everything() -> None:
    async with await StateStore.open("sqlite:///:memory:") as store:
        name = lambda _session: threading.current_thread().name  # noqa: E731
        assert await store.run(name, write=False) == "statestore-writer"


async def test_postgres_sessions_are_read_committed(pg_database: str) -> None:
    async with await StateStore.connect(pg_database) as store:
        level = await store.run(
            lambda s: s.execute(text("SHOW transaction_isolation")).scalar(), write=False
        )
    assert level == "read committed"


def test_a_session_without_tenant_scope_refuses_to_run(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        conn.execute(text("CREATE TABLE workflow_executions (id TEXT, tenant_id TEXT)"))
        with TenantSession(bind=conn) as session, pytest.raises(TenantError):
            session.execute(select(ExecutionRow))
        with Session(bind=conn) as plain:  # the global Session class has no filter
            assert plain.execute(text("SELECT 1")).scalar() == 1
    engine.dispose()


async def test_unreachable_postgres_is_a_database_error_quickly() -> None:
    started = time.monotonic()
    with pytest.raises(DatabaseError) as caught:
        await StateStore.open("postgresql://postgres@127.0.0.1:1/nowhere")
    assert time.monotonic() - started < 15
    assert caught.value.__cause__ is not None
    assert "\n" not in str(caught.value)


async def test_driver_errors_do_not_escape(store: StateStore) -> None:
    with pytest.raises(StateStoreError) as caught:
        await store.run(lambda s: s.execute(text("SELECT * FROM no_such_table")).all())
    assert type(caught.value) is DatabaseError
    # the store keeps working after a failed operation
    assert [t.id for t in await store.list_tenants()] == ["default"]


async def test_closed_store_refuses_operations(store: StateStore) -> None:
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(DatabaseError):
        await store.list_tenants()


async def test_postgres_reads_and_single_statements_autocommit_other_writes_do_not(
    pg_database: str,
) -> None:
    """The runner keeps its connections between calls and switches them between AUTOCOMMIT
    (reads, single-statement writes) and READ COMMITTED transactions; a connection used for
    one must never leak its mode into the other."""

    def in_transaction_block(session: Session) -> bool:
        # txid_current() assigns the transaction an id: the same for both statements of
        # one transaction, a new one per statement in autocommit.
        first = session.execute(text("SELECT txid_current()")).scalar()
        second = session.execute(text("SELECT txid_current()")).scalar()
        return bool(first == second)

    async with await StateStore.connect(pg_database) as store:
        for _ in range(3):  # alternate on the same kept connections
            assert await store.run(in_transaction_block, write=False) is False
            assert await store.run(in_transaction_block, write=True) is True

        def insert_then_fail(session: Session) -> None:
            session.execute(text("CREATE TEMP TABLE IF NOT EXISTS t (x int)"))
            session.execute(
                text(
                    "INSERT INTO tenants (id, name, status, created_at, updated_at)"
                    " VALUES ('ghost', 'g', 'active', now(), now())"
                )
            )
            raise RuntimeError("boom")

        with pytest.raises(DatabaseError):
            await store.run(insert_then_fail)
        assert [t.id for t in await store.list_tenants()] == ["default"]


@pytest.mark.parametrize("pool", [{}, {"pool_size": 2, "max_overflow": 0}])
async def test_postgres_alternating_modes_do_not_grow_kept_connections(
    pg_database: str, pool: dict[str, int]
) -> None:
    """An engine alternates autocommit calls (claims, reads) with transactions (turns).
    SQLAlchemy queues a reset of the isolation level on a connection at every switch and
    runs it only when the connection goes back to the pool, so a kept connection switched
    at every call would grow without end: a kept connection goes back to the pool after
    ``MAX_SWITCHES`` switches (with the default pool and with room for one kept connection
    only, a pool of 2)."""
    backend_pid = lambda s: s.execute(text("SELECT pg_backend_pid()")).scalar()  # noqa: E731
    async with await StateStore.open(pg_database, **pool) as store:
        runner = store._backend.runner
        assert isinstance(runner, PostgresRunner)
        pids: set[tuple[bool, int]] = set()
        for _ in range(MAX_SWITCHES + 20):
            pids.add((False, await store.run(backend_pid, write=False)))
            pids.add((True, await store.run(backend_pid, write=True)))
        for connection, *_ in runner._idle:
            record = connection.sync_connection.connection._connection_record  # type: ignore[union-attr]
            assert len(record.finalize_callback) <= MAX_SWITCHES + 1
        assert {autocommit for autocommit, _pid in pids} == {False, True}


async def test_postgres_cancelled_call_does_not_poison_kept_connections(pg_database: str) -> None:
    async with await StateStore.connect(pg_database) as store:
        await store.list_tenants()  # a connection is now kept
        slow = asyncio.ensure_future(
            store.run(lambda s: s.execute(text("SELECT pg_sleep(5)")).all(), write=False)
        )
        await asyncio.sleep(0.3)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        started = time.monotonic()
        for _ in range(20):
            assert [t.id for t in await store.list_tenants()] == ["default"]
        assert time.monotonic() - started < 4  # not queued behind the cancelled pg_sleep


async def test_postgres_read_on_a_dead_kept_connection_is_retried(pg_database: str) -> None:
    """The runner keeps connections between calls and does not ping them: a read that meets
    a connection the server dropped is retried once on a fresh one, transparently; a write
    fails with DatabaseError (it may not be safe to repeat) and the next one succeeds."""
    async with await StateStore.open(pg_database) as store:
        await store.store_workflow(WorkflowDefinition(workflow_id="wf", version="1", ir={}))
        execution = WorkflowExecution(workflow_id="wf", workflow_version="1")
        await store.create_execution(execution)
        backend_pid = lambda s: s.execute(text("SELECT pg_backend_pid()")).scalar()  # noqa: E731

        async def kill_kept_connection() -> None:
            pid = await store.run(backend_pid, write=False)
            admin = await asyncpg.connect(pg_database)
            try:
                assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            finally:
                await admin.close()

        for read in (store.list_tenants, lambda: store.get_execution(execution.execution_id)):
            await kill_kept_connection()
            assert await read()  # ORM path, then the driver path

        await kill_kept_connection()
        with pytest.raises(DatabaseError):
            await store.update_execution_current_state(execution.execution_id, {"n": 1})
        await store.update_execution_current_state(execution.execution_id, {"n": 2})
        fetched = await store.get_execution(execution.execution_id)
        assert fetched is not None and fetched.current_state == {"n": 2}


async def test_postgres_after_a_server_restart_kept_connections_are_dropped_together(
    pg_database: str,
) -> None:
    """Every connection the runner keeps dies at once (as on a server restart): reads still
    succeed (retried on a fresh connection), and at most one write fails before the runner
    has dropped all the dead ones."""
    async with await StateStore.open(pg_database, pool_size=4) as store:
        sleep = lambda s: s.execute(text("SELECT pg_sleep(0.2)")).all()  # noqa: E731
        await asyncio.gather(*(store.run(sleep, write=False) for _ in range(4)))
        admin = await asyncpg.connect(pg_database)
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        assert killed >= 2  # the runner kept several
        assert [t.id for t in await store.list_tenants()] == ["default"]
        outcomes = []
        for n in range(4):
            try:
                await store.create_tenant(Tenant(id=f"t{n}", name="t"))
                outcomes.append("ok")
            except DatabaseError:
                outcomes.append("failed")
        assert outcomes.count("failed") <= 1 and outcomes[-1] == "ok", outcomes


async def test_postgres_kept_connections_never_starve_the_pool(pg_database: str) -> None:
    """With a pool of 2 and no overflow, three concurrent calls all finish (a kept
    connection goes back to the pool when someone may be waiting), and migrations and
    ``store.engine`` still get a connection between calls."""
    options = {"pool_size": 2, "max_overflow": 0, "pool_timeout": 3}
    async with await StateStore.open(pg_database, **options) as store:
        sleep = lambda s: s.execute(text("SELECT pg_sleep(0.3)")).all()  # noqa: E731
        started = time.monotonic()
        await asyncio.gather(*(store.run(sleep, write=False) for _ in range(3)))
        assert time.monotonic() - started < 2.5
        assert await store.current_revision() == StateStore.head_revision()
        async with store.engine.connect() as connection:
            assert (await connection.execute(text("SELECT 1"))).scalar() == 1


async def test_postgres_kept_connections_honour_pool_recycle(pg_database: str) -> None:
    """A kept connection older than ``pool_recycle`` is not reused: the pool replaces it."""
    backend_pid = lambda s: s.execute(text("SELECT pg_backend_pid()")).scalar()  # noqa: E731
    async with await StateStore.open(pg_database, pool_recycle=1) as store:
        first = await store.run(backend_pid, write=False)
        assert await store.run(backend_pid, write=False) == first  # kept and reused
        await asyncio.sleep(1.3)
        assert await store.run(backend_pid, write=False) != first  # recycled


async def test_postgres_pool_pre_ping_keeps_nothing_and_survives_dead_connections(
    pg_database: str,
) -> None:
    """With ``pool_pre_ping`` every call checks out from the pool (and is pinged), so a
    write after the server dropped every connection succeeds at once."""
    async with await StateStore.open(pg_database, pool_pre_ping=True) as store:
        await store.create_tenant(Tenant(id="before", name="t"))
        assert store.engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        admin = await asyncpg.connect(pg_database)
        try:
            await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        await store.create_tenant(Tenant(id="after", name="t"))
        assert {t.id for t in await store.list_tenants()} >= {"before", "after"}


async def test_every_call_starts_on_a_clean_session_in_its_own_scope(store: StateStore) -> None:
    """Sessions are reused between calls (the PostgreSQL runner keeps those of finished
    calls, a SQLite thread its own): a call that failed mid-flush, left a savepoint open or
    was cancelled, on another tenant's view, hands the next call nothing: no ORM object,
    no transaction, no scope but the next call's own."""
    for tenant in ("a", "b"):
        await store.create_tenant(Tenant(id=tenant, name=tenant))
    a, b = store.for_tenant("a"), store.for_tenant("b")
    run = WorkflowExecution(workflow_id="wf", workflow_version="1")
    await a.create_execution(run)

    def state(session: Session) -> tuple[Any, ...]:
        scope = session_scope(session).tenant_id
        return (len(session.identity_map), len(session.new), session.in_transaction(), scope)

    def duplicate(session: Session) -> None:
        row = session.get(ExecutionRow, run.execution_id)
        assert row is not None
        columns = sa_inspect(ExecutionRow).column_attrs
        session.expunge(row)  # a second object for its primary key, flushed as an INSERT
        session.add(ExecutionRow(**{c.key: getattr(row, c.key) for c in columns}))
        session.flush()  # refused: the row exists

    def nested(session: Session) -> None:
        session.begin_nested()
        session.get(ExecutionRow, run.execution_id)

    def slow(session: Session) -> None:
        session.get(ExecutionRow, run.execution_id)
        if isinstance(store._backend.runner, PostgresRunner):
            session.execute(text("SELECT pg_sleep(0.2)"))
        else:
            time.sleep(0.2)

    for view, expected in ((a, "a"), (b, "b"), (store, None)):
        with pytest.raises(ConflictError):
            await a.run(duplicate)
        assert await view.run(state) == (0, 0, False, expected)
        await a.run(nested)
        assert await view.run(state) == (0, 0, False, expected)
        call = asyncio.create_task(a.run(slow))
        await asyncio.sleep(0.05)  # inside it (a hang guard only if not: it ends anyway)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        for _ in range(3):
            assert await view.run(state) == (0, 0, False, expected)
            assert await view.run(state, write=False) == (0, 0, False, expected)
