"""Migrations: Alembic revisions produce exactly the ORM schema, walk down and up, run
from the CLI, from two processes at once, and ship inside the wheel."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
import warnings
import zipfile
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from alembic.script import ScriptDirectory
from conftest import PG_ADMIN_URL, _pg_admin, _pg_url
from sqlalchemy import Connection, inspect, text

from statestore import MigrationError, StateStore, Tenant, WorkflowExecution
from statestore.db import migrations
from statestore.db.engine import SqliteSettings, create_user_engine, parse_database_url
from statestore.db.schema import Base, SnapshotRow

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


@pytest.fixture
async def empty_url(backend: str, tmp_path: Path, pg_url: str | None) -> AsyncIterator[str]:
    """An empty database (no schema at all)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    name = f"statestore_mig_{uuid.uuid4().hex[:12]}"
    await _pg_admin(f"CREATE DATABASE {name}")
    yield _pg_url(name)
    await _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def on_connection(url: str, fn: Callable[[Connection], T]) -> T:
    """Run ``fn`` on a sync connection to ``url`` (through the async engine)."""
    engine = create_user_engine(parse_database_url(url), SqliteSettings(), {})
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def test_upgrade_of_an_empty_database_matches_the_models(empty_url: str) -> None:
    store = await StateStore.open(empty_url)
    await store.close()

    with warnings.catch_warnings():
        # SQLite cannot reflect the expression index (priority DESC); checked below instead.
        warnings.filterwarnings("ignore", message=".*expression-based index.*")
        drift = await on_connection(empty_url, migrations.schema_drift)
    assert drift == []
    assert await on_connection(empty_url, _tables) == set(Base.metadata.tables) | {
        "alembic_version"
    }
    assert await on_connection(empty_url, migrations.current_revision) == (
        migrations.head_revision()
    )


async def test_claim_index_is_partial_and_in_claim_order(empty_url: str, backend: str) -> None:
    store = await StateStore.open(empty_url)
    await store.close()

    def index_sql(connection: Connection) -> str:
        if backend == "sqlite":
            query = "SELECT sql FROM sqlite_master WHERE name = 'ix_work_items_claim'"
        else:
            query = "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_work_items_claim'"
        return str(connection.execute(text(query)).scalar_one())

    sql = (await on_connection(empty_url, index_sql)).lower()
    assert "queue_type, priority desc, created_at" in sql
    assert "where" in sql and "'pending'" in sql


async def test_every_revision_goes_down_and_up_again(empty_url: str) -> None:
    script = ScriptDirectory.from_config(migrations.alembic_config())
    revisions = list(reversed(list(script.walk_revisions())))  # base first
    assert revisions, "no revisions"

    def walk(connection: Connection) -> list[str | None]:
        def current() -> str | None:
            revision = migrations.current_revision(connection)
            # Reading autobegins a transaction; ending it lets each step commit its own.
            connection.commit()
            return revision

        seen = []
        for revision in revisions:
            migrations.upgrade(connection, revision.revision)
            seen.append(current())
            migrations.downgrade(connection, revision.down_revision or "base")
            seen.append(current())
            migrations.upgrade(connection, revision.revision)
        return seen

    seen = await on_connection(empty_url, walk)
    expected: list[str | None] = []
    for revision in revisions:
        down = revision.down_revision
        expected += [revision.revision, down if isinstance(down, str) else None]
    assert seen == expected
    assert await on_connection(empty_url, _tables) == set(Base.metadata.tables) | {
        "alembic_version"
    }

    def to_base(connection: Connection) -> set[str]:
        migrations.downgrade(connection, "base")
        return _tables(connection)

    assert await on_connection(empty_url, to_base) == {"alembic_version"}


async def test_store_refuses_a_database_not_at_head(empty_url: str) -> None:
    store = await StateStore.open(empty_url)
    await store.close()
    await on_connection(empty_url, lambda c: migrations.downgrade(c, "base"))

    stale = await StateStore.connect(empty_url)
    try:
        with pytest.raises(MigrationError) as caught:
            await stale.list_tenants()
        message = str(caught.value)
        assert migrations.head_revision() in message and "db upgrade" in message
        await stale.migrate()
        assert [t.id for t in await stale.list_tenants()] == ["default"]
    finally:
        await stale.close()


