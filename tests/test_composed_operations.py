"""Repository operations composed in one ``store.run`` transaction (docs/api.md, "Advanced:
your own operation"): each operation sees the writes made before it in the same
transaction, none is undone by a later one, and none leaves ORM objects in the session
(design decision 12) — on both databases."""

from __future__ import annotations

import inspect
import re
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import T0, Clock
from sqlalchemy import insert, select, text, update
from sqlalchemy.orm import Session

from statestore import (
    StateStore,
    Tenant,
    TenantError,
    TenantStatus,
    TokenRole,
    WorkflowDefinition,
    WorkflowExecution,
    WorkflowStatus,
    WorkItem,
    WorkItemStatus,
)
from statestore.db.schema import ExecutionRow, WorkflowDefinitionRow
from statestore.repositories.base import NO_SESSION_SYNC


@pytest.fixture
async def cstore(make_store: Any, clock: Clock) -> StateStore:
    store: StateStore = await make_store(clock=clock)
    return store


async def new_execution(store: StateStore, **fields: Any) -> uuid.UUID:
    run = WorkflowExecution(workflow_id="wf", workflow_version="1", **fields)
    await store.create_execution(run)
    return run.execution_id


def clean(session: Session) -> bool:
    """No ORM objects left behind: nothing pending a flush, nothing cached to go stale."""
    return not (session.identity_map or session.new or session.dirty or session.deleted)


# ---------------------------------------------------------------- executions


async def test_update_state_after_a_patch_wins(cstore: StateStore) -> None:
    eid = await new_execution(cstore)
    ex = cstore.executions

    def op(session: Session) -> Any:
        ex.patch_append_array(session, eid, "done", "x")
        ex.update_current_state(session, eid, {"done": ["y"]})
        return ex.get(session, eid)

    inside = await cstore.run(op)
    assert inside is not None and inside.current_state == {"done": ["y"]}
    after = await cstore.get_execution(eid)
    assert after is not None and after.current_state == {"done": ["y"]}


async def test_get_after_a_patch_sees_it(cstore: StateStore) -> None:
    eid = await new_execution(cstore)
    ex = cstore.executions

    def op(session: Session) -> Any:
        ex.patch_append_array(session, eid, "log", 1)
        ex.patch_append_array(session, eid, "log", 2)
        return ex.get(session, eid), ex.list(session, None, 10, 0, None)

    got, listed = await cstore.run(op)
    assert got.current_state == {"log": [1, 2]}
    assert [e.current_state for e in listed] == [{"log": [1, 2]}]
    after = await cstore.get_execution(eid)
    assert after is not None and after.current_state == {"log": [1, 2]}


async def test_patch_after_a_state_update_builds_on_it(cstore: StateStore) -> None:
    eid = await new_execution(cstore)
    ex = cstore.executions

    def op(session: Session) -> Any:
        ex.patch_append_array(session, eid, "log", 1)  # loads the row
        ex.update_current_state(session, eid, {"log": ["a"]})
        ex.patch_append_array(session, eid, "log", "b")
        return ex.get(session, eid)

    assert (await cstore.run(op)).current_state == {"log": ["a", "b"]}
    after = await cstore.get_execution(eid)
    assert after is not None and after.current_state == {"log": ["a", "b"]}


async def test_get_after_a_status_update_sees_it(cstore: StateStore) -> None:
    eid = await new_execution(cstore)
    ex = cstore.executions

    def op(session: Session) -> Any:
        ex.update_status(session, eid, WorkflowStatus.RUNNING, None)
        running = ex.get(session, eid)
        ex.update_status(session, eid, WorkflowStatus.COMPLETED, WorkflowStatus.RUNNING)
        return running, ex.list(session, WorkflowStatus.COMPLETED, 10, 0, None)

    running, completed = await cstore.run(op)
    assert running.status is WorkflowStatus.RUNNING
    assert [e.execution_id for e in completed] == [eid]
    after = await cstore.get_execution(eid)
    assert after is not None and after.status is WorkflowStatus.COMPLETED


