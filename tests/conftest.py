"""Shared fixtures: every behaviour test runs against a real SQLite file and the real
PostgreSQL (``backend`` is parametrised). PostgreSQL tests skip only when the server is
unreachable outside CI; with ``CI=true`` they fail instead.

Tests marked ``memory`` (a module's ``pytestmark``) also run on ``sqlite:///:memory:``,
the third backend; ``no_memory`` takes one test of such a module out again. Tests marked
``pgbouncer`` also run on the session's PostgreSQL database through PgBouncer in transaction
pooling mode (``tests/pgbouncer_server.py``; skipped without it, failed under ``CI=true``).

Each SQLite test gets a copy of one file migrated once per session; each PostgreSQL test
the session's database, emptied by ``TRUNCATE``. Both are as a fresh ``StateStore.open``
leaves them, without an Alembic upgrade per test."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pgbouncer_server
import pytest
from sqlalchemy.engine import make_url

from statestore import StateStore

PG_ADMIN_URL = os.environ.get("STATESTORE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() == "true"

TABLES = (
    "events",
    "snapshots",
    "work_items",
    "api_tokens",
    "workflow_definitions",
    "workflow_executions",
    "tenants",
)

StoreFactory = Callable[..., Awaitable[StateStore]]

BACKENDS = ("sqlite", "postgresql")
MEMORY = "memory"
MEMORY_URL = "sqlite:///:memory:"
PGBOUNCER = "pgbouncer"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "memory: also run on sqlite:///:memory: (the test opens one store: each in-memory "
        "store is a database of its own)",
    )
    config.addinivalue_line("markers", "no_memory(reason): not on sqlite:///:memory:")
    config.addinivalue_line(
        "markers", "pgbouncer: also run on PostgreSQL through PgBouncer (transaction pooling)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``backend``: sqlite and postgresql for every test, memory too for marked ones."""
    if "backend" not in metafunc.fixturenames:
        return
    definition = metafunc.definition
    for marker in definition.iter_markers("parametrize"):
        names = marker.args[0]
        if "backend" in (names.replace(" ", "").split(",") if isinstance(names, str) else names):
            return  # the test chooses its backends itself
    on_memory = definition.get_closest_marker("memory") and not definition.get_closest_marker(
        "no_memory"
    )
    backends = [*BACKENDS, MEMORY] if on_memory else [*BACKENDS]
    if definition.get_closest_marker("pgbouncer"):
        backends.append(PGBOUNCER)
    metafunc.parametrize("backend", backends, indirect=True)


