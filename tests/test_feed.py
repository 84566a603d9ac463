"""The database-wide event feed: positions, reads in feed order, follow, checkpoints, tenants."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import StoreFactory
from sqlalchemy import text

from statestore import (
    CustomEvent,
    DatabaseError,
    Event,
    StateStore,
    Tenant,
    ValidationError,
    WorkflowExecution,
    WorkItem,
    feed,
)
from statestore.db.wakeup import asyncpg_dsn


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


# ---------------------------------------------------------------- following: wake-ups

LONG_POLL_S = 60.0
"""The follower's poll in the wake-up tests: an event that arrives well before it was
delivered by a wake-up, not by the poll."""
WAKE_BOUND_S = 5.0
"""Generous: a wake-up takes milliseconds; the bound only has to sit far below the poll."""
FOLLOWER = Path(__file__).with_name("feed_follow_worker.py")


@pytest.fixture
def long_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    """Followers that, without a wake-up, would not read again for a minute."""
    monkeypatch.setattr(feed, "FIRST_POLL_S", LONG_POLL_S)
    monkeypatch.setattr(feed, "MAX_POLL_S", LONG_POLL_S)


class Follower:
    """``iter_feed(follow=True)`` of ``store`` in a task; each event with its arrival time."""

    def __init__(self, store: StateStore, after: int) -> None:
        self.arrived: list[tuple[Event, float]] = []
        self.taken = 0
        self.new = asyncio.Event()
        self.task = asyncio.create_task(self._follow(store, after))

    async def _follow(self, store: StateStore, after: int) -> None:
        async for event in store.iter_feed(after=after, follow=True):
            self.arrived.append((event, time.time()))
            self.new.set()

    async def next(self, within: float = WAKE_BOUND_S) -> tuple[Event, float]:
        """The next event not returned yet, waited for at most ``within`` seconds."""
        while len(self.arrived) == self.taken:
            self.new.clear()
            await asyncio.wait_for(self.new.wait(), within)
        self.taken += 1
        return self.arrived[self.taken - 1]


async def following(store: StateStore) -> Follower:
    """A follower from the feed's end, once it is registered, past its first read and
    (PostgreSQL) listening."""
    last = [e async for e in store.iter_feed()]
    follower = Follower(store, last[-1].position or 0 if last else 0)
    waker = store._backend.waker
    for _ in range(500):
        if waker._followers and waker.reliable:
            break
        await asyncio.sleep(0.01)
    assert waker._followers and waker.reliable
    await asyncio.sleep(0.1)  # past the reads a (re)connection's signal causes
    return follower


async def stop(follower: Follower, store: StateStore) -> None:
    """Cancel the follower: its waiter is gone at once."""
    followers = len(store._backend.waker._followers)
    follower.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await follower.task
    assert len(store._backend.waker._followers) == followers - 1


@pytest.mark.usefixtures("long_poll")
async def test_followers_are_woken_by_their_own_store_s_append(store: StateStore) -> None:
    """SQLite: the writer's commit signal; PostgreSQL: the signal after the store's own
    write returned. Both well before the (minute-long) poll would read again, and every
    follower, not one of them."""
    execution = await _execution(store)
    followers = [await following(store), await following(store)]
    latencies = []
    for i in range(3):
        await store.append_event(
            Event(execution_id=execution.execution_id, kind=CustomEvent(type=f"w{i}"))
        )
        returned = time.time()
        for follower in followers:
            event, arrived = await follower.next()
            assert event.kind.type == f"w{i}"
            assert arrived - returned < WAKE_BOUND_S
            latencies.append(round((arrived - returned) * 1000, 1))
    print(f"in-process followers woken after the append returned (ms): {latencies}")
    for follower in followers:
        await stop(follower, store)


@pytest.mark.usefixtures("long_poll")
async def test_a_scoped_follower_is_woken_by_its_tenant_s_events_only(store: StateStore) -> None:
    executions = {}
    for tenant_id in ("acme", "globex"):
        await store.create_tenant(Tenant(id=tenant_id, name=tenant_id))
        executions[tenant_id] = await _execution(store.for_tenant(tenant_id))
    acme = store.for_tenant("acme")
    follower = await following(acme)
    for tenant_id in ("globex", "acme", "globex", "acme"):
        await store.for_tenant(tenant_id).append_event(
            Event(execution_id=executions[tenant_id].execution_id, kind=CustomEvent(type=tenant_id))
        )
    first, _ = await follower.next()
    second, _ = await follower.next()
    assert [first.tenant_id, second.tenant_id] == ["acme", "acme"]
    await asyncio.sleep(0.1)
    # Their commits woke it too (a wake-up is only a hint); its scoped reads returned none.
    assert len(follower.arrived) == 2
    await stop(follower, acme)


@pytest.mark.usefixtures("long_poll")
async def test_a_follower_is_woken_by_another_process(
    store: StateStore, database_url: str, backend: str
) -> None:
    """A real child process writes. SQLite: any commit (a plain append, a start), seen by
    the change check. PostgreSQL: a write that notifies (``start_execution`` with a work
    item); another process's plain append sends no notification and reaches a follower by
    its poll (the next test)."""
    follower = await following(store)
    for mode in ("append", "start") if backend == "sqlite" else ("start",):
        child = await asyncio.create_subprocess_exec(
            sys.executable, str(FOLLOWER), database_url, mode, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await child.communicate()
        assert child.returncode == 0
        event, arrived = await follower.next(within=30)
        assert event.kind.type == "from-child"
        latency = arrived - float(out.decode().split()[-1])
        assert latency < WAKE_BOUND_S, mode
        print(f"follower woken by another process's {mode}: {latency * 1000:.1f} ms")
    await stop(follower, store)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_another_process_s_plain_append_reaches_a_follower_by_the_poll(
    store: StateStore, database_url: str
) -> None:
    follower = await following(store)
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(FOLLOWER), database_url, "append", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await child.communicate()
    assert child.returncode == 0
    event, arrived = await follower.next(within=30)
    assert event.kind.type == "from-child"
    assert arrived - float(out.decode().split()[-1]) < feed.MAX_POLL_S + WAKE_BOUND_S
    await stop(follower, store)


@pytest.mark.usefixtures("long_poll")
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_a_follower_survives_a_dropped_listener(
    store: StateStore, make_store: StoreFactory, database_url: str
) -> None:
    """The listener killed: while it is down the follower polls (the claims' fallback
    period, not the minute-long poll) and gets another store's plain append; once the
    listener is back, a notifying write from that store wakes it again."""
    other = await make_store()  # another store: another waker, like another process
    execution = await _execution(other)
    waker = store._backend.waker
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(feed, "FIRST_POLL_S", LONG_POLL_S)
        patch.setattr(feed, "MAX_POLL_S", LONG_POLL_S)
        follower = await following(store)
        old_pid = waker.listener_pid
        assert old_pid is not None
        admin = await asyncpg.connect(asyncpg_dsn(store._backend.config))
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", old_pid)
        finally:
            await admin.close()
        for _ in range(100):
            if not waker.reliable:
                break
            await asyncio.sleep(0.01)
        await other.append_event(
            Event(execution_id=execution.execution_id, kind=CustomEvent(type="down"))
        )
        event, _ = await follower.next()
        assert event.kind.type == "down"
        for _ in range(500):
            if waker.listener_pid not in (None, old_pid):
                break
            await asyncio.sleep(0.01)
        assert waker.listener_pid not in (None, old_pid)
        await asyncio.sleep(0.1)  # past the read the reconnection's signal causes
        started = WorkflowExecution(workflow_id="wf", workflow_version="1")
        work = WorkItem(execution_id=started.execution_id, node_id="n", queue_type="q")
        await other.start_execution(started, events=[CustomEvent(type="back")], enqueue=[work])
        returned = time.time()
        event, arrived = await follower.next()
        assert event.kind.type == "back" and arrived - returned < WAKE_BOUND_S
        await stop(follower, store)


async def test_cancelling_or_closing_a_follower_leaks_no_waiter(store: StateStore) -> None:
    waker = store._backend.waker
    assert [e async for e in store.iter_feed()] == []
    assert not waker._followers and waker._task is None  # a plain read starts nothing
    follower = await following(store)
    await stop(follower, store)  # cancelled while it waits

    execution = await _execution(store)
    await store.append_events(
        execution.execution_id, [CustomEvent(type="a"), CustomEvent(type="b")]
    )
    async with contextlib.aclosing(store.iter_feed(follow=True)) as events:
        async for event in events:
            assert waker._followers
            if event.kind.type == "b":
                break  # left while it was yielding, not waiting
    assert not waker._followers
    if store._backend.config.dialect == "sqlite":
        # The change check runs only while someone waits.
        await asyncio.sleep(0.2)
        assert waker._task is not None and waker._task.done()
    else:
        assert waker._task is not None and not waker._task.done()  # one per store
        await store.close()
        assert waker._task is None or waker._task.done()


def test_the_feed_benchmark_runs_at_a_small_size(database_url: str, backend: str) -> None:
    """bench/feed.py end to end with 2 writer processes for half a second (no timing
    thresholds): the feed columns, read, append and lag lines, and on PostgreSQL the
    NOTIFY-per-append ones. The feed-columns cell must leave no event behind: the read
    measurement after it checks that it reads exactly the events it appended."""
    script = Path(__file__).resolve().parent.parent / "bench" / "feed.py"
    args = ["--events", "200", "--writers", "2", "--seconds", "0.5", "--rounds", "1"]
    result = subprocess.run(
        [sys.executable, str(script), database_url, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    columns = r": with the feed columns [\d,]+ events/s, without [\d,]+ events/s \([\d.]+x\)"
    patterns = [
        r"read: iter_feed [\d,]+ events/s, raw SELECT [\d,]+ events/s",
        r"append, 2 writer processes: [\d,]+ events/s",
        r"lag, 2 writer processes: \d+ events, p50 -?[\d.]+ ms, p99 -?[\d.]+ ms",
    ]
    if backend == "postgresql":
        patterns += [
            r"append, raw driver, 1 connection" + columns,
            r"append, raw driver, 2 connections" + columns,
            r"append, 2 writer processes, NOTIFY in each append: [\d,]+ events/s \([\d.]+x\)",
            r"lag, 2 writer processes, NOTIFY in each append: \d+ events, p50 .* ms, p99 .* ms",
        ]
    else:
        patterns.append(r"append, raw driver, 1 writer" + columns)
    for pattern in patterns:
        assert any(re.fullmatch(pattern, line) for line in lines), (pattern, result.stdout)
    assert len(lines) == len(patterns), result.stdout


async def test_closing_the_store_ends_its_followers_with_a_typed_error(
    store: StateStore,
) -> None:
    """Followers (the store's and a tenant view's) waiting when the store closes: close
    does not wait on them, and each ends promptly with ``DatabaseError``, none hangs."""
    await store.create_tenant(Tenant(id="t", name="t"))
    views = [store, store.for_tenant("t")] * 3
    followers = [Follower(view, 0) for view in views]
    await asyncio.sleep(0.3)
    await asyncio.wait_for(store.close(), 5)
    done, pending = await asyncio.wait([f.task for f in followers], timeout=2)
    for task in pending:
        task.cancel()
    assert not pending
    assert all(isinstance(task.exception(), DatabaseError) for task in done)
    assert not store._backend.waker._followers