def _run(args: list[str], env: dict[str, str] | None = None, cwd: Path = REPO) -> str:
    result = subprocess.run(
        args,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _alembic() -> str:
    return str(Path(sys.executable).with_name("alembic"))


async def test_alembic_cli_from_the_repository_applies_the_same_revisions(
    empty_url: str,
) -> None:
    _run([_alembic(), "-x", f"url={empty_url}", "upgrade", "head"])
    store = await StateStore.connect(empty_url)  # connect only: no migrate
    try:
        await store.create_tenant(Tenant(id="cli", name="from alembic"))
        assert [t.id for t in await store.list_tenants()] == ["cli", "default"]
    finally:
        await store.close()
    out = _run([_alembic(), "current"], env={"STATESTORE_DATABASE_URL": empty_url})
    assert migrations.head_revision() in out


MIGRATOR = """
import asyncio, sys
from statestore import StateStore
async def main() -> None:
    store = await StateStore.open(sys.argv[1])
    await store.close()
asyncio.run(main())
"""


async def test_migrate_from_several_processes_at_once(empty_url: str) -> None:
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            MIGRATOR,
            empty_url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(4)
    ]
    outputs = [await proc.communicate() for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()

    def state(connection: Connection) -> tuple[Any, ...]:
        tenants = connection.execute(text("SELECT id FROM tenants")).scalars().all()
        versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
        return tuple(tenants), len(versions)

    assert await on_connection(empty_url, state) == (("default",), 1)


def test_the_wheel_ships_the_migrations_and_migrate_works_from_it(tmp_path: Path) -> None:
    """Install the built wheel outside the checkout and migrate a database with it."""
    wheels = tmp_path / "wheels"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(REPO),
        ]
    )
    (wheel,) = wheels.glob("statestore-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "statestore/_migrations/env.py" in names
    assert "statestore/_migrations/versions/0001_initial_schema.py" in names
    assert "statestore/py.typed" in names

    site = tmp_path / "site"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ]
    )
    script = (
        "import asyncio, statestore\n"
        "from statestore.db.migrations import migrations_dir\n"
        "print(statestore.__file__)\n"
        "print(migrations_dir())\n"
        "async def main():\n"
        "    store = await statestore.StateStore.open('sqlite:///installed.db')\n"
        "    print([t.id for t in await store.list_tenants()])\n"
        "    await store.close()\n"
        "asyncio.run(main())\n"
    )
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    out = _run([sys.executable, "-c", script], env={"PYTHONPATH": str(site)}, cwd=workdir)
    module_file, folder, tenants = out.strip().splitlines()
    assert module_file.startswith(str(site))
    assert folder == str(site / "statestore" / "_migrations")
    assert tenants == "['default']"


def test_pg_admin_url_is_local() -> None:
    # The suite only ever talks to a database on this machine.
    assert "127.0.0.1" in PG_ADMIN_URL or "localhost" in PG_ADMIN_URL


async def test_populated_database_walks_down_and_up(database_url: str) -> None:
    """A database filled by the demo migrates down to base and back to head without error
    and without drift. (Revision 0001 creates every table, so below it nothing remains; once
    later revisions exist, this walk also proves that they keep every row.)"""
    from statestore.demo import DEMO_LEASE, run_demo

    store = await StateStore.open(database_url, lease_duration=DEMO_LEASE)
    try:
        result = await run_demo(store, executions=5, workers=2)
        assert result.executions_completed == 5
        revisions = list(ScriptDirectory.from_config(migrations.alembic_config()).walk_revisions())
        for revision in revisions:  # head first: one step down and back up, rows intact
            if revision.down_revision is None:
                continue
            before = await store.list_executions(limit=1000)
            await store.downgrade(str(revision.down_revision))
            await store.migrate()
            assert await store.list_executions(limit=1000) == before
        await store.downgrade("base")
        await store.migrate()
        assert await store.schema_drift() == []
        assert [t.id for t in await store.list_tenants()] == ["default"]
    finally:
        await store.close()


async def test_revision_0003_gives_existing_snapshots_their_defaults(empty_url: str) -> None:
    """A snapshot written at revision 0002 reads back at head as pending, with no nodes and
    ``last_sequence = at_sequence``."""
    store = await StateStore.open(empty_url)
    try:
        run = WorkflowExecution(workflow_id="wf", workflow_version="1")
        await store.create_execution(run)
        await store.downgrade("0002")

        def old_snapshot(connection: Connection) -> None:
            # Only the columns revision 0002 has: the statement names just these.
            with connection.begin():
                connection.execute(
                    SnapshotRow.__table__.insert().values(
                        id=uuid.uuid4(),
                        tenant_id="default",
                        execution_id=run.execution_id,
                        at_sequence=7,
                        state={"s": 1},
                        created_at=datetime.now(UTC),
                    )
                )

        await on_connection(empty_url, old_snapshot)
        await store.migrate()
        snapshot = await store.latest_snapshot(run.execution_id)
        assert snapshot is not None and snapshot.state == {"s": 1}
        assert (snapshot.status, snapshot.completed_nodes, snapshot.active_nodes) == (
            "pending",
            {},
            [],
        )
        assert snapshot.last_sequence == 7
    finally:
        await store.close()
