"""Claims that wait for work (``wait=``), woken by the database — on both databases."""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from statestore import (
    DatabaseError,
    StateStore,
    StateStoreError,
    Tenant,
    ValidationError,
    WorkflowExecution,
    WorkItem,
)
from statestore.db.maintenance import Leadership
from statestore.models import utc_now

WORKER = Path(__file__).with_name("wait_worker.py")
LATENCY_BOUND_S = 1.0
"""A woken waiter returns this long after the enqueue at most (deadlines are 10 s)."""


async def execution(store: StateStore) -> uuid.UUID:
    run = WorkflowExecution(workflow_id="wf", workflow_version="1")
    await store.create_execution(run)
    return run.execution_id


def item(eid: uuid.UUID, queue_type: str = "q", **fields: Any) -> WorkItem:
    return WorkItem(execution_id=eid, node_id="n", queue_type=queue_type, **fields)


async def waiting(store: StateStore, queue_type: str = "q", wait: float = 10.0) -> Any:
    """A claim waiting in the background, once it is registered and waiting."""
    task = asyncio.create_task(store.claim_work_item("w", [queue_type], wait=wait))
    waker = store._backend.waker
    for _ in range(500):
        if waker._waiters and (waker.reliable or task.done()):
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # past its first claim, into the wait
    return task


async def test_woken_in_process(store: StateStore) -> None:
    eid = await execution(store)
    task = await waiting(store)
    latencies = []
    for round_ in range(5):
        if round_:
            task = await waiting(store)
        new = item(eid)
        start = time.perf_counter()
        await store.enqueue_work_item(new)
        claimed = await asyncio.wait_for(task, 10)
        latencies.append(time.perf_counter() - start)
        assert claimed is not None and claimed.id == new.id
    assert max(latencies) < LATENCY_BOUND_S, latencies
    print(f"in-process wake-up after enqueue returned: {sorted(latencies)}")


async def test_woken_by_another_process(store: StateStore, database_url: str) -> None:
    eid = await execution(store)
    task = await waiting(store)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKER),
        database_url,
        str(eid),
        "q",
        stdout=asyncio.subprocess.PIPE,
    )
    claimed = await asyncio.wait_for(task, 30)
    returned = time.time()
    out, _ = await process.communicate()
    assert process.returncode == 0
    committed = float(out.decode().split()[-1])
    assert claimed is not None
    latency = returned - committed
    assert latency < LATENCY_BOUND_S
    print(f"cross-process wake-up: {latency * 1000:.1f} ms")


async def test_timeout_returns_none_on_time(store: StateStore) -> None:
    eid = await execution(store)
    await store.enqueue_work_item(item(eid, "other"))
    start = time.perf_counter()
    assert await store.claim_work_item("w", ["q"], wait=0.3) is None
    assert 0.3 <= time.perf_counter() - start < 0.3 + LATENCY_BOUND_S
    start = time.perf_counter()
    assert await store.claim_work_items("w", ["q"], 5, wait=timedelta(seconds=0.3)) == []
    assert 0.3 <= time.perf_counter() - start < 0.3 + LATENCY_BOUND_S
    assert not store._backend.waker._waiters


async def test_no_wait_is_one_claim(store: StateStore) -> None:
    for wait in (None, 0, 0.0, timedelta(0)):
        start = time.perf_counter()
        assert await store.claim_work_item("w", ["q"], wait=wait) is None
        assert time.perf_counter() - start < 0.5
    assert store._backend.waker._task is None  # nothing started for a claim that never waits
    for wrong in (-1, timedelta(seconds=-1), float("nan"), "1", True):
        with pytest.raises(ValidationError):
            await store.claim_work_item("w", ["q"], wait=wrong)  # type: ignore[arg-type]


async def test_claim_items_waits_for_at_least_one(store: StateStore) -> None:
    eid = await execution(store)
    task = asyncio.create_task(store.claim_work_items("w", ["q"], 10, wait=10))
    await asyncio.sleep(0.3)
    first = item(eid)
    await store.enqueue_work_item(first)
    claimed = await asyncio.wait_for(task, 10)
    assert claimed and claimed[0].id == first.id


