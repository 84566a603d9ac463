"""Atomic turns on both databases: commit_turn, get_effect, start_execution, park_work_item,
materialize and snapshots as resume points (API.md, Part 2)."""

from __future__ import annotations

import asyncio
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import T0, Clock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_materialize import KINDS

from statestore import (
    LeaseLostError,
    NodeCompleted,
    NodeScheduled,
    NotFoundError,
    Snapshot,
    StateStore,
    Tenant,
    ValidationError,
    WorkflowExecution,
    WorkflowStarted,
    WorkflowStatus,
    WorkItem,
    WorkItemStatus,
)
from statestore.materialize import fold, initial_state


async def _started(store: StateStore, **state: Any) -> WorkflowExecution:
    run = WorkflowExecution(
        workflow_id="wf", workflow_version="1", current_state=state or {"log": []}
    )
    await store.create_execution(run)
    return run


async def _claimed(store: StateStore, run: WorkflowExecution, node: str = "a") -> WorkItem:
    await store.enqueue_work_item(
        WorkItem(execution_id=run.execution_id, node_id=node, queue_type=f"q-{node}")
    )
    item = await store.claim_work_item("w1", [f"q-{node}"])
    assert item is not None
    return item


async def _everything(store: StateStore, run: WorkflowExecution) -> tuple[Any, ...]:
    """What a turn can change, read back."""
    execution = await store.get_execution(run.execution_id)
    assert execution is not None
    return (
        execution.status,
        execution.current_state,
        [(e.sequence, e.kind.type) for e in await store.get_events(run.execution_id)],
        [(i.node_id, i.status, i.attempt) for i in await store.list_work_items(run.execution_id)],
        await store.latest_snapshot(run.execution_id),
    )


async def test_a_turn_writes_everything_in_one_call(store: StateStore) -> None:
    run = await _started(store, log=["start"], keep=1)
    item = await _claimed(store, run)
    result = await store.commit_turn(
        item.id,
        worker_id="w1",
        lease_fence=item.lease_fence,
        events=[
            NodeCompleted(node_id="a", output={"x": 1}, state_patch={"a": 1}, duration_ms=5),
            {"type": "note", "text": "hi"},
        ],
        state_patch={"log": ["start", "a"], "keep": None, "new": {"deep": True}},
        enqueue=[WorkItem(execution_id=run.execution_id, node_id="b", queue_type="q-b")],
        snapshot=True,
        effect_key=f"{run.execution_id}:a",
        effect={"charged": 42},
    )
    assert result.sequences == [1, 2]
    assert result.item_status is WorkItemStatus.COMPLETED
    assert result.snapshot_at == 2
    execution = await store.get_execution(run.execution_id)
    assert execution is not None
    assert execution.current_state == {"log": ["start", "a"], "new": {"deep": True}}
    items = {i.node_id: i for i in await store.list_work_items(run.execution_id)}
    assert items["a"].status is WorkItemStatus.COMPLETED
    assert items["b"].status is WorkItemStatus.PENDING and result.enqueued == [items["b"].id]
    snapshot = await store.latest_snapshot(run.execution_id)
    assert snapshot is not None and snapshot.at_sequence == 2 and snapshot.last_sequence == 2
    assert snapshot.completed_nodes == {"a": {"x": 1}}
    assert await store.materialize(run.execution_id) == await store.materialize(run.execution_id)
    assert await store.get_effect(f"{run.execution_id}:a") == {"charged": 42}


async def test_a_turn_needs_the_lease_and_commits_once_per_lease(store: StateStore) -> None:
    run = await _started(store)
    item = await _claimed(store, run)
    before = await _everything(store, run)
    turn = {"events": [{"type": "x"}], "state_patch": {"log": ["x"]}}
    for worker, fence in (("w2", item.lease_fence), ("w1", item.lease_fence + 1)):
        with pytest.raises(LeaseLostError):
            await store.commit_turn(item.id, worker_id=worker, lease_fence=fence, **turn)
        assert await _everything(store, run) == before  # nothing written
    await store.commit_turn(item.id, worker_id="w1", lease_fence=item.lease_fence, **turn)
    after = await _everything(store, run)
    with pytest.raises(LeaseLostError):  # the same lease again: a turn commits at most once
        await store.commit_turn(item.id, worker_id="w1", lease_fence=item.lease_fence, **turn)
    assert await _everything(store, run) == after
    with pytest.raises(NotFoundError):
        await store.commit_turn(uuid.uuid4(), worker_id="w1", lease_fence=1)


