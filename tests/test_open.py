"""Opening a store: URLs, files and folders, the environment variable, closing, backends,
the engine, scoping, and the schema-revision check."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from statestore import (
    ConfigurationError,
    MigrationError,
    PostgresBackend,
    SqliteBackend,
    StateStore,
    StateStoreError,
    Tenant,
    WorkflowExecution,
)

ALEMBIC_DIR = Path(__file__).resolve().parents[1] / "alembic"


def head_revision() -> str:
    head = ScriptDirectory(str(ALEMBIC_DIR)).get_current_head()
    assert head is not None
    return head


def with_scheme(url: str, scheme: str) -> str:
    return scheme + "://" + url.split("://", 1)[1]


async def engine_count(store: StateStore, table: str) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


async def round_trip(store: StateStore) -> None:
    """A write and a read through the store work."""
    execution = WorkflowExecution(workflow_id="wf", workflow_version="1")
    await store.create_execution(execution)
    found = await store.get_execution(execution.execution_id)
    assert found is not None and found.execution_id == execution.execution_id


# ---------------------------------------------------------------- URLs


@pytest.mark.parametrize("scheme", ["sqlite", "sqlite+aiosqlite"])
async def test_sqlite_file_urls(tmp_path: Path, scheme: str) -> None:
    path = tmp_path / "state.db"
    async with await StateStore.open(f"{scheme}:///{path}") as store:
        assert store.engine.url.drivername == "sqlite+aiosqlite"
        assert store.engine.dialect.name == "sqlite"
        await round_trip(store)
        assert await engine_count(store, "workflow_executions") == 1
    assert path.is_file()
    # The data is in that file: another store on it sees it.
    async with await StateStore.open(f"sqlite:///{path}") as again:
        assert len(await again.list_executions()) == 1


async def test_sqlite_memory_url() -> None:
    async with await StateStore.open("sqlite:///:memory:") as store:
        assert store.engine.dialect.name == "sqlite"
        assert store.engine.url.drivername == "sqlite+aiosqlite"
        default = await store.get_tenant("default")
        assert default is not None
        await round_trip(store)


async def journal_mode(store: StateStore) -> str:
    async with store.engine.connect() as conn:
        return str((await conn.execute(text("PRAGMA journal_mode"))).scalar_one())


@pytest.mark.parametrize("folder", ["agent-memory", ":memory:", "memory"])
async def test_a_file_whose_path_says_memory_runs_in_wal_mode(tmp_path: Path, folder: str) -> None:
    path = tmp_path / folder / "memory.db"
    async with await StateStore.open(f"sqlite:///{path}") as store:
        assert await journal_mode(store) == "wal"
        await round_trip(store)
    with sqlite3.connect(path) as raw:  # WAL is recorded in the file itself
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    raw.close()


async def test_memory_database_keeps_its_memory_journal() -> None:
    async with await StateStore.open("sqlite:///:memory:") as store:
        assert await journal_mode(store) == "memory"
        await round_trip(store)


async def test_memory_databases_are_separate() -> None:
    async with (
        await StateStore.open("sqlite:///:memory:") as first,
        await StateStore.open("sqlite:///:memory:") as second,
    ):
        await round_trip(first)
        assert len(await first.list_executions()) == 1
        assert await second.list_executions() == []


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+asyncpg"])
async def test_postgresql_urls(pg_database: str, scheme: str) -> None:
    url = with_scheme(pg_database, scheme)
    async with await StateStore.open(url) as store:
        assert store.engine.url.drivername == "postgresql+asyncpg"
        assert store.engine.dialect.name == "postgresql"
        assert await store.get_tenant("default") is not None
        async with store.engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1


@pytest.mark.parametrize("url", ["mysql://x", "mysql+aiomysql://u@h/db", "oracle://h/db"])
async def test_unknown_scheme_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        await StateStore.connect(url)
    message = str(info.value)
    assert "sqlite" in message and "postgresql" in message
    with pytest.raises(ConfigurationError):
        await StateStore.open(url)


async def test_sqlite_file_and_missing_folder_are_created(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "state.db"
    assert not path.parent.exists()
    store = await StateStore.open(f"sqlite:///{path}")
    try:
        await round_trip(store)
    finally:
        await store.close()
    assert path.is_file()


async def test_connect_creates_the_file_without_migrating(tmp_path: Path) -> None:
    path = tmp_path / "new" / "state.db"
    store = await StateStore.connect(f"sqlite:///{path}")
    try:
        assert path.parent.is_dir()
        with pytest.raises(MigrationError):
            await store.list_tenants()
    finally:
        await store.close()


# ---------------------------------------------------------------- closing


async def test_async_with_closes(tmp_path: Path) -> None:
    async with await StateStore.open(f"sqlite:///{tmp_path / 's.db'}") as store:
        await round_trip(store)
        scoped = store.for_tenant("default")
    with pytest.raises(StateStoreError):
        await store.get_tenant("default")
    with pytest.raises(StateStoreError):
        await store.create_execution(WorkflowExecution(workflow_id="w", workflow_version="1"))
    with pytest.raises(StateStoreError):
        await scoped.list_executions()
    await store.close()  # closing again is harmless


async def test_close_on_postgresql(pg_database: str) -> None:
    store = await StateStore.open(pg_database)
    assert await store.get_tenant("default") is not None
    await store.close()
    with pytest.raises(StateStoreError):
        await store.get_tenant("default")
    await store.close()


async def test_close_memory_store() -> None:
    store = await StateStore.open("sqlite:///:memory:")
    await round_trip(store)
    await store.close()
    with pytest.raises(StateStoreError):
        await store.list_executions()


# ---------------------------------------------------------------- backend classes


async def test_sqlite_backend_refuses_postgresql_url() -> None:
    for url in ("postgresql://u@localhost/db", "postgres://u@localhost/db"):
        with pytest.raises(ConfigurationError):
            await SqliteBackend.connect(url)
        with pytest.raises(ConfigurationError):
            await SqliteBackend.open(url)


async def test_postgres_backend_refuses_sqlite_url(tmp_path: Path) -> None:
    for url in (f"sqlite:///{tmp_path / 'x.db'}", "sqlite:///:memory:"):
        with pytest.raises(ConfigurationError):
            await PostgresBackend.connect(url)
        with pytest.raises(ConfigurationError):
            await PostgresBackend.open(url)


async def test_sqlite_backend_opens_sqlite(tmp_path: Path) -> None:
    async with await SqliteBackend.open(f"sqlite:///{tmp_path / 'b.db'}") as store:
        assert isinstance(store, SqliteBackend) and isinstance(store, StateStore)
        await round_trip(store)
        assert isinstance(store.for_tenant("default"), StateStore)


async def test_postgres_backend_opens_postgresql(pg_database: str) -> None:
    async with await PostgresBackend.open(pg_database) as store:
        assert isinstance(store, PostgresBackend) and isinstance(store, StateStore)
        assert await store.get_tenant("default") is not None


# ---------------------------------------------------------------- default URL


async def test_environment_variable_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "env" / "from_env.db"
    monkeypatch.setenv("STATESTORE_DATABASE_URL", f"sqlite:///{path}")
    monkeypatch.chdir(tmp_path)
    async with await StateStore.open() as store:
        await round_trip(store)
    assert path.is_file()
    assert not (tmp_path / "statestore.db").exists()
    async with await StateStore.open(f"sqlite:///{path}") as again:
        assert len(await again.list_executions()) == 1


async def test_default_url_without_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STATESTORE_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    async with await StateStore.open() as store:
        await round_trip(store)
    assert (tmp_path / "statestore.db").is_file()


# ---------------------------------------------------------------- engine and scope


async def test_engine_sees_the_store_data(store: StateStore) -> None:
    assert isinstance(store.engine, AsyncEngine)
    assert store.for_tenant("default").engine is store.engine
    await round_trip(store)
    assert await engine_count(store, "workflow_executions") == 1
    # And the other way round: a change made through the engine is seen by the store.
    async with store.engine.begin() as conn:
        await conn.execute(text("UPDATE tenants SET name = 'Renamed' WHERE id = 'default'"))
    default = await store.get_tenant("default")
    assert default is not None and default.name == "Renamed"


async def test_engine_of_memory_store_sees_the_store_data() -> None:
    async with await StateStore.open("sqlite:///:memory:") as store:
        assert isinstance(store.engine, AsyncEngine)
        await round_trip(store)
        await store.create_tenant(Tenant(id="acme", name="Acme"))
        assert await engine_count(store, "workflow_executions") == 1
        assert await engine_count(store, "tenants") == 2
        async with store.engine.begin() as conn:
            await conn.execute(text("UPDATE tenants SET name = 'Renamed' WHERE id = 'acme'"))
        acme = await store.get_tenant("acme")
        assert acme is not None and acme.name == "Renamed"


async def test_tenant_id_of_unscoped_and_scoped_stores(store: StateStore) -> None:
    assert store.tenant_id is None
    scoped = store.for_tenant("acme")
    assert scoped.tenant_id == "acme"
    assert store.tenant_id is None
    assert isinstance(scoped, StateStore) and scoped is not store


# ---------------------------------------------------------------- migrations


async def test_empty_database_raises_migration_error(tmp_path: Path) -> None:
    store = await StateStore.connect(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        for call in (
            store.get_tenant("default"),
            store.create_execution(WorkflowExecution(workflow_id="w", workflow_version="1")),
        ):
            with pytest.raises(MigrationError) as info:
                await call
            message = str(info.value)
            assert head_revision() in message
            assert "statestore db upgrade" in message
        await store.migrate()
        await round_trip(store)
    finally:
        await store.close()


async def test_database_at_another_revision_raises_migration_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    async with await StateStore.open(url) as store, store.engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '0000abcd'"))
    store = await StateStore.connect(url)
    try:
        with pytest.raises(MigrationError) as info:
            await store.list_executions()
        message = str(info.value)
        assert "0000abcd" in message
        assert head_revision() in message
        assert "statestore db upgrade" in message
        with pytest.raises(MigrationError):
            await store.create_execution(WorkflowExecution(workflow_id="w", workflow_version="1"))
    finally:
        await store.close()


async def test_migrate_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    async with await StateStore.open(url) as store:
        await round_trip(store)
        await store.migrate()
        await store.migrate()
        assert len(await store.list_executions()) == 1
    async with await StateStore.open(url) as again:
        assert len(await again.list_executions()) == 1
        assert [t.id for t in await again.list_tenants()] == ["default"]
