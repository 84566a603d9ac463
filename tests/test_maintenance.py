"""run_maintenance and ``statestore maintain`` — on both databases."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import Clock
from sqlalchemy.engine import make_url

from statestore import StateStore, ValidationError, WorkflowExecution, WorkItem, WorkItemStatus
from statestore.db.maintenance import MAINTENANCE_LOCK_KEY

WORKER = Path(__file__).with_name("maintain_worker.py")
STATESTORE = str(Path(sys.executable).with_name("statestore"))


async def execution(store: StateStore) -> uuid.UUID:
    run = WorkflowExecution(workflow_id="wf", workflow_version="1")
    await store.create_execution(run)
    return run.execution_id


async def run_for(store: StateStore, seconds: float, **options: Any) -> None:
    task = asyncio.create_task(store.run_maintenance(every=0.05, **options))
    await asyncio.sleep(seconds)
    assert not task.done(), task.exception()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_two_processes_never_reclaim_one_expiry_twice(
    make_store: Any, database_url: str, backend: str
) -> None:
    store: StateStore = await make_store(lease_duration=timedelta(seconds=0.3))
    eid = await execution(store)
    items = [
        WorkItem(execution_id=eid, node_id=f"n{i}", queue_type="q", max_attempts=1 + i % 2)
        for i in range(60)
    ]
    for item in items:
        await store.enqueue_work_item(item)
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            database_url,
            "3",
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    for process in processes:
        assert process.stdout is not None
        assert (await asyncio.wait_for(process.stdout.readline(), 30)).strip() == b"ready"
    claimed = await store.claim_work_items("w", ["q"], 100)
    assert len(claimed) == 60  # their leases expire in 0.3 s, while both maintain
    reports = []
    for process in processes:
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0
        reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    every = [item_id for report in reports for item_id in report]
    assert len(every) == len(set(every)) == 60  # each expiry reclaimed once, all of them
    assert sorted(every) == sorted(str(item.id) for item in items)
    if backend == "postgresql":
        assert sum(1 for report in reports if report) == 1  # one leader did the work
    stats = (await store.queue_stats())["q"]
    assert stats[WorkItemStatus.PENDING] == 30 and stats[WorkItemStatus.DEAD_LETTERED] == 30


async def test_retention_deletes_only_settled_items_older_than_it(
    make_store: Any, clock: Clock
) -> None:
    store: StateStore = await make_store(clock=clock, lease_duration=timedelta(hours=10))
    eid = await execution(store)

    async def claimed(name: str) -> WorkItem:
        await store.enqueue_work_item(WorkItem(execution_id=eid, node_id=name, queue_type=name))
        item = await store.claim_work_item("w", [name])
        assert item is not None
        return item

    old_done = await claimed("done")
    await store.complete_work_item(old_done.id, worker_id="w", lease_fence=old_done.lease_fence)
    old_failed = await claimed("failed")
    await store.fail_work_item(old_failed.id, "boom", worker_id="w", lease_fence=1)
    old_dead = await claimed("dead")
    await store.move_to_dead_letter(old_dead.id, "poison")
    old_claimed = await claimed("held")
    old_pending = WorkItem(execution_id=eid, node_id="p", queue_type="pending")
    await store.enqueue_work_item(old_pending)
    clock.advance(hours=2)
    recent = await claimed("recent")
    await store.complete_work_item(recent.id, worker_id="w", lease_fence=recent.lease_fence)
    await run_for(store, 0.5, retention=timedelta(hours=1))
    gone = {old_done.id, old_failed.id}
    kept = {old_dead.id, old_claimed.id, old_pending.id, recent.id}
    assert {i.id for i in await store.list_work_items(eid)} == kept
    assert not gone & {i.id for i in await store.list_work_items(eid)}
    # Without retention nothing is deleted.
    clock.advance(hours=5)
    await run_for(store, 0.3)
    assert {i.id for i in await store.list_work_items(eid)} == kept


async def test_every_and_retention_are_checked(store: StateStore) -> None:
    for every in (0, -1, float("nan"), "5"):
        with pytest.raises(ValidationError):
            await store.run_maintenance(every=every)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        await store.run_maintenance(retention=timedelta(seconds=-1))


async def _leaders(database_url: str) -> list[int]:
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    admin = await asyncpg.connect(dsn)
    try:
        rows = await admin.fetch(
            # Advisory locks are per database: other test runs on this server hold their own.
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = $1 AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            MAINTENANCE_LOCK_KEY,
        )
        return [row["pid"] for row in rows]
    finally:
        await admin.close()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_one_leader_and_the_lock_passes_on(make_store: Any, database_url: str) -> None:
    first: StateStore = await make_store()
    second: StateStore = await make_store()
    one = asyncio.create_task(first.run_maintenance(every=0.05))
    await asyncio.sleep(0.5)
    two = asyncio.create_task(second.run_maintenance(every=0.05))
    await asyncio.sleep(0.5)
    leaders = await _leaders(database_url)
    assert len(leaders) == 1
    # The leader's session dies (as with its process): the other takes over.
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    admin = await asyncpg.connect(dsn)
    try:
        await admin.fetchval("SELECT pg_terminate_backend($1)", leaders[0])
    finally:
        await admin.close()
    for _ in range(100):
        now = await _leaders(database_url)
        if now and now != leaders:
            break
        await asyncio.sleep(0.05)
    assert len(now) == 1 and now != leaders
    for task in (one, two):
        assert not task.done()
        task.cancel()
    await asyncio.gather(one, two, return_exceptions=True)
    assert await _leaders(database_url) == []  # cancelling gives the lock up


async def test_cli_maintain_reclaims_and_stops_on_sigterm(
    make_store: Any, database_url: str
) -> None:
    store: StateStore = await make_store(lease_duration=timedelta(seconds=0.1))
    eid = await execution(store)
    item = WorkItem(execution_id=eid, node_id="n", queue_type="q")
    await store.enqueue_work_item(item)
    assert await store.claim_work_item("w", ["q"]) is not None
    process = await asyncio.create_subprocess_exec(
        STATESTORE,
        "maintain",
        "--url",
        database_url,
        "--every",
        "0.1",
        "--retention",
        "3600",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 30)
    assert b"maintaining" in line
    for _ in range(100):
        got = await store.get_work_item(item.id)
        if got is not None and got.status is WorkItemStatus.PENDING:
            break
        await asyncio.sleep(0.05)
    assert got is not None and got.status is WorkItemStatus.PENDING  # reclaimed by the CLI
    process.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, err.decode()
    assert b"maintenance stopped" in out