async def test_cancelled_wait_claims_nothing(store: StateStore) -> None:
    eid = await execution(store)
    tasks = [await waiting(store) for _ in range(3)]
    for task in tasks:
        task.cancel()
    for task in tasks:
        with pytest.raises(asyncio.CancelledError):
            await task
    assert not store._backend.waker._waiters
    new = item(eid)
    await store.enqueue_work_item(new)
    claimed = await store.claim_work_item("w2", ["q"])
    assert claimed is not None and claimed.id == new.id and claimed.attempt == 1


async def test_loser_of_the_race_waits_until_its_deadline(store: StateStore) -> None:
    eid = await execution(store)
    first = await waiting(store, wait=1.5)
    second = await waiting(store, wait=1.5)
    start = time.perf_counter()
    await store.enqueue_work_item(item(eid))
    done, pending = await asyncio.wait({first, second}, return_when=asyncio.FIRST_COMPLETED)
    winner = done.pop()
    assert winner.result() is not None
    loser = pending.pop() if pending else (first if winner is second else second)
    assert await loser is None
    assert time.perf_counter() - start >= 1.0  # it kept waiting, it did not return at once


async def test_delayed_item_wakes_its_waiter_when_due(store: StateStore) -> None:
    eid = await execution(store)
    delay = 0.8
    start = time.perf_counter()
    due = utc_now() + timedelta(seconds=delay)
    await store.enqueue_work_item(item(eid, available_at=due))
    claimed = await store.claim_work_item("w", ["q"], wait=10)
    elapsed = time.perf_counter() - start
    assert claimed is not None
    assert delay - 0.05 <= elapsed < delay + LATENCY_BOUND_S
    # And a waiter already waiting when a delayed item is enqueued.
    task = await waiting(store)
    start = time.perf_counter()
    await store.enqueue_work_item(item(eid, available_at=utc_now() + timedelta(seconds=delay)))
    assert await asyncio.wait_for(task, 10) is not None
    assert delay - 0.05 <= time.perf_counter() - start < delay + LATENCY_BOUND_S


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_dropped_listener_connection_recovers(store: StateStore, database_url: str) -> None:
    eid = await execution(store)
    waker = store._backend.waker
    task = await waiting(store)
    old_pid = waker.listener_pid
    assert old_pid is not None
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    admin = await asyncpg.connect(dsn)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", old_pid)
    finally:
        await admin.close()
    # While it is down (or reconnecting), an item still reaches the waiter: bounded poll.
    await store.enqueue_work_item(item(eid))
    start = time.perf_counter()
    assert await asyncio.wait_for(task, 10) is not None
    assert time.perf_counter() - start < 2.0
    for _ in range(300):
        if waker.listener_pid not in (None, old_pid):
            break
        await asyncio.sleep(0.01)
    assert waker.listener_pid not in (None, old_pid)
    # Reconnected: woken by NOTIFY again.
    task = await waiting(store)
    start = time.perf_counter()
    await store.enqueue_work_item(item(eid))
    assert await asyncio.wait_for(task, 10) is not None
    assert time.perf_counter() - start < LATENCY_BOUND_S


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_one_listener_per_store(store: StateStore, database_url: str) -> None:
    tasks = [await waiting(store, wait=5) for _ in range(8)]
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    admin = await asyncpg.connect(dsn)
    try:
        listeners = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
        )
    finally:
        await admin.close()
    assert listeners == 1
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_url_options_reach_the_listener_and_the_leader(
    make_store: Any, database_url: str
) -> None:
    options = "sslmode=disable&prepared_statement_cache_size=100&target_session_attrs=any"
    store: StateStore = await make_store_with_url(f"{database_url}?{options}")
    try:
        eid = await execution(store)
        task = await waiting(store)
        assert store._backend.waker.listener_pid is not None
        await store.enqueue_work_item(item(eid))
        assert await asyncio.wait_for(task, 10) is not None
        leadership = Leadership(store._backend.config, "*")
        try:
            assert await leadership.held()
        finally:
            await leadership.release()
    finally:
        await store.close()


async def make_store_with_url(url: str) -> StateStore:
    return await StateStore.connect(url)