async def test_a_failing_part_leaves_nothing(store: StateStore) -> None:
    run = await _started(store)
    item = await _claimed(store, run)
    before = await _everything(store, run)
    missing = WorkItem(execution_id=uuid.uuid4(), node_id="b", queue_type="q")
    with pytest.raises(NotFoundError):  # the successor's execution does not exist
        await store.commit_turn(
            item.id,
            worker_id="w1",
            lease_fence=item.lease_fence,
            events=[{"type": "x"}],
            state_patch={"log": ["x"]},
            enqueue=[missing],
            snapshot=True,
            effect_key="k",
            effect=1,
        )
    assert await _everything(store, run) == before
    assert await store.get_effect("k") is None
    bad = [
        {"events": [{"no": "type"}]},
        {"state_patch": {"x": float("nan")}},
        {"retry_in": timedelta(seconds=1)},  # retry_in without fail
        {"status": "sleeping"},
        {"snapshot": "yes"},
        {"effect_key": "", "effect": 1},
        {"enqueue": [{"not": "an item"}]},
    ]
    for arguments in bad:
        with pytest.raises(ValidationError):
            await store.commit_turn(
                item.id, worker_id="w1", lease_fence=item.lease_fence, **arguments
            )
        assert await _everything(store, run) == before, arguments


async def test_fail_settles_as_fail_work_item(make_store: Any) -> None:
    clock = Clock()
    store: StateStore = await make_store(clock=clock)
    run = await _started(store)
    item = await _claimed(store, run)
    result = await store.commit_turn(
        item.id,
        worker_id="w1",
        lease_fence=item.lease_fence,
        fail="rate limited",
        retry_in=timedelta(seconds=10),
        events=[{"type": "attempt_failed"}],
    )
    assert result.item_status is WorkItemStatus.PENDING
    stored = await store.get_work_item(item.id)
    assert stored is not None and stored.last_error == "rate limited"
    assert stored.available_at == T0 + timedelta(seconds=10)
    clock.advance(11)
    again = await store.claim_work_item("w1", ["q-a"])
    assert again is not None and again.lease_fence > item.lease_fence
    result = await store.commit_turn(
        again.id, worker_id="w1", lease_fence=again.lease_fence, fail="broken"
    )
    assert result.item_status is WorkItemStatus.FAILED


async def test_a_terminal_status_settles_the_other_items(store: StateStore) -> None:
    run = await _started(store)
    item = await _claimed(store, run)
    await store.enqueue_work_item(
        WorkItem(execution_id=run.execution_id, node_id="other", queue_type="q")
    )
    await store.commit_turn(
        item.id, worker_id="w1", lease_fence=item.lease_fence, status=WorkflowStatus.COMPLETED
    )
    execution = await store.get_execution(run.execution_id)
    assert execution is not None and execution.status is WorkflowStatus.COMPLETED
    statuses = {i.node_id: i.status for i in await store.list_work_items(run.execution_id)}
    assert statuses["a"] is WorkItemStatus.COMPLETED
    assert statuses["other"] is not WorkItemStatus.PENDING


async def test_effects_first_writer_wins_and_belong_to_the_tenant(store: StateStore) -> None:
    await store.create_tenant(Tenant(id="t2", name="T2"))
    scoped = store.for_tenant("t2")
    for value in (1, 2):
        run = await _started(scoped)
        item = await _claimed(scoped, run)
        await scoped.commit_turn(
            item.id, worker_id="w1", lease_fence=item.lease_fence, effect_key="k", effect=value
        )
    assert await scoped.get_effect("k") == 1
    assert await store.get_effect("k") is None  # the unscoped store reads "default"'s
    assert await store.for_tenant("default").get_effect("k") is None


