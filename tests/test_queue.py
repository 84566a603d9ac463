"""The work queue: order, leases, fences, reclaim, dead letters — on both databases."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import T0, Clock
from sqlalchemy import event, insert

from statestore import (
    InvalidTransitionError,
    LeaseLostError,
    NotFoundError,
    StateStore,
    StateStoreError,
    ValidationError,
    WorkflowExecution,
    WorkItem,
    WorkItemStatus,
)
from statestore.db.schema import WorkItemRow

# Also on sqlite:///:memory: and through PgBouncer (conftest).
pytestmark = [pytest.mark.memory, pytest.mark.pgbouncer]

WORKER = Path(__file__).with_name("queue_worker.py")


@pytest.fixture
async def qstore(make_store: Any, clock: Clock) -> StateStore:
    store: StateStore = await make_store(clock=clock)
    return store


async def execution(store: StateStore) -> uuid.UUID:
    run = WorkflowExecution(workflow_id="wf", workflow_version="1")
    await store.create_execution(run)
    return run.execution_id


async def enqueue(store: StateStore, eid: uuid.UUID, **fields: Any) -> WorkItem:
    item = WorkItem(execution_id=eid, node_id=fields.pop("node_id", "n"), queue_type="q", **fields)
    assert await store.enqueue_work_item(item) == item.id
    return item


async def test_claim_order_is_priority_then_age(qstore: StateStore, clock: Clock) -> None:
    eid = await execution(qstore)
    for name, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1)]:
        await enqueue(qstore, eid, node_id=name, priority=priority)
        clock.advance(seconds=1)
    claimed = []
    while (item := await qstore.claim_work_item("w", ["q"])) is not None:
        claimed.append(item.node_id)
    assert claimed == ["b", "d", "a", "c", "e"]


async def test_claim_sets_the_lease(qstore: StateStore, clock: Clock) -> None:
    eid = await execution(qstore)
    item = await enqueue(qstore, eid, payload={"x": 1})
    claimed = await qstore.claim_work_item("w1", ["other", "q"])
    assert claimed is not None and claimed.id == item.id
    assert claimed.status is WorkItemStatus.CLAIMED
    assert claimed.worker_id == "w1"
    assert claimed.attempt == 1 and claimed.lease_fence == 1
    assert claimed.lease_expires_at == T0 + timedelta(seconds=30)
    assert claimed.payload == {"x": 1}
    assert await qstore.claim_work_item("w2", ["q"]) is None
    assert await qstore.get_work_item(item.id) == claimed


async def test_delayed_items_are_invisible_until_due(qstore: StateStore, clock: Clock) -> None:
    eid = await execution(qstore)
    await enqueue(qstore, eid, available_at=T0 + timedelta(minutes=5))
    assert await qstore.claim_work_item("w", ["q"]) is None
    clock.advance(minutes=5)
    assert await qstore.claim_work_item("w", ["q"]) is not None


async def test_claim_work_items_takes_at_most_limit_in_order(
    qstore: StateStore, clock: Clock
) -> None:
    eid = await execution(qstore)
    for n in range(7):
        await enqueue(qstore, eid, node_id=f"n{n}", priority=n % 3)
        clock.advance(seconds=1)
    first = await qstore.claim_work_items("w", ["q"], 4)
    assert [i.node_id for i in first] == ["n2", "n5", "n1", "n4"]
    rest = await qstore.claim_work_items("w", ["q"], 100)
    assert [i.node_id for i in rest] == ["n0", "n3", "n6"]
    assert await qstore.claim_work_items("w", ["q"], 10) == []


async def test_queue_types_filter_and_validation(qstore: StateStore) -> None:
    eid = await execution(qstore)
    await enqueue(qstore, eid)
    assert await qstore.claim_work_item("w", ["elsewhere"]) is None
    for bad in ([], "q", [""], ["x" * 256], None):
        with pytest.raises(ValidationError):
            await qstore.claim_work_item("w", bad)  # type: ignore[arg-type]
    for limit in (0, 1001, "3"):
        with pytest.raises(ValidationError):
            await qstore.claim_work_items("w", ["q"], limit)  # type: ignore[arg-type]
    assert (await qstore.queue_stats())["q"][WorkItemStatus.PENDING] == 1


async def test_enqueue_errors(qstore: StateStore) -> None:
    eid = await execution(qstore)
    item = await enqueue(qstore, eid)
    with pytest.raises(StateStoreError) as dup:
        await qstore.enqueue_work_item(item)
    assert type(dup.value).__name__ == "ConflictError"
    with pytest.raises(NotFoundError):
        await enqueue(qstore, uuid.uuid4())
    for bad in (
        {"payload": {"x": float("nan")}},
        {"max_attempts": 0},
        {"priority": 2**40},
        {"node_id": "a\x00b"},
    ):
        with pytest.raises(ValidationError):
            await enqueue(qstore, eid, **bad)
    await qstore.update_execution_status(eid, "cancelled")
    with pytest.raises(InvalidTransitionError):
        await enqueue(qstore, eid)
    assert len(await qstore.list_work_items(eid)) == 1


async def test_renew_only_by_the_holder_of_an_unexpired_lease(
    qstore: StateStore, clock: Clock
) -> None:
    eid = await execution(qstore)
    await enqueue(qstore, eid)
    item = await qstore.claim_work_item("w1", ["q"])
    assert item is not None
    clock.advance(seconds=20)
    assert await qstore.renew_lease(item.id, "w1") == T0 + timedelta(seconds=50)
    assert await qstore.renew_lease(item.id, "w1", lease_fence=item.lease_fence) == (
        T0 + timedelta(seconds=50)
    )
    with pytest.raises(LeaseLostError):
        await qstore.renew_lease(item.id, "w2")
    with pytest.raises(LeaseLostError):
        await qstore.renew_lease(item.id, "w1", lease_fence=item.lease_fence + 1)
    clock.advance(seconds=31)  # expired, not reclaimed yet: no resurrection (W-6)
    with pytest.raises(LeaseLostError):
        await qstore.renew_lease(item.id, "w1")
    with pytest.raises(NotFoundError):
        await qstore.renew_lease(uuid.uuid4(), "w1")
    stored = await qstore.get_work_item(item.id)
    assert stored is not None and stored.lease_expires_at == T0 + timedelta(seconds=50)


async def test_complete_is_guarded_and_idempotent(qstore: StateStore) -> None:
    eid = await execution(qstore)
    pending = await enqueue(qstore, eid, node_id="pending")
    await enqueue(qstore, eid, node_id="later", priority=-1)
    item = await qstore.claim_work_item("w1", ["q"])
    assert item is not None and item.id == pending.id
    with pytest.raises(LeaseLostError):
        await qstore.complete_work_item(item.id, worker_id="w2")
    with pytest.raises(LeaseLostError):
        await qstore.complete_work_item(item.id, worker_id="w1", lease_fence=99)
    await qstore.complete_work_item(item.id, worker_id="w1", lease_fence=item.lease_fence)
    await qstore.complete_work_item(item.id, worker_id="w1", lease_fence=item.lease_fence)
    await qstore.complete_work_item(item.id)
    done = await qstore.get_work_item(item.id)
    assert done is not None and done.status is WorkItemStatus.COMPLETED
    assert done.lease_expires_at is None
    with pytest.raises(NotFoundError):
        await qstore.complete_work_item(uuid.uuid4())
    later = next(i for i in await qstore.list_work_items(eid) if i.node_id == "later")
    with pytest.raises(LeaseLostError):  # pending: not claimed
        await qstore.complete_work_item(later.id)


async def test_complete_work_items_settles_each_by_its_own_lease(qstore: StateStore) -> None:
    eid = await execution(qstore)
    for n in range(3):
        await enqueue(qstore, eid, node_id=f"n{n}")
    items = await qstore.claim_work_items("w", ["q"], 3)
    stale = items[1].model_copy(update={"lease_fence": items[1].lease_fence + 7})
    assert await qstore.complete_work_items([items[0], stale, items[2]]) == [True, False, True]
    assert await qstore.complete_work_items([items[0]]) == [True]  # already, same lease
    statuses = [i.status for i in await qstore.list_work_items(eid)]
    assert sorted(statuses) == ["claimed", "completed", "completed"]


async def test_complete_work_items_in_one_batch_with_repeats_and_other_holders(
    qstore: StateStore,
) -> None:
    """The batch completes in one statement; a repeated item, an item given as a dict, an
    item held by another worker and one without a worker id are each settled like
    complete_work_item would."""
    eid = await execution(qstore)
    for n in range(5):
        await enqueue(qstore, eid, node_id=f"n{n}")
    mine = await qstore.claim_work_items("w", ["q"], 3)
    theirs = await qstore.claim_work_items("v", ["q"], 2)
    posing = theirs[0].model_copy(update={"worker_id": "w"})
    unguarded = theirs[1].model_copy(update={"worker_id": None})
    batch = [mine[0], mine[0], mine[1].model_dump(), posing, mine[2], unguarded]
    assert await qstore.complete_work_items(batch) == [True, True, True, False, True, True]
    by_id = {i.id: i for i in await qstore.list_work_items(eid)}
    assert [by_id[i.id].status for i in mine] == ["completed"] * 3
    assert by_id[theirs[0].id].status == "claimed"
    assert by_id[theirs[1].id].status == "completed"


async def test_fail_records_the_error_and_retries_with_the_same_accounting(
    qstore: StateStore, clock: Clock
) -> None:
    eid = await execution(qstore)
    item = await enqueue(qstore, eid, max_attempts=2)
    claimed = await qstore.claim_work_item("w", ["q"])
    assert claimed is not None
    status = await qstore.fail_work_item(
        item.id,
        "boom",
        retry_in=timedelta(seconds=10),
        worker_id="w",
        lease_fence=claimed.lease_fence,
    )
    assert status is WorkItemStatus.PENDING
    assert await qstore.claim_work_item("w", ["q"]) is None  # not yet due
    clock.advance(seconds=10)
    again = await qstore.claim_work_item("w", ["q"])
    assert again is not None and again.attempt == 2 and again.last_error == "boom"
    assert again.lease_fence > claimed.lease_fence
    with pytest.raises(LeaseLostError):  # the first lease is stale
        await qstore.fail_work_item(item.id, "x", worker_id="w", lease_fence=claimed.lease_fence)
    status = await qstore.fail_work_item(item.id, "boom again", retry_in=timedelta(0))
    assert status is WorkItemStatus.DEAD_LETTERED  # attempts used up
    (letter,) = await qstore.list_dead_letters()
    assert letter.item.id == item.id and letter.last_error == "boom again"


async def test_fail_without_retry_is_failed(qstore: StateStore) -> None:
    eid = await execution(qstore)
    item = await enqueue(qstore, eid)
    await qstore.claim_work_item("w", ["q"])
    assert await qstore.fail_work_item(item.id, "bad input") is WorkItemStatus.FAILED
    stored = await qstore.get_work_item(item.id)
    assert stored is not None and stored.last_error == "bad input"
    with pytest.raises(LeaseLostError):
        await qstore.fail_work_item(item.id, "again")


async def test_zombie_worker_loses_everything_after_reclaim(
    qstore: StateStore, clock: Clock
) -> None:
    eid = await execution(qstore)
    item = await enqueue(qstore, eid)
    zombie = await qstore.claim_work_item("A", ["q"])
    assert zombie is not None
    clock.advance(seconds=31)
    assert await qstore.claim_work_item("B", ["q"]) is None  # claim never resets leases (W-1)
    result = await qstore.reclaim_expired_leases()
    assert [i.id for i in result.retryable] == [item.id] and result.exhausted == []
    assert result.retryable[0].last_error == "lease expired"
    clock.advance(seconds=2)  # backoff 2 ** 1
    fresh = await qstore.claim_work_item("B", ["q"])
    assert fresh is not None and fresh.attempt == 2 and fresh.lease_fence > zombie.lease_fence
    for action in (
        qstore.renew_lease(item.id, "A", lease_fence=zombie.lease_fence),
        qstore.complete_work_item(item.id, worker_id="A", lease_fence=zombie.lease_fence),
        qstore.fail_work_item(item.id, "late", worker_id="A", lease_fence=zombie.lease_fence),
    ):
        with pytest.raises(LeaseLostError):
            await action
    assert await qstore.get_work_item(item.id) == fresh


async def test_poison_item_reaches_the_dead_letter_queue_and_requeue_resets_it(
    qstore: StateStore, clock: Clock
) -> None:
    eid = await execution(qstore)
    item = await enqueue(qstore, eid, max_attempts=3)
    claims = 0
    fences = []
    for _ in range(10):
        claimed = await qstore.claim_work_item("dies", ["q"])
        if claimed is None:
            break
        claims += 1
        fences.append(claimed.lease_fence)
        clock.advance(seconds=31)  # the worker died: its lease runs out
        result = await qstore.reclaim_expired_leases()
        clock.advance(seconds=64)
    assert claims == 3
    assert [i.id for i in result.exhausted] == [item.id]
    (letter,) = await qstore.list_dead_letters()
    assert letter.last_error == "lease expired" and letter.item.attempt == 3
    assert letter.dead_lettered_at == T0 + timedelta(seconds=3 * 31 + 2 * 64)
    assert await qstore.claim_work_item("w", ["q"]) is None

    await qstore.requeue_dead_letter(item.id)
    again = await qstore.claim_work_item("w", ["q"])
    assert again is not None and again.attempt == 1 and again.lease_fence > max(fences)
    assert await qstore.list_dead_letters() == []
    with pytest.raises(InvalidTransitionError):
        await qstore.requeue_dead_letter(item.id)  # not dead-lettered


async def test_move_to_dead_letter_and_stats(qstore: StateStore, clock: Clock) -> None:
    eid = await execution(qstore)
    a = await enqueue(qstore, eid, node_id="a")
    clock.advance(seconds=1)
    b = await enqueue(qstore, eid, node_id="b")
    await qstore.move_to_dead_letter(a.id, "operator says no")
    clock.advance(seconds=1)
    await qstore.move_to_dead_letter(b.id, "also no")
    letters = await qstore.list_dead_letters()
    assert [d.item.id for d in letters] == [b.id, a.id]  # newest first
    assert [d.item.id for d in await qstore.list_dead_letters(limit=1, offset=1)] == [a.id]
    with pytest.raises(NotFoundError):
        await qstore.move_to_dead_letter(uuid.uuid4(), "x")
    stats = await qstore.queue_stats()
    assert stats == {
        "q": {s: (2 if s is WorkItemStatus.DEAD_LETTERED else 0) for s in WorkItemStatus}
    }


async def test_terminal_execution_settles_its_open_items(qstore: StateStore) -> None:
    eid = await execution(qstore)
    await enqueue(qstore, eid, node_id="pending")
    await enqueue(qstore, eid, node_id="claimed", priority=1)
    claimed = await qstore.claim_work_item("w", ["q"])
    assert claimed is not None and claimed.node_id == "claimed"
    await qstore.update_execution_status(eid, "failed")
    items = await qstore.list_work_items(eid)
    assert {i.status for i in items} == {WorkItemStatus.FAILED}
    assert {i.last_error for i in items} == {"execution failed"}
    assert await qstore.claim_work_item("w", ["q"]) is None
    with pytest.raises(LeaseLostError):
        await qstore.complete_work_item(claimed.id, worker_id="w", lease_fence=claimed.lease_fence)


async def test_run_reclaimer_reclaims_periodically_and_stops_on_cancel(
    qstore: StateStore, clock: Clock
) -> None:
    eid = await execution(qstore)
    item = await enqueue(qstore, eid)
    await qstore.claim_work_item("w", ["q"])
    clock.advance(seconds=31)
    task = asyncio.create_task(qstore.run_reclaimer(every=0.05))
    for _ in range(100):
        stored = await qstore.get_work_item(item.id)
        if stored is not None and stored.status is WorkItemStatus.PENDING:
            break
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stored is not None and stored.status is WorkItemStatus.PENDING
    with pytest.raises(ValidationError):
        await qstore.run_reclaimer(every=0)


async def test_claim_uses_the_partial_index(qstore: StateStore) -> None:
    """EXPLAIN the claim statement the store really sends, on a freshly filled table that
    was never analysed: the plan must be the ordered scan of the partial claim index."""
    sqlite = qstore.dialect == "sqlite"  # the file or the in-memory database
    eid = await execution(qstore)
    now = T0
    rows = [
        {
            "id": uuid.uuid4(),
            "tenant_id": "default",
            "execution_id": eid,
            "node_id": "n",
            "queue_type": f"q{n % 3}",
            "payload": {},
            "priority": 0,
            "attempt": 0,
            "max_attempts": 3,
            "available_at": now,
            "lease_fence": 0,
            "created_at": now,
            "updated_at": now,
            "status": "pending" if n % 10 == 0 else "completed",
        }
        for n in range(5000)
    ]
    await qstore.run(lambda s: s.execute(insert(WorkItemRow), rows))

    def explain_claim(session: Any) -> list[str]:
        captured: list[tuple[str, Any]] = []
        connection = session.connection()

        def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
            captured.append((statement, params))

        event.listen(connection, "before_cursor_execute", capture)
        try:
            qstore.queue.claim(session, "w", ["q1"], 10)
        finally:
            event.remove(connection, "before_cursor_execute", capture)
        statement, params = next((st, p) for st, p in captured if "eligible" in st)
        prefix = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN "
        cursor = connection.connection.driver_connection
        if sqlite:
            plan = cursor.execute(prefix + statement, params).fetchall()
            return [" ".join(map(str, row)) for row in plan]
        result = connection.exec_driver_sql(prefix + statement, params)
        return [str(row[0]) for row in result]

    plan = await qstore.run(explain_claim, write=False)
    assert any("ix_work_items_claim" in line for line in plan), plan
    assert "'pending'" in " ".join(plan) or sqlite


async def run_procs(*argv_sets: list[str], together: bool = False) -> list[Any]:
    """Run queue_worker.py processes; ``together``: they start claiming only once every
    one of them is connected (each says "ready", then all are told to go)."""
    env = {**os.environ, "QUEUE_WORKER_BARRIER": "1"} if together else None
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        for argv in argv_sets
    ]
    if together:
        for proc in procs:
            assert proc.stdout is not None
            ready = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
            assert ready.strip() == b"ready", ready
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
    results = []
    for proc in procs:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=180)
        assert proc.returncode == 0, err.decode()[-3000:]
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    return results


@pytest.mark.no_memory("worker processes open the database by its URL")
async def test_exactly_once_across_processes(
    store: StateStore, database_url: str, backend: str
) -> None:
    eid = await execution(store)
    items = [WorkItem(execution_id=eid, node_id=f"n{n}", queue_type="q") for n in range(300)]
    for item in items:
        await store.enqueue_work_item(item)
    # SQLite: 4 worker processes; PostgreSQL: 8 connections across 2 processes.
    layout = [("1")] * 4 if backend == "sqlite" else [("4")] * 2
    results = await run_procs(
        *[[database_url, "work", f"p{n}", tasks] for n, tasks in enumerate(layout)],
        together=True,
    )
    completions = [entry for result in results for entry in result]
    completed_ids = [item_id for item_id, _ in completions]
    assert len(completed_ids) == 300  # every completion acknowledged exactly once…
    assert set(completed_ids) == {str(i.id) for i in items}  # …and none twice
    assert len({worker for _, worker in completions}) > 1
    stats = await store.queue_stats()
    assert stats["q"][WorkItemStatus.COMPLETED] == 300
    stored = await store.list_work_items(eid)
    assert {i.attempt for i in stored} == {1}  # no item was ever claimed twice


async def expired_claims(store: StateStore, clock: Clock, count: int) -> list[WorkItem]:
    eid = await execution(store)
    for n in range(count):
        await enqueue(store, eid, node_id=f"n{n}")
    claimed = await store.claim_work_items("holder", ["q"], count)
    assert len(claimed) == count
    return claimed


@pytest.mark.no_memory("worker processes open the database by its URL")
async def test_two_reclaimers_at_once_report_each_item_once(
    qstore: StateStore, clock: Clock, database_url: str
) -> None:
    claimed = await expired_claims(qstore, clock, 200)
    later = (T0 + timedelta(seconds=31)).isoformat()
    results = await run_procs(
        [database_url, "reclaim", "r1", "1", later], [database_url, "reclaim", "r2", "1", later]
    )
    reported = results[0] + results[1]
    assert sorted(reported) == sorted(str(i.id) for i in claimed)  # none lost, none twice
    stored = await qstore.list_work_items(claimed[0].execution_id)
    assert {i.status for i in stored} == {WorkItemStatus.PENDING}
    assert {i.attempt for i in stored} == {1}


@pytest.mark.no_memory("worker processes open the database by its URL")
async def test_reclaim_racing_renew_never_loses_or_double_counts(
    qstore: StateStore, clock: Clock, database_url: str
) -> None:
    claimed = await expired_claims(qstore, clock, 150)
    ids = json.dumps([str(i.id) for i in claimed])
    just_before = (T0 + timedelta(seconds=29)).isoformat()
    just_after = (T0 + timedelta(seconds=30)).isoformat()
    renewed, reclaimed = await run_procs(
        [database_url, "renew", "holder", "1", just_before, ids],
        [database_url, "reclaim", "r", "1", just_after],
    )
    assert not set(renewed) & set(reclaimed)  # an item is renewed or reclaimed, never both
    assert set(renewed) | set(reclaimed) == {str(i.id) for i in claimed}
    for item in await qstore.list_work_items(claimed[0].execution_id):
        if str(item.id) in renewed:
            assert item.status is WorkItemStatus.CLAIMED
            assert item.lease_expires_at == T0 + timedelta(seconds=59)
        else:
            assert item.status is WorkItemStatus.PENDING and item.attempt == 1


async def test_bad_input_on_queue_methods_writes_nothing(qstore: StateStore) -> None:
    eid = await execution(qstore)
    item = await enqueue(qstore, eid)
    before = await qstore.list_work_items(eid)
    calls = [
        qstore.renew_lease("not-a-uuid", "w"),
        qstore.renew_lease(item.id, ""),
        qstore.renew_lease(item.id, "w", lease_fence=-1),
        qstore.complete_work_item(item.id, worker_id="w" * 256),
        qstore.fail_work_item(item.id, "x\x00"),
        qstore.fail_work_item(item.id, "x", retry_in=timedelta(seconds=-1)),
        qstore.fail_work_item(item.id, 42),  # type: ignore[arg-type]
        qstore.move_to_dead_letter(item.id, None),  # type: ignore[arg-type]
        qstore.list_dead_letters(limit=0),
        qstore.list_dead_letters(offset=-1),
        qstore.requeue_dead_letter(12),  # type: ignore[arg-type]
        qstore.complete_work_items("nope"),  # type: ignore[arg-type]
        qstore.get_work_item("zzz"),
        qstore.list_work_items("zzz"),
    ]
    for call in calls:
        with pytest.raises(ValidationError):
            await call
    assert await qstore.list_work_items(eid) == before


async def test_complete_work_items_tells_a_stale_copy_from_the_current_lease(
    qstore: StateStore, clock: Clock
) -> None:
    """The same item twice in one batch, once with a lease it lost and once with the lease
    that now holds it: only the current one completes it."""
    eid = await execution(qstore)
    await enqueue(qstore, eid)
    stale = await qstore.claim_work_item("w1", ["q"])
    assert stale is not None
    clock.advance(hours=1)
    await qstore.reclaim_expired_leases()
    clock.advance(hours=1)
    fresh = await qstore.claim_work_item("w2", ["q"])
    assert fresh is not None and fresh.id == stale.id
    assert await qstore.complete_work_items([stale, fresh]) == [False, True]
    assert await qstore.complete_work_items([fresh, stale]) == [True, False]