def count_claims(store: StateStore) -> list[int]:
    """A counter of the claim transactions ``store`` runs from now on (the backend's writes
    of ``queue.claim``, the real database underneath)."""
    backend = store._backend
    counted = [0]
    write = backend.write

    async def counting(op: Any, scope: Any, **options: Any) -> Any:
        if getattr(op, "method", None) == store.queue.claim:
            counted[0] += 1
        return await write(op, scope, **options)

    backend.write = counting  # type: ignore[method-assign]
    return counted


async def test_one_item_wakes_one_of_many_waiters(store: StateStore) -> None:
    """A signal wakes one of the waiters that would claim the same item, not all of them
    (each woken waiter runs a claim, and all but one would lose it)."""
    eid = await execution(store)
    tasks = [await waiting(store, wait=10) for _ in range(8)]
    claims = count_claims(store)
    await store.enqueue_work_item(item(eid))
    done, pending = await asyncio.wait(tasks, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1 and done.pop().result() is not None
    await asyncio.sleep(0.3)  # time for any other claims the enqueue set off
    # The winner's claim, and the one it passed the wake-up on to (there may have been more).
    assert claims[0] <= 3, claims
    assert all(not task.done() for task in pending)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def test_items_of_one_transaction_reach_every_waiter(store: StateStore) -> None:
    """Several items made claimable by one commit (one notification on PostgreSQL) each
    reach a waiter: a woken waiter that claimed passes the wake-up on."""
    eid = await execution(store)
    tasks = [await waiting(store, wait=10) for _ in range(5)]
    await store.run(lambda session: [store.queue.enqueue(session, item(eid)) for _ in range(5)])
    claimed = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert all(found is not None for found in claimed)
    assert len({found.id for found in claimed}) == 5


async def test_a_tenant_waiter_is_woken_beside_another_tenant_waiter(store: StateStore) -> None:
    """Waiters of two tenants on one queue type are woken apart: an item of tenant B wakes
    B's waiter even though A's waited longer (A's claim could not take it)."""
    for tenant in ("a", "b"):
        await store.create_tenant(Tenant(id=tenant, name=tenant))
    a, b = store.for_tenant("a"), store.for_tenant("b")
    first = await waiting(a, wait=10)
    second = await waiting(b, wait=10)
    eid = await execution(b)
    start = time.perf_counter()
    await b.enqueue_work_item(item(eid))
    found = await asyncio.wait_for(second, 5)
    assert found is not None and time.perf_counter() - start < LATENCY_BOUND_S
    assert not first.done()
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)


def fail_next_claim(store: StateStore, how: str) -> list[bool]:
    """The next claim ``store`` runs is cancelled (``how="cancel"``) or raises a
    ``StateStoreError`` (``how="error"``) before it reaches the database, as a claim lost to
    a cancellation or a failing connection would; the returned flag turns true when it
    happened. Later claims run as usual."""
    backend = store._backend
    fired = [False]
    write = backend.write

    async def failing(op: Any, scope: Any, **options: Any) -> Any:
        if getattr(op, "method", None) == store.queue.claim and not fired[0]:
            fired[0] = True
            if how == "cancel":
                task = asyncio.current_task()
                assert task is not None
                task.cancel()
                await asyncio.sleep(0)
            raise StateStoreError("the claim's connection failed")
        return await write(op, scope, **options)

    backend.write = failing  # type: ignore[method-assign]
    return fired


@pytest.mark.parametrize("how", ["cancel", "error"])
async def test_a_woken_waiter_whose_claim_fails_passes_the_wake_up_on(
    store: StateStore, how: str
) -> None:
    """The waiter woken for an item fails in its claim (cancelled, or the database call
    raised): another idle waiter gets the item promptly, not at its deadline."""
    eid = await execution(store)
    first = await waiting(store, wait=30)
    second = await waiting(store, wait=30)
    fired = fail_next_claim(store, how)
    start = time.perf_counter()
    await store.enqueue_work_item(item(eid))
    with pytest.raises(asyncio.CancelledError if how == "cancel" else StateStoreError):
        await asyncio.wait_for(first, 5)
    assert fired[0]
    claimed = await asyncio.wait_for(second, 10)
    assert claimed is not None
    assert time.perf_counter() - start < LATENCY_BOUND_S