async def test_status_then_state_then_status_all_kept(cstore: StateStore) -> None:
    eid = await new_execution(cstore)
    ex = cstore.executions

    def op(session: Session) -> None:
        ex.update_status(session, eid, WorkflowStatus.RUNNING, None)
        ex.update_current_state(session, eid, {"step": 2})
        ex.update_status(session, eid, WorkflowStatus.PAUSED, WorkflowStatus.RUNNING)

    await cstore.run(op)
    after = await cstore.get_execution(eid)
    assert after is not None
    assert (after.status, after.current_state) == (WorkflowStatus.PAUSED, {"step": 2})


# ---------------------------------------------------------------- queue


async def test_queue_settling_is_seen_by_later_reads(cstore: StateStore) -> None:
    eid = await new_execution(cstore)
    q = cstore.queue
    items = [  # claimed in this order
        WorkItem(execution_id=eid, node_id=f"n{i}", queue_type="q", priority=-i) for i in range(3)
    ]

    def op(session: Session) -> Any:
        for item in items:
            q.enqueue(session, item)
        first, second, third = q.claim(session, "w", ["q"], 3)
        assert q.get(session, first.id).status is WorkItemStatus.CLAIMED  # cache it
        q.complete(session, first.id, "w", first.lease_fence)
        q.complete(session, first.id, "w", first.lease_fence)  # a repeat: no-op
        q.fail(session, second.id, "boom", None, "w", second.lease_fence)
        q.move_to_dead_letter(session, third.id, "poison")
        return [q.get(session, item.id) for item in items], q.list_dead_letters(session, 10, 0)

    got, letters = await cstore.run(op)
    assert [i.status for i in got] == [
        WorkItemStatus.COMPLETED,
        WorkItemStatus.FAILED,
        WorkItemStatus.DEAD_LETTERED,
    ]
    assert [letter.item.id for letter in letters] == [items[2].id]
    stored = {i.id: i.status for i in await cstore.list_work_items(eid)}
    assert stored == {i.id: i.status for i in got}


async def test_requeue_then_claim_in_one_transaction(cstore: StateStore) -> None:
    eid = await new_execution(cstore)
    q = cstore.queue
    item = WorkItem(execution_id=eid, node_id="n", queue_type="q")
    await cstore.enqueue_work_item(item)
    await cstore.move_to_dead_letter(item.id, "poison")

    def op(session: Session) -> Any:
        assert q.get(session, item.id).status is WorkItemStatus.DEAD_LETTERED  # cache it
        q.requeue_dead_letter(session, item.id)
        claimed = q.claim(session, "w", ["q"], 1)
        return claimed, q.get(session, item.id)

    claimed, got = await cstore.run(op)
    assert [c.id for c in claimed] == [item.id]
    assert got.status is WorkItemStatus.CLAIMED and got.attempt == 1
    stored = await cstore.get_work_item(item.id)
    assert stored is not None and stored.status is WorkItemStatus.CLAIMED


async def test_claim_after_fail_with_retry_and_complete_many(
    cstore: StateStore, clock: Clock
) -> None:
    eid = await new_execution(cstore)
    q = cstore.queue
    item = WorkItem(execution_id=eid, node_id="n", queue_type="q", max_attempts=3)
    await cstore.enqueue_work_item(item)

    def op(session: Session) -> Any:
        (first,) = q.claim(session, "w", ["q"], 1)
        q.fail(session, first.id, "retry", timedelta(0), "w", first.lease_fence)
        (second,) = q.claim(session, "w", ["q"], 1)
        done = q.complete_many(session, [second, first])
        return second, done, q.get(session, item.id)

    second, done, got = await cstore.run(op)
    assert second.attempt == 2 and done == [True, False]
    assert got.status is WorkItemStatus.COMPLETED
    stored = await cstore.get_work_item(item.id)
    assert stored is not None and stored.status is WorkItemStatus.COMPLETED


async def test_finishing_an_execution_settles_items_read_earlier(cstore: StateStore) -> None:
    eid = await new_execution(cstore)
    q, ex = cstore.queue, cstore.executions
    item = WorkItem(execution_id=eid, node_id="n", queue_type="q")
    await cstore.enqueue_work_item(item)

    def op(session: Session) -> Any:
        assert q.list_for_execution(session, eid)[0].status is WorkItemStatus.PENDING
        ex.update_status(session, eid, WorkflowStatus.CANCELLED, None)
        return q.list_for_execution(session, eid)

    (got,) = await cstore.run(op)
    assert got.status is WorkItemStatus.FAILED