async def test_an_unscoped_turn_cannot_enqueue_into_another_tenant(store: StateStore) -> None:
    await store.create_tenant(Tenant(id="t2", name="T2"))
    theirs = await _started(store.for_tenant("t2"))
    run = await _started(store)
    item = await _claimed(store, run)
    with pytest.raises(NotFoundError):
        await store.commit_turn(
            item.id,
            worker_id="w1",
            lease_fence=item.lease_fence,
            enqueue=[WorkItem(execution_id=theirs.execution_id, node_id="x", queue_type="q")],
        )
    assert await store.list_work_items(theirs.execution_id) == []


async def test_start_execution_is_one_transaction_and_idempotent(store: StateStore) -> None:
    run = WorkflowExecution(workflow_id="wf", workflow_version="1")
    started, created = await store.start_execution(
        run,
        events=[WorkflowStarted(workflow_id="wf", workflow_version="1", initial_input={})],
        enqueue=[WorkItem(execution_id=run.execution_id, node_id="a", queue_type="q")],
        idempotency_key="order-1",
    )
    assert created and started.execution_id == run.execution_id
    assert [e.sequence for e in await store.get_events(run.execution_id)] == [1]
    assert len(await store.list_work_items(run.execution_id)) == 1
    again = WorkflowExecution(workflow_id="wf", workflow_version="1")
    found, created = await store.start_execution(
        again, events=[{"type": "x"}], idempotency_key="order-1"
    )
    assert not created and found.execution_id == run.execution_id
    assert await store.get_execution(again.execution_id) is None
    assert len(await store.get_events(run.execution_id)) == 1
    # A failing part: nothing is created.
    broken = WorkflowExecution(workflow_id="wf", workflow_version="1")
    with pytest.raises(NotFoundError):
        await store.start_execution(
            broken, enqueue=[WorkItem(execution_id=uuid.uuid4(), node_id="a", queue_type="q")]
        )
    assert await store.get_execution(broken.execution_id) is None


async def test_concurrent_starts_with_one_key_create_one(make_store: Any) -> None:
    stores = [await make_store() for _ in range(3)]
    runs = [WorkflowExecution(workflow_id="wf", workflow_version="1") for _ in range(12)]
    results = await asyncio.gather(
        *(
            stores[n % 3].start_execution(run, events=[{"type": "s"}], idempotency_key="same")
            for n, run in enumerate(runs)
        )
    )
    assert sum(created for _, created in results) == 1
    assert len({started.execution_id for started, _ in results}) == 1
    winner = results[0][0].execution_id
    visible = [r for r in runs if await stores[0].get_execution(r.execution_id) is not None]
    assert [r.execution_id for r in visible] == [winner]


async def test_park_hands_the_item_back_without_using_an_attempt(make_store: Any) -> None:
    clock = Clock()
    store: StateStore = await make_store(clock=clock)
    run = await _started(store)
    item = await _claimed(store, run)
    with pytest.raises(LeaseLostError):
        await store.park_work_item(item.id, worker_id="w2", lease_fence=item.lease_fence)
    await store.park_work_item(
        item.id, worker_id="w1", lease_fence=item.lease_fence, retry_in=timedelta(seconds=5)
    )
    parked = await store.get_work_item(item.id)
    assert parked is not None and parked.status is WorkItemStatus.PENDING
    assert parked.attempt == item.attempt - 1 and parked.worker_id is None
    assert parked.available_at == T0 + timedelta(seconds=5)
    assert await store.claim_work_item("w1", ["q-a"]) is None  # not yet due
    clock.advance(5)
    again = await store.claim_work_item("w1", ["q-a"])
    assert again is not None and again.attempt == item.attempt
    assert again.lease_fence > item.lease_fence
    with pytest.raises(LeaseLostError):  # the old lease is stale now
        await store.park_work_item(item.id, worker_id="w1", lease_fence=item.lease_fence)


