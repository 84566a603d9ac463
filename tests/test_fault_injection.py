"""Fault injection: for every write operation, make its N-th SQL statement fail (N = 1, 2, …
until the operation runs out of statements) and check that the caller gets a
StateStoreError and the database is exactly as it was before the call."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from conftest import T0, Clock
from sqlalchemy import Engine, event, inspect, text

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
from statestore.db.runner import SqliteRunner


def write_engine(store: StateStore) -> Engine:
    runner = store._shared.runner
    if isinstance(runner, SqliteRunner):
        return runner.writer_engine
    return store.engine.sync_engine


class Fault:
    """Fails the N-th statement sent through an engine while armed."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.fail_at = 0
        self.seen = 0

    def __call__(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.seen += 1
        if self.seen == self.fail_at:
            raise conn.dialect.loaded_dbapi.OperationalError(
                f"injected fault at statement {self.seen}"
            )

    @contextmanager
    def at(self, n: int) -> Iterator[None]:
        self.fail_at, self.seen = n, 0
        event.listen(self.engine, "before_cursor_execute", self)
        try:
            yield
        finally:
            event.remove(self.engine, "before_cursor_execute", self)


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
}


@pytest.mark.parametrize("name", sorted(OPERATIONS))
async def test_a_failing_statement_leaves_the_database_as_it_was(
    make_store: Any, name: str
) -> None:
    clock = Clock()
    store: StateStore = await make_store(clock=clock)
    context = await prepare(store, clock)
    if name == "reclaim_expired_leases":
        clock.now = T0 + timedelta(seconds=31)  # the `old` lease has expired
    fault = Fault(write_engine(store))
    operation = OPERATIONS[name]
    injected = 0
    for n in range(1, 50):
        before = await dump(store)
        with fault.at(n):
            try:
                await operation(store, context)
            except StateStoreError as error:
                assert isinstance(error, DatabaseError), (name, n, error)
                assert "injected fault" in str(error.__cause__), (name, n)
                assert await dump(store) == before, f"{name}: statement {n} left a change"
                injected += 1
                continue
        assert fault.seen < n, (name, n)  # it succeeded only because no N-th statement came
        break
    else:
        pytest.fail(f"{name} never completed")
    assert injected >= 1, f"{name} sent no statement to inject a fault into"
    assert await dump(store) != before, f"{name} succeeded but changed nothing"