def _pg_url(database: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{database}"


async def _pg_admin(*statements: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL.replace("postgresql://", "postgres://"), timeout=5)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, migrated to head."""
    name = f"statestore_test_{os.getpid()}"
    try:
        asyncio.run(_pg_admin(f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}"))
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI but unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    url = _pg_url(name)

    async def migrate() -> None:
        store = await StateStore.open(url)
        await store.close()

    asyncio.run(migrate())
    yield url
    asyncio.run(_pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def run_bench(script: str, *args: str, timeout: float = 180) -> str:
    """Run ``bench/<script>`` with ``args`` from the checkout; its standard output (it must
    succeed)."""
    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, str(repo / "bench" / script), *args],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


async def client_backends(url: str) -> set[int]:
    """The pids of the client backends on ``url``'s PostgreSQL database now (this query's
    own excluded): what a store holds open there, beside whatever else is connected."""
    raw = await asyncpg.connect(url.replace("postgresql://", "postgres://"))
    try:
        rows = await raw.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
        return {row["pid"] for row in rows}
    finally:
        await raw.close()


async def reset_pg(url: str) -> None:
    """Empty every table and restore the ``default`` tenant, as after migration."""
    conn = await asyncpg.connect(url.replace("postgresql://", "postgres://"))
    try:
        await conn.execute(f"TRUNCATE {', '.join(TABLES)} CASCADE")
        await conn.execute(
            "INSERT INTO tenants (id, name, status, created_at, updated_at) "
            "VALUES ('default', 'Default', 'active', now(), now())"
        )
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pgbouncer_port(pg_database: str) -> Iterator[int]:
    """A PgBouncer (transaction pooling, two server connections) in front of the server."""
    program = pgbouncer_server.executable()
    if program is None:
        if IN_CI:
            pytest.fail("CI=true but pgbouncer is missing: make install installs it")
        pytest.skip("no pgbouncer (make install installs it)")
    with pgbouncer_server.pgbouncer(program, pg_database) as port:
        yield port


def behind_pgbouncer(url: str, port: int) -> str:
    """``url``'s database through the PgBouncer on ``port``, marked ``pgbouncer=true``."""
    through = make_url(url).set(port=port, query={"pgbouncer": "true"})
    return through.render_as_string(hide_password=False)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """``sqlite``, ``postgresql``, ``memory`` or ``pgbouncer`` (parametrised by
    :func:`pytest_generate_tests`)."""
    return str(request.param)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite file migrated to head once per session, copied by each SQLite test."""
    path = tmp_path_factory.mktemp("template") / "state.db"

    async def migrate() -> None:
        store = await StateStore.open(f"sqlite:///{path}")
        await store.close()

    asyncio.run(migrate())
    # Closing the last connection checkpointed the WAL into the file and removed it.
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    return path


@pytest.fixture
def pg_url(backend: str, request: pytest.FixtureRequest) -> str | None:
    """The session's PostgreSQL database (direct, also for the PgBouncer backend), requested
    only by PostgreSQL-backed tests."""
    if backend not in ("postgresql", PGBOUNCER):
        return None
    return str(request.getfixturevalue("pg_database"))


@pytest.fixture
def sqlite_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str | None:
    """A fresh copy of :func:`sqlite_template`, for SQLite-backed tests only."""
    if backend != "sqlite":
        return None
    path = tmp_path / "state.db"
    shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
    return f"sqlite:///{path}"


@pytest.fixture
async def database_url(
    backend: str, pg_url: str | None, sqlite_url: str | None, request: pytest.FixtureRequest
) -> str:
    """URL of an empty database at head revision, fresh for this test. On ``memory`` it is
    ``sqlite:///:memory:``: the test's one store (:func:`make_store`) is its database. On
    ``pgbouncer`` the PostgreSQL database through PgBouncer."""
    if pg_url is not None:
        await reset_pg(pg_url)
        if backend == PGBOUNCER:
            return behind_pgbouncer(pg_url, request.getfixturevalue("pgbouncer_port"))
        return pg_url
    return sqlite_url or MEMORY_URL


@pytest.fixture
async def make_store(
    database_url: str, backend: str, pg_url: str | None
) -> AsyncIterator[StoreFactory]:
    """Open more stores (e.g. with a clock) on this test's database; all closed at the end.
    On ``memory`` only one: it opens (and migrates) the test's in-memory database. Through
    PgBouncer the stores get the database itself as their ``direct_url``."""
    stores: list[StateStore] = []

    async def factory(**options: Any) -> StateStore:
        if backend == PGBOUNCER:
            options.setdefault("direct_url", pg_url)
        if database_url != MEMORY_URL:
            store = await StateStore.connect(database_url, **options)
        elif stores:
            raise AssertionError(
                "a second store on sqlite:///:memory: would be another, empty database: "
                "mark the test no_memory"
            )
        else:
            store = await StateStore.open(database_url, **options)
        stores.append(store)
        return store

    yield factory
    for store in stores:
        await store.close()


@pytest.fixture
async def store(make_store: StoreFactory) -> StateStore:
    """The unscoped store on this test's fresh database."""
    return await make_store()


T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


class Clock:
    """A store clock the test moves by hand (leases, backoff and expiry without sleeping)."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float = 0.0, **delta: float) -> datetime:
        self.now += timedelta(seconds=seconds, **delta)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()
