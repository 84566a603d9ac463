"""The execution model: where operations run, connection settings, error translation."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

from statestore import DatabaseError, StateStore, StateStoreError, TenantError
from statestore.db.schema import ExecutionRow
from statestore.db.tenancy import TenantSession


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