# ---------------------------------------------------------------- tokens, tenants, workflows


async def test_token_created_revoked_and_checked_in_one_transaction(cstore: StateStore) -> None:
    auth = cstore.tokens

    def op(session: Session) -> Any:
        token, record = auth.create(session, "ci", TokenRole.VIEWER, None)
        valid = auth.check(session, token).token
        listed = auth.list(session)
        auth.revoke(session, record.id)
        return valid, listed, auth.check(session, token).token, auth.list(session)

    valid, listed, revoked, relisted = await cstore.run(op)
    assert valid is not None and [t.id for t in listed] == [valid.id]
    assert revoked is None and relisted[0].revoked_at is not None


async def test_tenant_created_updated_and_used_in_one_transaction(cstore: StateStore) -> None:
    tenants = cstore.tenants

    def op(session: Session) -> Any:
        tenants.create(session, Tenant(id="acme", name="Acme"))
        created = tenants.get(session, "acme")
        tenants.update(session, Tenant(id="acme", name="Acme", status=TenantStatus.SUSPENDED))
        return created, tenants.get(session, "acme"), tenants.list(session)

    created, updated, listed = await cstore.run(op)
    assert created.status is TenantStatus.ACTIVE and updated.status is TenantStatus.SUSPENDED
    assert [t.status for t in listed if t.id == "acme"] == [TenantStatus.SUSPENDED]
    stored = await cstore.get_tenant("acme")
    assert stored is not None and stored.status is TenantStatus.SUSPENDED


async def test_workflow_replaced_then_read_in_one_transaction(cstore: StateStore) -> None:
    wf = cstore.workflows

    def op(session: Session) -> Any:
        wf.store(session, WorkflowDefinition(workflow_id="w", version="1", ir={"v": 1}), False)
        first = wf.get(session, "w", "1")
        wf.store(session, WorkflowDefinition(workflow_id="w", version="1", ir={"v": 2}), True)
        return first, wf.get(session, "w", "1"), wf.list(session, "w")

    first, second, listed = await cstore.run(op)
    assert first.ir == {"v": 1} and second.ir == {"v": 2} and listed[0].ir == {"v": 2}
    stored = await cstore.get_workflow("w", "1")
    assert stored is not None and stored.ir == {"v": 2}


async def test_snapshot_written_then_read_in_one_transaction(cstore: StateStore) -> None:
    from statestore import Snapshot

    eid = await new_execution(cstore)
    snaps = cstore.snapshots

    def op(session: Session) -> Any:
        snaps.write(session, Snapshot(execution_id=eid, at_sequence=1, state={"v": 1}))
        first = snaps.latest(session, eid)
        snaps.write(session, Snapshot(execution_id=eid, at_sequence=1, state={"v": 2}))
        return first, snaps.latest(session, eid)

    first, second = await cstore.run(op)
    assert first.state == {"v": 1} and second.state == {"v": 2}


# ---------------------------------------------------------------- the rule itself


