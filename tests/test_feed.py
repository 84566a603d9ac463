"""The database-wide event feed: positions, reads in feed order, follow, checkpoints, tenants."""

from __future__ import annotations

import asyncio
import itertools
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import StoreFactory
from sqlalchemy import text

from statestore import (
    CustomEvent,
    Event,
    StateStore,
    Tenant,
    ValidationError,
    WorkflowExecution,
)


async def _execution(store: StateStore) -> WorkflowExecution:
    execution = WorkflowExecution(workflow_id="wf", workflow_version="1")
    await store.create_execution(execution)
    return execution


async def test_events_get_increasing_positions_and_the_feed_reads_them_in_order(
    store: StateStore,
) -> None:
    a, b = await _execution(store), await _execution(store)
    await store.append_event(Event(execution_id=a.execution_id, kind=CustomEvent(type="a1")))
    await store.append_events(b.execution_id, [CustomEvent(type="b1"), CustomEvent(type="b2")])
    await store.append_event(Event(execution_id=a.execution_id, kind=CustomEvent(type="a2")))

    feed = await store.read_feed()
    assert [e.kind.type for e in feed] == ["a1", "b1", "b2", "a2"]
    positions = [e.position for e in feed]
    assert all(isinstance(p, int) and p > 0 for p in positions)
    assert positions == sorted(positions) and len(set(positions)) == 4
    assert [e.execution_id for e in feed] == [a.execution_id] + [b.execution_id] * 2 + [
        a.execution_id
    ]
    # The per-execution reads carry the same positions.
    by_id = {e.id: e.position for e in feed}
    for event in await store.get_events(a.execution_id) + await store.get_events(b.execution_id):
        assert event.position == by_id[event.id]

    assert [p.position for p in await store.read_feed(after=positions[1], limit=1)] == [
        positions[2]
    ]
    assert await store.read_feed(after=positions[-1]) == []


async def test_iter_feed_pages_and_follow_sees_later_appends(store: StateStore) -> None:
    execution = await _execution(store)
    await store.append_events(execution.execution_id, [CustomEvent(type=f"e{i}") for i in range(7)])
    streamed = [e async for e in store.iter_feed(batch=3)]
    assert [e.kind.type for e in streamed] == [f"e{i}" for i in range(7)]
    assert [e async for e in store.iter_feed(after=streamed[-1].position or 0)] == []

    seen: list[str] = []

    async def follow() -> None:
        async for event in store.iter_feed(after=streamed[-1].position or 0, follow=True):
            seen.append(event.kind.type)
            if len(seen) == 2:
                return

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.05)
    assert not follower.done()
    await store.append_event(Event(execution_id=execution.execution_id, kind=CustomEvent(type="x")))
    await store.append_event(Event(execution_id=execution.execution_id, kind=CustomEvent(type="y")))
    await asyncio.wait_for(follower, 5)
    assert seen == ["x", "y"]


async def test_feed_arguments_are_checked(store: StateStore) -> None:
    with pytest.raises(ValidationError):
        await store.read_feed(after=-1)
    with pytest.raises(ValidationError):
        await store.read_feed(limit=0)
    with pytest.raises(ValidationError):
        [e async for e in store.iter_feed(batch=0)]
    with pytest.raises(ValidationError):
        await store.save_checkpoint("", 3)
    with pytest.raises(ValidationError):
        await store.save_checkpoint("c", -1)


async def test_checkpoints_are_saved_per_consumer_and_tenant(store: StateStore) -> None:
    assert await store.get_checkpoint("indexer") == 0
    await store.save_checkpoint("indexer", 42)
    await store.save_checkpoint("indexer", 57)
    await store.save_checkpoint("audit", 3)
    assert await store.get_checkpoint("indexer") == 57
    assert await store.get_checkpoint("audit") == 3

    await store.create_tenant(Tenant(id="acme", name="Acme"))
    acme = store.for_tenant("acme")
    assert await acme.get_checkpoint("indexer") == 0
    await acme.save_checkpoint("indexer", 5)
    assert await acme.get_checkpoint("indexer") == 5
    assert await store.get_checkpoint("indexer") == 57
    assert await store.for_tenant("default").get_checkpoint("indexer") == 57


async def test_a_scoped_feed_reads_only_its_tenant(store: StateStore) -> None:
    for tenant_id in ("acme", "globex"):
        await store.create_tenant(Tenant(id=tenant_id, name=tenant_id))
        scoped = store.for_tenant(tenant_id)
        execution = WorkflowExecution(workflow_id="wf", workflow_version="1")
        await scoped.create_execution(execution)
        await scoped.append_events(
            execution.execution_id, [CustomEvent(type=f"{tenant_id}-{i}") for i in range(3)]
        )
    acme = [e.kind.type for e in await store.for_tenant("acme").read_feed()]
    assert acme == ["acme-0", "acme-1", "acme-2"]
    assert all(e.tenant_id == "globex" for e in await store.for_tenant("globex").read_feed())
    assert len(await store.read_feed()) == 6
    assert [e async for e in store.for_tenant("acme").iter_feed(batch=2)] == await store.for_tenant(
        "acme"
    ).read_feed()