async def test_snapshot_fields_round_trip_and_old_style_snapshots_default(
    store: StateStore,
) -> None:
    run = await _started(store)
    await store.append_events(run.execution_id, [{"type": "a"}] * 3)
    await store.write_snapshot(Snapshot(execution_id=run.execution_id, at_sequence=2, state={}))
    plain = await store.latest_snapshot(run.execution_id)
    assert plain is not None and plain.status is WorkflowStatus.PENDING
    assert (plain.completed_nodes, plain.active_nodes, plain.last_sequence) == ({}, [], 2)
    full = Snapshot(
        execution_id=run.execution_id,
        at_sequence=3,
        state={"s": 1},
        status=WorkflowStatus.RUNNING,
        completed_nodes={"a": [1, 2]},
        active_nodes=["b", "c"],
        last_sequence=3,
    )
    await store.write_snapshot(full)
    read = await store.latest_snapshot(run.execution_id)
    assert read is not None
    assert read.model_dump(exclude={"created_at"}) == full.model_dump(exclude={"created_at"})


async def test_materialize_folds_from_the_latest_snapshot(store: StateStore) -> None:
    run = WorkflowExecution(workflow_id="wf", workflow_version="1", initial_input={"n": 0})
    await store.create_execution(run)
    with pytest.raises(NotFoundError):
        await store.materialize(uuid.uuid4())
    empty = await store.materialize(run.execution_id)
    assert (empty.current_state, empty.status, empty.last_sequence) == ({"n": 0}, "pending", 0)
    kinds = [
        WorkflowStarted(workflow_id="wf", workflow_version="1", initial_input={}),
        NodeScheduled(node_id="a", queue_type="q"),
        NodeCompleted(node_id="a", output=1, state_patch={"n": 1}, duration_ms=1),
        NodeScheduled(node_id="b", queue_type="q"),
    ]
    await store.append_events(run.execution_id, kinds)
    full = await store.materialize(run.execution_id)
    assert full.status is WorkflowStatus.RUNNING and full.active_nodes == ["b"]
    assert full.current_state == {"n": 1} and full.last_sequence == 4
    # A (deliberately wrong) snapshot at 2 is where the fold starts: proof it is used.
    await store.write_snapshot(
        Snapshot(
            execution_id=run.execution_id,
            at_sequence=2,
            state={"n": 100},
            status=WorkflowStatus.RUNNING,
            active_nodes=["a"],
        )
    )
    resumed = await store.materialize(run.execution_id)
    assert resumed.current_state == {"n": 1} and resumed.active_nodes == ["b"]
    await store.write_snapshot(
        Snapshot(execution_id=run.execution_id, at_sequence=3, state={"n": 100})
    )
    assert (await store.materialize(run.execution_id)).current_state == {"n": 100}


async def test_sibling_turns_each_see_the_other_in_their_snapshot(make_store: Any) -> None:
    """Two items of one execution committed at once from two stores: the turn that
    commits second takes its snapshot after the first's events, so the latest snapshot
    covers both nodes and every event."""
    first: StateStore = await make_store()
    second: StateStore = await make_store()
    for _round in range(5):
        run = await _started(first)
        items = [await _claimed(first, run, node) for node in ("a", "b")]
        await asyncio.gather(
            *(
                store.commit_turn(
                    item.id,
                    worker_id="w1",
                    lease_fence=item.lease_fence,
                    events=[
                        NodeCompleted(
                            node_id=item.node_id,
                            output=item.node_id,
                            state_patch={item.node_id: True},
                            duration_ms=1,
                        )
                    ],
                    snapshot=True,
                )
                for store, item in zip((first, second), items, strict=True)
            )
        )
        snapshot = await first.latest_snapshot(run.execution_id)
        assert snapshot is not None and snapshot.at_sequence == 2
        assert snapshot.completed_nodes == {"a": "a", "b": "b"}
        assert snapshot.state == {"a": True, "b": True}  # the fold of the events


