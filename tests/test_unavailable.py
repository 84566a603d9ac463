"""The database unavailable: a clear typed error with a one-line cause, within the
configured timeout, and recovery once the database is back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from statestore import (
    ConfigurationError,
    DatabaseError,
    StateStore,
    StateStoreError,
    Tenant,
    WorkflowExecution,
)

LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()  # hold the lock until told to go
conn.execute("ROLLBACK")
"""


async def test_sqlite_file_locked_by_another_process_past_the_busy_timeout(
    tmp_path: Path,
) -> None:
    path = tmp_path / "locked.db"
    url = f"sqlite:///{path}"
    store = await StateStore.open(url, busy_timeout=0.5)
    try:
        await store.create_tenant(Tenant(id="before", name="before"))
        locker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            LOCKER,
            str(path),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert locker.stdout is not None and locker.stdin is not None
        assert (await locker.stdout.readline()).strip() == b"locked"

        started = time.monotonic()
        with pytest.raises(DatabaseError) as caught:
            await store.create_execution(WorkflowExecution(workflow_id="w", workflow_version="1"))
        waited = time.monotonic() - started
        assert 0.4 <= waited < 5, waited  # the busy timeout, not a hang
        assert "locked" in str(caught.value) and "\n" not in str(caught.value)

        locker.stdin.write(b"go\n")
        await locker.stdin.drain()
        await locker.wait()
        # the store recovers as soon as the lock is gone
        await store.create_tenant(Tenant(id="after", name="after"))
        assert [t.id for t in await store.list_tenants()] == ["after", "before", "default"]
    finally:
        await store.close()


async def test_sqlite_path_that_cannot_be_a_folder_is_a_configuration_error(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(ConfigurationError) as caught:
        await StateStore.open(f"sqlite:///{blocker / 'state.db'}")
    assert "\n" not in str(caught.value) and str(blocker) in str(caught.value)


async def test_sqlite_file_that_is_not_a_database(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not an SQLite database" * 100)
    with pytest.raises(StateStoreError) as caught:
        await StateStore.open(f"sqlite:///{junk}")
    assert isinstance(caught.value, DatabaseError)
    assert "\n" not in str(caught.value)


async def test_unreachable_postgres_host_fails_within_the_connect_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(DatabaseError):
        # 127.0.0.2 port 9: nothing listens; refused at once, never a hang
        await StateStore.open("postgresql://postgres@127.0.0.2:9/none")
    assert time.monotonic() - started < 12


@contextlib.contextmanager
def bind_mount(source: Path, target: Path) -> Iterator[Callable[[bool], None]]:
    """Bind-mount ``source`` on ``target``; yields a function switching it read-only or
    read-write. Needs root (CI runs as root); elsewhere the test cannot run."""
    target.mkdir()
    done = subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True)
    if done.returncode != 0:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must be able to bind-mount: {done.stderr.decode().strip()}")
        pytest.skip("bind mounts need root")

    def read_only(flag: bool) -> None:
        mode = "remount,ro,bind" if flag else "remount,rw,bind"
        subprocess.run(["mount", "-o", mode, str(target)], check=True)

    try:
        yield read_only
    finally:
        subprocess.run(["umount", str(target)], check=True)


async def test_sqlite_on_a_read_only_file_system(tmp_path: Path) -> None:
    source = tmp_path / "data"
    source.mkdir()
    with bind_mount(source, tmp_path / "mnt") as read_only:
        url = f"sqlite:///{tmp_path / 'mnt' / 'state.db'}"
        async with await StateStore.open(url) as store:
            await store.create_tenant(Tenant(id="before", name="before"))
        read_only(True)
        with pytest.raises(DatabaseError) as caught:  # cannot open it for writing
            await StateStore.open(url)
        assert "\n" not in str(caught.value)
        with pytest.raises(ConfigurationError):  # nor create a folder there
            await StateStore.open(f"sqlite:///{tmp_path / 'mnt' / 'sub' / 'x.db'}")
        read_only(False)
        async with await StateStore.open(url) as store:  # back: nothing lost, writes work
            await store.create_tenant(Tenant(id="after", name="after"))
            assert [t.id for t in await store.list_tenants()] == ["after", "before", "default"]


CAN_RESTART_POSTGRES = os.path.isdir("/etc/postgresql") and os.geteuid() == 0


def _pg_cluster(action: str) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        [
            "pg_ctlcluster",
            "--skip-systemctl-redirect",
            version,
            "main",
            action,
            *(["-m", "fast"] if action == "stop" else []),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


async def _wait_for_postgres(url: str) -> None:
    for _ in range(60):
        try:
            async with await StateStore.connect(url) as probe:
                await probe.list_tenants()
            return
        except DatabaseError:
            await asyncio.sleep(0.5)
    pytest.fail("PostgreSQL did not come back")


async def test_postgres_stopped_then_started_again(pg_database: str) -> None:
    """The server goes away under a live store: calls fail fast with DatabaseError (a one-line
    cause), and the same store works again once the server is back."""
    if not CAN_RESTART_POSTGRES:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI must be able to stop and start the local PostgreSQL")
        pytest.skip("needs root and a local PostgreSQL cluster")
    from conftest import reset_pg

    await reset_pg(pg_database)
    store = await StateStore.connect(pg_database)
    try:
        await store.create_tenant(Tenant(id="before", name="before"))
        _pg_cluster("stop")
        try:
            for _ in range(2):  # the dead pooled connection, then a refused new one
                started = time.monotonic()
                with pytest.raises(DatabaseError) as caught:
                    await store.create_tenant(Tenant(id="during", name="during"))
                assert time.monotonic() - started < 12
                assert "\n" not in str(caught.value)
        finally:
            _pg_cluster("start")
            await _wait_for_postgres(pg_database)
        await store.create_tenant(Tenant(id="after", name="after"))
        assert [t.id for t in await store.list_tenants()] == ["after", "before", "default"]
    finally:
        await store.close()
