"""Fault injection at the DBAPI level (see ``driver_faults.py``): for every write operation,
make its N-th driver call fail (N = 1, 2, … until the operation runs out of calls: BEGIN,
each statement, SAVEPOINTs, COMMIT) and check that the caller gets a StateStoreError and the
database is exactly as it was before the call. Then the same with the caller cancelled at
each of those points: the call may or may not commit, and never affects any other call.
Last, a failure inside a group of concurrent writes (one write's statement, or the
group's COMMIT on SQLite)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from conftest import T0, Clock
from driver_faults import DriverFaults
from sqlalchemy import Engine, inspect, text

from statestore import (
    DatabaseError,
    Event,
    Snapshot,
    StateStore,
    StateStoreError,
    Tenant,
    WorkflowDefinition,
    WorkflowExecution,
    WorkItem,
)
from statestore.db.sqlite_runner import SqliteRunner


def write_engine(store: StateStore) -> Engine:
    runner = store._shared.runner
    if isinstance(runner, SqliteRunner):
        return runner.writer.engine
    return store.engine.sync_engine


async def faulty_store(make_store: Any, clock: Clock) -> tuple[StateStore, DriverFaults]:
    """A store whose write connections all go through a :class:`DriverFaults` proxy
    (installed before the store opens its first connection)."""
    store: StateStore = await make_store(clock=clock)
    return store, DriverFaults(write_engine(store))


async def dump(store: StateStore) -> dict[str, list[tuple[Any, ...]]]:
    def read(session: Any) -> dict[str, list[tuple[Any, ...]]]:
        tables = sorted(inspect(session.connection()).get_table_names())
        return {
            table: sorted(
                (tuple(map(repr, row)) for row in session.execute(text(f"SELECT * FROM {table}"))),
            )
            for table in tables
        }

    result: dict[str, list[tuple[Any, ...]]] = await store.run(read, write=False)
    return result


Op = Callable[[StateStore, dict[str, Any]], Awaitable[Any]]


async def prepare(store: StateStore, clock: Clock) -> dict[str, Any]:
    """Objects for every operation to act on."""
    run = WorkflowExecution(workflow_id="wf", workflow_version="1", current_state={"k": []})
    await store.create_execution(run)
    eid = run.execution_id
    await store.store_workflow(WorkflowDefinition(workflow_id="wf", version="1", ir={"a": 1}))
    items = [WorkItem(execution_id=eid, node_id=f"n{n}", queue_type="q") for n in range(6)]
    for item in items:
        await store.enqueue_work_item(item)
    claimed = await store.claim_work_items("w", ["q"], 4)
    expired = WorkItem(execution_id=eid, node_id="expired", queue_type="old")
    await store.enqueue_work_item(expired)
    old = await store.claim_work_item("gone", ["old"])
    token, record = await store.create_token("t", "viewer")
    dead = WorkItem(execution_id=eid, node_id="dead", queue_type="dlq")
    await store.enqueue_work_item(dead)
    await store.move_to_dead_letter(dead.id, "x")
    clock.now = T0 + timedelta(seconds=20)  # leases of `claimed` still run; `old` expired below
    return {
        "eid": eid,
        "claimed": claimed,
        "old": old,
        "token": token,
        "record": record,
        "dead": dead.id,
    }


OPERATIONS: dict[str, Op] = {
    "create_tenant": lambda s, c: s.create_tenant(Tenant(id="t2", name="T2")),
    "update_tenant": lambda s, c: s.update_tenant(Tenant(id="default", name="Renamed")),
    "store_workflow": lambda s, c: s.store_workflow(
        WorkflowDefinition(workflow_id="wf", version="2", ir={"b": 2})
    ),
    "replace_workflow": lambda s, c: s.store_workflow(
        WorkflowDefinition(workflow_id="wf", version="1", ir={"c": 3}), replace=True
    ),
    "create_execution": lambda s, c: s.create_execution(
        WorkflowExecution(workflow_id="wf", workflow_version="1")
    ),
    "update_execution_status": lambda s, c: s.update_execution_status(c["eid"], "cancelled"),
    "update_execution_current_state": lambda s, c: s.update_execution_current_state(
        c["eid"], {"x": 1}
    ),
    "patch_append_array": lambda s, c: s.patch_append_array(c["eid"], "k", 1),
    "append_event": lambda s, c: s.append_event(Event(execution_id=c["eid"], kind={"type": "a"})),
    "append_events": lambda s, c: s.append_events(c["eid"], [{"type": "a"}, {"type": "b"}]),
    "write_snapshot": lambda s, c: s.write_snapshot(
        Snapshot(execution_id=c["eid"], at_sequence=1, state={"s": 1})
    ),
    "enqueue_work_item": lambda s, c: s.enqueue_work_item(
        WorkItem(execution_id=c["eid"], node_id="new", queue_type="q")
    ),
    "claim_work_item": lambda s, c: s.claim_work_item("w2", ["q"]),
    "claim_work_items": lambda s, c: s.claim_work_items("w2", ["q"], 2),
    "renew_lease": lambda s, c: s.renew_lease(c["claimed"][0].id, "w"),
    "complete_work_item": lambda s, c: s.complete_work_item(
        c["claimed"][0].id, worker_id="w", lease_fence=c["claimed"][0].lease_fence
    ),
    "complete_work_items": lambda s, c: s.complete_work_items(c["claimed"][1:3]),
    "fail_work_item": lambda s, c: s.fail_work_item(
        c["claimed"][3].id, "boom", retry_in=timedelta(seconds=1)
    ),
    "reclaim_expired_leases": lambda s, c: s.reclaim_expired_leases(),
    "move_to_dead_letter": lambda s, c: s.move_to_dead_letter(c["claimed"][0].id, "bad"),
    "requeue_dead_letter": lambda s, c: s.requeue_dead_letter(c["dead"]),
    "create_token": lambda s, c: s.create_token("new", "operator"),
    "validate_token": lambda s, c: s.validate_token(c["token"]),
    "revoke_token": lambda s, c: s.revoke_token(c["record"].id),
    "commit_turn": lambda s, c: s.commit_turn(
        c["claimed"][0].id,
        worker_id="w",
        lease_fence=c["claimed"][0].lease_fence,
        events=[{"type": "t1"}, {"type": "t2"}],
        state_patch={"k": [1], "new": {"x": 1}},
        enqueue=[WorkItem(execution_id=c["eid"], node_id="next", queue_type="q")],
        status="running",
        snapshot=True,
        effect_key="effect-1",
        effect={"v": 1},
    ),
    "commit_turn_fail": lambda s, c: s.commit_turn(
        c["claimed"][3].id,
        worker_id="w",
        lease_fence=c["claimed"][3].lease_fence,
        fail="boom",
        retry_in=timedelta(seconds=1),
        events=[{"type": "t"}],
    ),
    "start_execution": lambda s, c: start_with_work(s, "start-1"),
    "park_work_item": lambda s, c: s.park_work_item(
        c["claimed"][3].id,
        worker_id="w",
        lease_fence=c["claimed"][3].lease_fence,
        retry_in=timedelta(seconds=1),
    ),
}


async def start_with_work(store: StateStore, key: str) -> Any:
    run = WorkflowExecution(workflow_id="wf", workflow_version="1")
    return await store.start_execution(
        run,
        events=[{"type": "started"}, {"type": "scheduled"}],
        enqueue=[WorkItem(execution_id=run.execution_id, node_id="first", queue_type="q")],
        idempotency_key=key,
    )


@pytest.mark.parametrize("name", sorted(OPERATIONS))
async def test_a_failing_driver_call_leaves_the_database_as_it_was(
    make_store: Any, name: str
) -> None:
    clock = Clock()
    store, faults = await faulty_store(make_store, clock)
    context = await prepare(store, clock)
    if name == "reclaim_expired_leases":
        clock.now = T0 + timedelta(seconds=31)  # the `old` lease has expired
    operation = OPERATIONS[name]
    injected: list[str] = []
    for n in range(1, 60):
        before = await dump(store)
        with faults.armed(n):
            try:
                await operation(store, context)
            except StateStoreError as error:
                assert isinstance(error, DatabaseError), (name, n, error)
                assert "injected fault" in str(error.__cause__), (name, n)
                assert await dump(store) == before, f"{name}: driver call {n} left a change"
                injected.append(faults.calls[n - 1])
                continue
        assert faults.seen < n, (name, n)  # it succeeded only because no N-th call came
        break
    else:
        pytest.fail(f"{name} never completed")
    assert injected, f"{name} made no driver call to inject a fault into"
    if store.dialect == "sqlite" or name not in AUTOCOMMIT:
        assert "COMMIT" in injected, (name, injected)  # the commit itself was failed too
    assert await dump(store) != before, f"{name} succeeded but changed nothing"


# Single statements that run in autocommit on PostgreSQL (no BEGIN or COMMIT is sent).
AUTOCOMMIT = {
    "append_event",
    "enqueue_work_item",
    "claim_work_item",
    "claim_work_items",
    "renew_lease",
    "complete_work_item",
    "validate_token",
}


async def _sentinel_survives(store: StateStore, witness: StateStore) -> None:
    """An ordinary write after the fault returns in bounded time and is visible from
    another store: nothing the faulted call left behind affects it."""
    run = WorkflowExecution(workflow_id="wf", workflow_version="1")
    await asyncio.wait_for(store.create_execution(run), 10)
    assert await witness.get_execution(run.execution_id) is not None


@pytest.mark.parametrize("name", sorted(OPERATIONS))
async def test_cancelling_at_each_driver_call_never_affects_other_calls(
    make_store: Any, name: str
) -> None:
    clock = Clock()
    store, faults = await faulty_store(make_store, clock)
    witness: StateStore = await make_store()
    context = await prepare(store, clock)
    if name == "reclaim_expired_leases":
        clock.now = T0 + timedelta(seconds=31)
    operation = OPERATIONS[name]
    loop = asyncio.get_running_loop()
    for n in range(1, 60):
        task = asyncio.ensure_future(operation(store, context))

        def cancel(_what: str, task: asyncio.Future[Any] = task) -> None:
            # Called on a runner thread (SQLite) or inside the greenlet (PostgreSQL).
            loop.call_soon_threadsafe(task.cancel)

        with faults.armed(n, cancel):
            try:
                await task
            except asyncio.CancelledError:
                pass
            except StateStoreError:
                pass  # e.g. a conflict: an earlier cancelled round committed
            reached = faults.seen >= n
        await _sentinel_survives(store, witness)
        if not reached:
            break
    else:
        pytest.fail(f"{name} never completed")


@pytest.mark.parametrize("n", range(1, 40))
async def test_a_fault_inside_a_group_of_concurrent_writes(make_store: Any, n: int) -> None:
    """Eight writes at once (on SQLite they share one group-commit transaction, each in its
    own SAVEPOINT): fail the N-th driver call. Every write that returned is committed and
    visible from another store; every write that failed left nothing."""
    clock = Clock()
    store, faults = await faulty_store(make_store, clock)
    witness: StateStore = await make_store()
    await store.create_execution(WorkflowExecution(workflow_id="wf", workflow_version="1"))
    runs = [WorkflowExecution(workflow_id="wf", workflow_version="1") for _ in range(8)]
    with faults.armed(n):
        results = await asyncio.gather(
            *(store.create_execution(run) for run in runs), return_exceptions=True
        )
    failed = [r for r in results if r is not None]
    assert all(isinstance(r, DatabaseError) for r in failed), failed
    for run, result in zip(runs, results, strict=True):
        visible = await witness.get_execution(run.execution_id) is not None
        assert visible == (result is None), (n, faults.calls, result)
    if faults.seen >= n:
        assert failed, f"driver call {n} ({faults.calls[n - 1]}) failed but nobody was told"
    await _sentinel_survives(store, witness)


@pytest.mark.parametrize("backend", ["sqlite"])  # group commit is the SQLite runner's
async def test_writes_do_share_a_group_commit_on_sqlite(make_store: Any) -> None:
    """The group test above exercises group commit only if writes really are grouped."""
    store: StateStore = await make_store()
    runner = store._shared.runner
    assert isinstance(runner, SqliteRunner)
    await store.create_execution(WorkflowExecution(workflow_id="wf", workflow_version="1"))
    before = (runner.writer.transactions, runner.writer.operations)
    await asyncio.gather(
        *(
            store.create_execution(WorkflowExecution(workflow_id="wf", workflow_version="1"))
            for _ in range(8)
        )
    )
    transactions = runner.writer.transactions - before[0]
    assert runner.writer.operations - before[1] == 8
    assert transactions < 8, "no two writes shared a transaction"