async def test_a_delayed_item_outlives_the_waiter_that_timed_it(store: StateStore) -> None:
    """A delayed item's wake-up reaches one waiter, which times it; that waiter leaves
    before it is due (cancelled, or at its own shorter deadline): another waiter still
    claims it when due, not at its own deadline."""
    eid = await execution(store)
    delay = 0.8
    for leave in ("cancel", "deadline"):
        first = await waiting(store, wait=30 if leave == "cancel" else 0.5)
        second = await waiting(store, wait=30)
        start = time.perf_counter()
        await store.enqueue_work_item(item(eid, available_at=utc_now() + timedelta(seconds=delay)))
        if leave == "cancel":
            await asyncio.sleep(0.3)
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
        else:
            assert await asyncio.wait_for(first, 5) is None
        assert await asyncio.wait_for(second, 10) is not None, leave
        assert time.perf_counter() - start < delay + LATENCY_BOUND_S, leave


async def test_a_delayed_item_outlives_a_partial_claim_of_its_timer(store: StateStore) -> None:
    """The waiter timing a delayed item is woken by another item, claims it (fewer than
    its limit) and returns: the delayed item still reaches another waiter when due."""
    eid = await execution(store)
    delay = 1.0
    first = asyncio.create_task(store.claim_work_items("w", ["q"], 5, wait=30))
    await asyncio.sleep(0.2)
    second = asyncio.create_task(store.claim_work_items("w", ["q"], 5, wait=30))
    await asyncio.sleep(0.2)
    start = time.perf_counter()
    await store.enqueue_work_item(item(eid, available_at=utc_now() + timedelta(seconds=delay)))
    await asyncio.sleep(0.2)
    await store.enqueue_work_item(item(eid))
    assert len(await asyncio.wait_for(first, 5)) == 1
    assert len(await asyncio.wait_for(second, 10)) == 1
    assert time.perf_counter() - start < delay + LATENCY_BOUND_S


@pytest.mark.parametrize("seed", range(4))
async def test_every_item_reaches_an_idle_waiter_promptly(store: StateStore, seed: int) -> None:
    """Idle one-shot waiters (long deadlines, limits 1-3, queue-type sets that overlap, a
    tenant's waiters beside the operator's) and items enqueued in separate transactions
    (concurrently and one after another), in one transaction, or delayed a little: every
    item is claimed within a second of being claimable, so no wake-up was lost (a lost one
    leaves its item until a deadline of 30 s)."""
    import random

    rng = random.Random(seed)
    await store.create_tenant(Tenant(id="t", name="t"))
    tenant = store.for_tenant("t")
    eid = await execution(tenant)
    type_sets = [["a"], ["a", "b"], ["b"], ["b", "a"]]
    waiters: list[tuple[asyncio.Task[list[WorkItem]], int]] = []
    # Of each type no more items than the waiters of that type alone (a waiter may return
    # with one item whatever its limit), so every item must be claimed whichever waiter
    # takes which.
    capacity = {"a": 0, "b": 0}
    for _ in range(10):
        types = rng.choice(type_sets)
        limit = rng.randint(1, 3)
        on = rng.choice([store, tenant])
        if len(types) == 1:
            capacity[types[0]] += 1
        waiters.append(
            (asyncio.create_task(on.claim_work_items("w", types, limit, wait=30)), limit)
        )
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    items = [item(eid, kind) for kind in ("a", "b") for _ in range(capacity[kind])]
    rng.shuffle(items)
    ready: dict[uuid.UUID, float] = {}
    claimed_at: dict[uuid.UUID, float] = {}

    async def watch(task: asyncio.Task[list[WorkItem]]) -> None:
        for found in await task:
            claimed_at[found.id] = time.perf_counter()

    watchers = [asyncio.create_task(watch(task)) for task, _ in waiters]
    position = 0
    while position < len(items):
        pattern = rng.choice(["separate", "together", "one", "delayed"])
        batch = items[position : position + rng.randint(1, 4)]
        position += len(batch)
        if pattern == "separate":
            await asyncio.gather(*(tenant.enqueue_work_item(new) for new in batch))
        elif pattern == "together":
            await tenant.run(lambda session, b=batch: [tenant.queue.enqueue(session, n) for n in b])
        elif pattern == "one":
            for new in batch:
                await tenant.enqueue_work_item(new)
        else:
            due = utc_now() + timedelta(seconds=0.3)
            for new in batch:
                new.available_at = due
                await tenant.enqueue_work_item(new)
            for new in batch:
                ready[new.id] = time.perf_counter() + 0.3
            continue
        now = time.perf_counter()
        for new in batch:
            ready[new.id] = now
        await asyncio.sleep(rng.choice([0, 0.01, 0.05]))
    # Waiters left over wait on: give the items 3 s, then stop the rest.
    for _ in range(300):
        if len(claimed_at) == len(items):
            break
        await asyncio.sleep(0.01)
    for task, _ in waiters:
        task.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)
    late = [claimed_at.get(i, math.inf) - ready[i] for i in ready]
    assert all(delay < LATENCY_BOUND_S for delay in late), (seed, sorted(late)[-4:], len(late))


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_items_reach_waiters_across_a_dropped_listener(
    store: StateStore, database_url: str
) -> None:
    """The listener is terminated while woken waiters claim and items keep coming (before,
    during and after the reconnection): every item is claimed within a second."""
    eid = await execution(store)
    waker = store._backend.waker
    tasks = [await waiting(store, wait=30) for _ in range(9)]
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    admin = await asyncpg.connect(dsn)
    start = time.perf_counter()
    try:
        for round_ in range(3):
            await asyncio.gather(*(store.enqueue_work_item(item(eid)) for _ in range(2)))
            pid = waker.listener_pid
            if pid is not None:
                await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            await store.enqueue_work_item(item(eid))
            await asyncio.sleep(0.05 * round_)
    finally:
        await admin.close()
    claimed = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert all(found is not None for found in claimed)
    assert time.perf_counter() - start < 0.15 + LATENCY_BOUND_S