async def test_append_many_and_turn_paths_assign_distinct_positions(store: StateStore) -> None:
    execution = await _execution(store)
    for round_ in range(3):
        await store.append_events(
            execution.execution_id, [CustomEvent(type=f"r{round_}-{i}") for i in range(50)]
        )
    feed = [e async for e in store.iter_feed(batch=40)]
    assert [e.sequence for e in feed] == list(range(1, 151))
    positions = [e.position or 0 for e in feed]
    assert positions == sorted(positions) and len(set(positions)) == 150


WRITERS = 8
TRANSACTIONS = 30


async def _tail_correctly(store: StateStore, done: asyncio.Event, read: list[Event]) -> None:
    """The store's feed, read as fast as it goes until the writers are done, then drained."""
    after = 0
    while True:
        finished = done.is_set()
        page = await store.read_feed(after=after, limit=500)
        read.extend(page)
        if page:
            after = page[-1].position or after
        elif finished:
            return
        else:
            await asyncio.sleep(0.001)


async def _tail_naively(store: StateStore, done: asyncio.Event, read: list[Any]) -> None:
    """The negative control: ``WHERE position > last`` without the horizon."""
    naive = text("SELECT id, position FROM events WHERE position > :last ORDER BY position")
    last = 0
    async with store.engine.connect() as connection:
        while True:
            finished = done.is_set()
            rows = (await connection.execute(naive, {"last": last})).all()
            await connection.commit()
            read.extend(rows)
            if rows:
                last = rows[-1].position
            elif finished:
                return
            else:
                await asyncio.sleep(0.001)


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_the_feed_never_skips_under_concurrent_late_commits_and_the_naive_reader_does(
    make_store: StoreFactory, database_url: str
) -> None:
    """Writer processes take their transaction ids, append, and commit after a random delay
    (some roll back) while two readers tail: the feed reads every committed event exactly
    once with positions only going up; the naive ``position > last`` reader, run in the same
    test, skips events (so this test can see a skip)."""
    store = await make_store()
    worker = Path(__file__).with_name("feed_writer.py")
    executions = [await _execution(store) for _ in range(WRITERS)]
    done = asyncio.Event()
    read: list[Event] = []
    naive: list[Any] = []
    readers = [
        asyncio.create_task(_tail_correctly(store, done, read)),
        asyncio.create_task(_tail_naively(store, done, naive)),
    ]
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(worker),
            database_url,
            str(execution.execution_id),
            str(TRANSACTIONS),
            str(seed),
            stdout=asyncio.subprocess.PIPE,
        )
        for seed, execution in enumerate(executions)
    ]
    try:
        outputs = [await child.communicate() for child in children]
        assert [child.returncode for child in children] == [0] * WRITERS
    finally:
        done.set()
        await asyncio.wait_for(asyncio.gather(*readers), 30)

    committed = {uuid.UUID(line) for out, _ in outputs for line in out.decode().split()}
    assert len(committed) > WRITERS * TRANSACTIONS  # most commit, some with several events
    read_ids = [event.id for event in read]
    assert len(read_ids) == len(set(read_ids)), "an event was read twice"
    assert set(read_ids) == committed, "the feed skipped (or invented) events"
    positions = [event.position or 0 for event in read]
    assert all(a < b for a, b in itertools.pairwise(positions))
    # Within one execution the feed keeps sequence order.
    for execution in executions:
        sequences = [e.sequence for e in read if e.execution_id == execution.execution_id]
        assert sequences == sorted(sequences)

    skipped = committed - {row.id for row in naive}
    assert skipped, "the naive reader skipped nothing: this run could not have caught a skip"


async def test_the_upgrade_numbers_stored_events_in_execution_order(store: StateStore) -> None:
    """Revision 0004 on a populated database: every stored event gets a position, in an
    order that keeps each execution's sequence order; later appends come after them."""
    a, b = await _execution(store), await _execution(store)
    for i in range(5):
        await store.append_events(a.execution_id, [CustomEvent(type=f"a{i}")] * 2)
        await store.append_event(Event(execution_id=b.execution_id, kind=CustomEvent(type="b")))
    await store.downgrade("0003")
    await store.migrate()
    feed = await store.read_feed(limit=1000)
    assert len(feed) == 15
    positions = [e.position or 0 for e in feed]
    assert all(p > 0 for p in positions) and positions == sorted(set(positions))
    for execution in (a, b):
        sequences = [e.sequence for e in feed if e.execution_id == execution.execution_id]
        assert sequences == list(range(1, len(sequences) + 1))
    await store.append_event(Event(execution_id=b.execution_id, kind=CustomEvent(type="new")))
    (latest,) = await store.read_feed(after=positions[-1])
    assert latest.kind.type == "new"