async def test_a_dedupe_key_keeps_one_active_item(store: StateStore) -> None:
    run = await _started(store)
    first = WorkItem(execution_id=run.execution_id, node_id="n", queue_type="q", dedupe_key="k")
    assert await store.enqueue_work_item(first) == first.id
    again = WorkItem(execution_id=run.execution_id, node_id="n2", queue_type="q", dedupe_key="k")
    assert await store.enqueue_work_item(again) == first.id  # nothing written
    assert await store.get_work_item(again.id) is None
    other_queue = WorkItem(
        execution_id=run.execution_id, node_id="n", queue_type="q2", dedupe_key="k"
    )
    assert await store.enqueue_work_item(other_queue) == other_queue.id
    claimed = await store.claim_work_item("w", ["q"])  # claimed still holds the key
    assert claimed is not None and claimed.dedupe_key == "k"
    assert await store.enqueue_work_item(again) == first.id
    await store.complete_work_item(claimed.id, worker_id="w", lease_fence=claimed.lease_fence)
    assert await store.enqueue_work_item(again) == again.id  # settled: the key is free
    # In a turn too: the successor's id is the existing item's.
    item = await _claimed(store, run, "t")
    dup = WorkItem(execution_id=run.execution_id, node_id="x", queue_type="q", dedupe_key="k")
    result = await store.commit_turn(
        item.id, worker_id="w1", lease_fence=item.lease_fence, enqueue=[dup]
    )
    assert result.enqueued == [again.id]


async def test_concurrent_processes_enqueue_one_item_per_dedupe_key(
    make_store: Any, database_url: str
) -> None:
    store: StateStore = await make_store()
    run = await _started(store)
    worker = Path(__file__).with_name("dedupe_worker.py")
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(worker),
            database_url,
            str(run.execution_id),
            "shared",
            "20",
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(3)
    ]
    outputs = [await child.communicate() for child in children]
    assert [child.returncode for child in children] == [0, 0, 0]
    returned = {line for out, _ in outputs for line in out.decode().split()}
    items = [i for i in await store.list_work_items(run.execution_id) if i.queue_type == "dq"]
    assert len(items) == 1 and returned == {str(items[0].id)}


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(kinds=st.lists(KINDS, max_size=12), data=st.data())
async def test_materialize_from_a_stored_snapshot_at_any_cut_equals_the_full_fold(
    store: StateStore, kinds: list[Any], data: st.DataObject
) -> None:
    """Through the database: events appended, a snapshot of the fold of the first k
    written with write_snapshot, then materialize (snapshot + tail) equals the fold of all."""
    run = WorkflowExecution(workflow_id="wf", workflow_version="1", initial_input={"n": 0})
    await store.create_execution(run)
    if kinds:
        await store.append_events(run.execution_id, kinds)
    events = await store.get_events(run.execution_id)
    cut = data.draw(st.integers(0, len(events)), label="cut")
    head = fold(initial_state(run), events[:cut])
    await store.write_snapshot(
        Snapshot(
            execution_id=run.execution_id,
            at_sequence=head.last_sequence,
            state=head.current_state,
            status=head.status,
            completed_nodes=head.completed_nodes,
            active_nodes=head.active_nodes,
        )
    )
    assert await store.materialize(run.execution_id) == fold(initial_state(run), events)


async def test_another_tenants_item_execution_and_keys_stay_apart(store: StateStore) -> None:
    """A scoped store cannot commit, park or materialize another tenant's work (it looks
    missing, nothing is written); idempotency and dedupe keys are per tenant."""
    await store.create_tenant(Tenant(id="t2", name="T2"))
    mine, theirs = store.for_tenant("default"), store.for_tenant("t2")
    run = await _started(theirs)
    item = await _claimed(theirs, run)
    before = await _everything(store, run)
    with pytest.raises(NotFoundError):
        await mine.commit_turn(
            item.id, worker_id="w1", lease_fence=item.lease_fence, events=[{"type": "x"}]
        )
    with pytest.raises(NotFoundError):
        await mine.park_work_item(item.id, worker_id="w1", lease_fence=item.lease_fence)
    with pytest.raises(NotFoundError):
        await mine.materialize(run.execution_id)
    assert await _everything(store, run) == before
    started = []
    for view in (mine, theirs):
        execution = WorkflowExecution(workflow_id="wf", workflow_version="1")
        found, created = await view.start_execution(execution, idempotency_key="same-key")
        assert created and found.tenant_id == view.tenant_id
        started.append(found.execution_id)
        work = WorkItem(
            execution_id=found.execution_id, node_id="n", queue_type="q", dedupe_key="d"
        )
        assert await view.enqueue_work_item(work) == work.id  # the other tenant's key is no match
    assert started[0] != started[1]