async def test_waiters_that_know_a_delayed_item_do_not_wake_each_other(store: StateStore) -> None:
    """Workers claiming in a loop with short waits, a delayed item far off: each knows when
    it comes due, so one leaving at its deadline wakes no other (two claims per call: the
    first, and the one at the deadline; a wake-up passed on would add a third)."""
    eid = await execution(store)
    await store.enqueue_work_item(item(eid, available_at=utc_now() + timedelta(hours=1)))
    claims = count_claims(store)
    calls = [0]

    async def worker(offset: float) -> None:
        await asyncio.sleep(offset)  # deadlines apart: a woken waiter is mid-wait
        while True:
            calls[0] += 1
            assert await store.claim_work_item("w", ["q"], wait=0.2) is None

    workers = [asyncio.create_task(worker(n * 0.05)) for n in range(4)]
    await asyncio.sleep(1.5)
    for task in workers:
        task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    finished = calls[0] - len(workers)
    assert finished >= 8
    assert claims[0] <= 2 * calls[0], (claims[0], calls[0])


async def test_closing_the_store_ends_its_waiting_claims(store: StateStore) -> None:
    """Claims waiting (long deadlines, the store's and a tenant view's) when the store
    closes end at once with ``DatabaseError``; none sleeps on to its deadline."""
    await store.create_tenant(Tenant(id="t", name="t"))
    tasks = [await waiting(view, wait=30) for view in (store, store.for_tenant("t")) * 2]
    start = time.perf_counter()
    await asyncio.wait_for(store.close(), 5)
    done, pending = await asyncio.wait(tasks, timeout=2)
    for task in pending:
        task.cancel()
    assert not pending, time.perf_counter() - start
    assert all(isinstance(task.exception(), DatabaseError) for task in done)
    assert not store._backend.waker._waiters


async def test_claims_cancelled_at_any_point_lose_no_wake_up(store: StateStore) -> None:
    """Workers whose waiting claims are cut off by tiny timeouts (so cancelled at every await
    of a claim: registering, claiming, reading the due time, waiting) beside two patient
    waiters: each item enqueued is taken (claimed by someone) within a second."""
    import random

    rng = random.Random(7)
    eid = await execution(store)
    stop = asyncio.Event()

    async def impatient() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    store.claim_work_item("impatient", ["q"], wait=30), rng.random() * 0.02
                )

    async def patient() -> None:
        while not stop.is_set():
            await store.claim_work_item("patient", ["q"], wait=30)

    workers = [asyncio.create_task(impatient()) for _ in range(6)]
    workers += [asyncio.create_task(patient()) for _ in range(2)]
    await asyncio.sleep(0.2)
    try:
        for _ in range(15):
            new = item(eid)
            await store.enqueue_work_item(new)
            start = time.perf_counter()
            while True:
                found = await store.get_work_item(new.id)
                assert found is not None
                if found.status != "pending":
                    break
                assert time.perf_counter() - start < LATENCY_BOUND_S, "an item nobody took"
                await asyncio.sleep(0.01)
            await asyncio.sleep(rng.random() * 0.05)
    finally:
        stop.set()
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