def every_operation(store: StateStore, eid: uuid.UUID) -> list[tuple[str, Callable[..., Any]]]:
    """One call of every repository operation, in an order where each can succeed."""
    from statestore import Event, Snapshot

    ex, ev, q = store.executions, store.events, store.queue
    wf, auth, tenants, snaps = store.workflows, store.tokens, store.tenants, store.snapshots
    item = WorkItem(execution_id=eid, node_id="n", queue_type="q", priority=1)
    other = WorkItem(execution_id=eid, node_id="m", queue_type="q")
    child = WorkflowExecution(workflow_id="wf", workflow_version="1")
    state: dict[str, Any] = {}

    def claim(s: Session) -> None:
        state["claimed"] = q.claim(s, "w", ["q"], 1)  # the item

    def token(s: Session) -> None:
        state["token"] = auth.create(s, "ci", TokenRole.VIEWER, None)

    return [
        ("tenants.create", lambda s: tenants.create(s, Tenant(id="acme", name="Acme"))),
        ("tenants.get", lambda s: tenants.get(s, "acme")),
        ("tenants.list", lambda s: tenants.list(s)),
        ("tenants.update", lambda s: tenants.update(s, Tenant(id="acme", name="A"))),
        (
            "workflows.store",
            lambda s: wf.store(s, WorkflowDefinition(workflow_id="w", version="1", ir={}), False),
        ),
        (
            "workflows.store replace",
            lambda s: wf.store(
                s, WorkflowDefinition(workflow_id="w", version="1", ir={"a": 1}), True
            ),
        ),
        ("workflows.get", lambda s: wf.get(s, "w", "1")),
        ("workflows.list", lambda s: wf.list(s, None)),
        ("executions.create", lambda s: ex.create(s, child)),
        ("executions.get", lambda s: ex.get(s, eid)),
        ("executions.list", lambda s: ex.list(s, None, 10, 0, None)),
        ("executions.patch_append_array", lambda s: ex.patch_append_array(s, eid, "k", 1)),
        ("executions.update_current_state", lambda s: ex.update_current_state(s, eid, {"k": []})),
        ("executions.update_status", lambda s: ex.update_status(s, eid, "running", None)),
        (
            "events.append",
            lambda s: ev.append(s, Event(execution_id=eid, kind={"type": "a"}), None),
        ),
        ("events.append_many", lambda s: ev.append_many(s, eid, [{"type": "b"}], None)),
        ("events.get", lambda s: ev.get(s, eid)),
        ("events.since", lambda s: ev.since(s, eid, 0, None)),
        ("events.latest_sequence", lambda s: ev.latest_sequence(s, eid)),
        (
            "snapshots.write",
            lambda s: snaps.write(s, Snapshot(execution_id=eid, at_sequence=1, state={})),
        ),
        ("snapshots.latest", lambda s: snaps.latest(s, eid)),
        ("queue.enqueue", lambda s: q.enqueue(s, item)),
        ("queue.enqueue other", lambda s: q.enqueue(s, other)),
        ("queue.get", lambda s: q.get(s, item.id)),
        ("queue.list_for_execution", lambda s: q.list_for_execution(s, eid)),
        ("queue.claim", claim),
        ("queue.renew", lambda s: q.renew(s, item.id, "w", None)),
        ("queue.complete", lambda s: q.complete(s, item.id, "w", None)),
        ("queue.complete repeat", lambda s: q.complete(s, item.id, "w", None)),
        ("queue.complete_many", lambda s: q.complete_many(s, state["claimed"])),
        ("queue.move_to_dead_letter", lambda s: q.move_to_dead_letter(s, other.id, "x")),
        ("queue.list_dead_letters", lambda s: q.list_dead_letters(s, 10, 0)),
        ("queue.requeue_dead_letter", lambda s: q.requeue_dead_letter(s, other.id)),
        ("queue.claim again", lambda s: q.claim(s, "w", ["q"], 1)),
        ("queue.fail", lambda s: q.fail(s, other.id, "x", timedelta(0), "w", None)),
        ("queue.reclaim_batch", lambda s: q.reclaim_batch(s)),
        ("queue.stats", lambda s: q.stats(s)),
        ("tokens.create", token),
        ("tokens.check", lambda s: auth.check(s, state["token"][0])),
        ("tokens.record_use", lambda s: auth.record_use(s, state["token"][1].id, None)),
        ("tokens.list", lambda s: auth.list(s)),
        ("tokens.revoke", lambda s: auth.revoke(s, state["token"][1].id)),
    ]


async def test_no_operation_leaves_orm_objects_behind(cstore: StateStore) -> None:
    """Decision 12: after each repository operation the session holds no ORM object, so
    nothing is written late (at the final flush) and nothing cached can be read stale."""
    eid = await new_execution(cstore)
    operations = every_operation(cstore, eid)

    def op(session: Session) -> list[str]:
        dirty = []
        for name, operation in operations:
            operation(session)
            if not clean(session):
                dirty.append(name)
                session.flush()
                session.expunge_all()
        return dirty

    assert await cstore.run(op) == []


# ---------------------------------------------------------------- the docs tell the truth

API_DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"
_TABLE_ROW = re.compile(
    r"^\| (?P<flat>[^|]+) \| `(?P<repo>\w+)\.(?P<method>\w+)\((?P<args>[^)]*)\)`"
)
_ALSO = re.compile(r"`(?P<repo>\w+)\.(?P<method>\w+)\((?P<args>[^)]*)\)`")


