"""Continue-as-new: segments of one run, derived ids, retries that create nothing twice."""

from __future__ import annotations

import uuid

import pytest

from statestore import (
    LeaseLostError,
    StateStore,
    Tenant,
    WorkflowExecution,
    WorkflowStatus,
    WorkItem,
)


async def _claimed(store: StateStore, execution_id: uuid.UUID) -> WorkItem:
    await store.enqueue_work_item(WorkItem(execution_id=execution_id, node_id="n", queue_type="q"))
    item = await store.claim_work_item("w1", ["q"])
    assert item is not None
    return item


async def _root(store: StateStore) -> WorkflowExecution:
    root = WorkflowExecution(
        workflow_id="agent", workflow_version="1", status=WorkflowStatus.RUNNING
    )
    await store.create_execution(root)
    return root


async def test_continue_as_new_starts_the_next_segment_in_one_call(store: StateStore) -> None:
    root = await _root(store)
    item = await _claimed(store, root.execution_id)
    successor = WorkItem(execution_id=root.execution_id, node_id="next", queue_type="q")
    segment = await store.continue_as_new(
        item.id,
        worker_id="w1",
        lease_fence=item.lease_fence,
        state={"summary": "so far"},
        enqueue=[successor],
    )
    assert segment.parent_execution_id == root.execution_id and segment.segment == 1
    assert segment.initial_input == segment.current_state == {"summary": "so far"}
    assert segment.status == WorkflowStatus.RUNNING
    old = await store.get_execution(root.execution_id)
    assert old is not None and old.status == WorkflowStatus.COMPLETED and old.segment == 0
    events = await store.get_events(segment.execution_id)
    assert [(e.sequence, e.kind.type) for e in events] == [(1, "workflow_started")]
    moved = await store.claim_work_item("w2", ["q"])
    assert moved is not None and moved.execution_id == segment.execution_id
    assert moved.node_id == "next"

    item2 = moved
    third = await store.continue_as_new(
        item2.id, worker_id="w2", lease_fence=item2.lease_fence, state={"n": 2}
    )
    assert third.segment == 2
    chain = await store.segment_chain(third.execution_id)
    assert [e.execution_id for e in chain] == [
        root.execution_id,
        segment.execution_id,
        third.execution_id,
    ]
    assert [e.execution_id for e in await store.segment_chain(root.execution_id)] == [
        root.execution_id
    ]
    assert await store.segment_chain(uuid.uuid4()) == []


async def test_a_retry_returns_the_same_segment_and_creates_nothing(store: StateStore) -> None:
    root = await _root(store)
    item = await _claimed(store, root.execution_id)
    kwargs = {"worker_id": "w1", "lease_fence": item.lease_fence, "state": {"k": 1}}
    first = await store.continue_as_new(item.id, **kwargs)  # type: ignore[arg-type]
    again = await store.continue_as_new(item.id, **kwargs)  # type: ignore[arg-type]
    assert again == first
    assert len(await store.list_executions(limit=100)) == 2
    assert len(await store.get_events(first.execution_id)) == 1


async def test_a_stale_lease_changes_nothing(store: StateStore) -> None:
    root = await _root(store)
    item = await _claimed(store, root.execution_id)
    with pytest.raises(LeaseLostError):
        await store.continue_as_new(
            item.id, worker_id="w1", lease_fence=item.lease_fence + 1, state={}
        )
    assert len(await store.list_executions(limit=100)) == 1
    old = await store.get_execution(root.execution_id)
    assert old is not None and old.status == WorkflowStatus.RUNNING


async def test_segments_stay_in_their_tenant(store: StateStore) -> None:
    await store.create_tenant(Tenant(id="acme", name="Acme"))
    acme = store.for_tenant("acme")
    root = await _root(acme)
    item = await _claimed(acme, root.execution_id)
    segment = await acme.continue_as_new(
        item.id, worker_id="w1", lease_fence=item.lease_fence, state={}
    )
    assert segment.tenant_id == "acme"
    assert await store.for_tenant("default").segment_chain(segment.execution_id) == []
    assert len(await acme.segment_chain(segment.execution_id)) == 2