DOOMED_LOCK = 4242
"""The advisory lock a doomed claim's trigger waits for while it holds its rows."""


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
@pytest.mark.parametrize("caller", ["waits", "cancelled"])
@pytest.mark.parametrize("waiter_in", ["this store", "another store"])
async def test_a_failed_claim_wakes_the_waiter_that_skipped_its_rows(
    make_store: Any, pg_url: str, caller: str, waiter_in: str
) -> None:
    """A claim locks an item (PostgreSQL row lock), a waiting claim skips it (``SKIP
    LOCKED``) and goes to wait; the first claim then fails and rolls back. The waiter is
    woken and claims the item, not at its deadline (600 s). The failing claim's caller
    either waits for the error or was cancelled before it came. The waiter is in the same
    store, or in another one (as in another process: its own listener, woken only by a
    ``NOTIFY``). PostgreSQL only: SQLite's one writer runs claims one after another, so
    no claim ever skips another's rows.

    A trigger makes the claim deterministic: it blocks the claim's UPDATE, with the row
    locked, on an advisory lock the test holds, then raises once the test lets go."""
    admin = await asyncpg.connect(pg_url)
    waiter: asyncio.Task[Any] | None = None
    try:
        await admin.execute(
            "CREATE FUNCTION statestore_test_doomed() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN IF NEW.worker_id = 'doomed' THEN "
            f"PERFORM pg_advisory_xact_lock({DOOMED_LOCK}); RAISE EXCEPTION 'doomed claim'; "
            "END IF; RETURN NEW; END $$"
        )
        await admin.execute(
            "CREATE TRIGGER statestore_test_doomed BEFORE UPDATE ON work_items "
            "FOR EACH ROW EXECUTE FUNCTION statestore_test_doomed()"
        )
        await admin.execute(f"SELECT pg_advisory_lock({DOOMED_LOCK})")
        store: StateStore = await make_store()
        waiting_store = store if waiter_in == "this store" else await make_store()
        waker = waiting_store._backend.waker
        # The listener up first: its (re)connection signal must not be what wakes the waiter.
        assert await waiting_store.claim_work_item("warm", ["warm-up"], wait=0.01) is None
        for _ in range(1000):
            if waker.reliable:
                break
            await asyncio.sleep(0.01)
        assert waker.reliable
        eid = await execution(store)
        signals = waker.wakeups
        await store.enqueue_work_item(item(eid))
        for _ in range(1000):  # its notification is in: it cannot wake the waiter either
            if waker.wakeups > signals:
                break
            await asyncio.sleep(0.01)
        doomed = asyncio.create_task(store.claim_work_item("doomed", ["q"]))
        for _ in range(1000):  # until it holds the row and waits in its trigger
            if await admin.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"):
                break
            await asyncio.sleep(0.01)
        waiter = asyncio.create_task(waiting_store.claim_work_item("waiter", ["q"], wait=600))
        for _ in range(1000):  # until its claim skipped the row and it waits
            if any(w.wakes_at < math.inf for w in waker._waiters):
                break
            await asyncio.sleep(0.01)
        assert not waiter.done()
        if caller == "cancelled":
            doomed.cancel()
        await admin.execute(f"SELECT pg_advisory_unlock({DOOMED_LOCK})")
        failure = asyncio.CancelledError if caller == "cancelled" else StateStoreError
        with pytest.raises(failure):
            await doomed
        found = await asyncio.wait_for(waiter, 20)  # not 600 s
        assert found is not None and found.worker_id == "waiter" and found.attempt == 1
    finally:
        if waiter is not None and not waiter.done():
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
        await admin.execute("DROP TRIGGER IF EXISTS statestore_test_doomed ON work_items")
        await admin.execute("DROP FUNCTION IF EXISTS statestore_test_doomed()")
        await admin.close()