def documented_operations() -> dict[tuple[str, str], list[str]]:
    """(repository, method) -> argument names, from docs/api.md's table of operations."""
    found: dict[tuple[str, str], list[str]] = {}
    section = API_DOC.read_text().split("## Advanced: your own operation", 1)[1]
    for line in section.splitlines():
        if _TABLE_ROW.match(line) is None:
            continue
        for match in _ALSO.finditer(line.split(" | ", 1)[1]):
            args = [a.strip() for a in match["args"].split(",") if a.strip()]
            found[(match["repo"], match["method"])] = args
    return found


async def test_api_docs_list_every_repository_operation_with_its_signature(
    cstore: StateStore,
) -> None:
    documented = documented_operations()
    actual: dict[tuple[str, str], list[str]] = {}
    repositories = ("workflows", "executions", "events", "snapshots", "queue", "tokens", "tenants")
    for name in (*repositories, "effects", "turns", "artifacts"):
        repository = getattr(cstore, name)
        for method_name, method in inspect.getmembers(repository, inspect.ismethod):
            if not method_name.startswith("_"):
                actual[(name, method_name)] = list(inspect.signature(method).parameters)
    assert documented == actual


def test_api_docs_name_real_flat_methods() -> None:
    section = API_DOC.read_text().split("## Advanced: your own operation", 1)[1]
    flat = [
        name
        for line in section.splitlines()
        if (row := _TABLE_ROW.match(line)) is not None
        for name in re.findall(r"`(\w+)`", row["flat"])
    ]
    assert len(flat) > 30
    missing = [name for name in flat if not callable(getattr(StateStore, name, None))]
    assert missing == []


# ---------------------------------------------------------------- what a scoped run confines


async def test_run_on_a_scoped_view_confines_orm_statements_only(cstore: StateStore) -> None:
    """Decided and documented (docs/api.md, ``StateStore.run``): ``run`` is an operator
    tool. On a scoped view the tenant filter confines ORM statements and the repository
    operations; Core statements on tables and ``text()`` SQL are not confined."""
    await cstore.create_tenant(Tenant(id="acme", name="Acme"))
    mine = WorkflowExecution(workflow_id="wf", workflow_version="1", tenant_id="acme")
    theirs = WorkflowExecution(workflow_id="wf", workflow_version="1")
    await cstore.create_execution(mine)
    await cstore.create_execution(theirs)
    acme = cstore.for_tenant("acme")

    def op(session: Session) -> dict[str, Any]:
        table = ExecutionRow.__table__  # Core: the table, not the mapped class
        renamed = session.execute(
            update(ExecutionRow).values(workflow_id="renamed"), execution_options=NO_SESSION_SYNC
        )
        return {
            "orm select": set(session.scalars(select(ExecutionRow.id))),
            "orm update": renamed.rowcount,  # type: ignore[attr-defined]
            "repository": [
                e.execution_id for e in acme.executions.list(session, None, 10, 0, None)
            ],
            "core select": len(session.execute(select(table.c.id)).all()),
            "text select": len(session.execute(text("SELECT id FROM workflow_executions")).all()),
        }

    seen = await acme.run(op)
    assert seen["orm select"] == {mine.execution_id}
    assert seen["orm update"] == 1
    assert seen["repository"] == [mine.execution_id]
    assert seen["core select"] == 2 and seen["text select"] == 2  # every tenant's rows
    other = await cstore.get_execution(theirs.execution_id)
    assert other is not None and other.workflow_id == "wf"

    # Objects added to the session are checked at flush; INSERT statements are not.
    def definition(**values: Any) -> dict[str, Any]:
        return {"workflow_id": "w", "ir": {}, "created_at": T0, "tenant_id": "default", **values}

    with pytest.raises(TenantError):
        await acme.run(lambda s: s.add(WorkflowDefinitionRow(**definition(version="1"))))
    await acme.run(
        lambda s: s.execute(insert(WorkflowDefinitionRow).values(definition(version="2")))
    )
    assert [(d.tenant_id, d.version) for d in await cstore.list_workflows()] == [("default", "2")]
