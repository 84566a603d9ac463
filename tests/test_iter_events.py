"""Streaming an execution's history with iter_events (both databases)."""

from __future__ import annotations

import uuid

import pytest

from statestore import StateStore, ValidationError, WorkflowExecution


async def history(store: StateStore, events: int) -> uuid.UUID:
    execution = WorkflowExecution(workflow_id="wf", workflow_version="1")
    await store.create_execution(execution)
    for start in range(0, events, 100):
        count = min(100, events - start)
        kinds = [{"type": "step", "n": start + i} for i in range(count)]
        await store.append_events(execution.execution_id, kinds)
    return execution.execution_id


async def test_iter_events_streams_every_event_in_order(store: StateStore) -> None:
    eid = await history(store, 250)
    seen = [e.sequence async for e in store.iter_events(eid, batch=100)]
    assert seen == list(range(1, 251))
    later = [e.kind.to_json_dict()["n"] async for e in store.iter_events(eid, since=200, batch=7)]
    assert later == list(range(200, 250))
    exact = [e.sequence async for e in store.iter_events(eid, batch=250)]  # a full last page
    assert exact == list(range(1, 251))


async def test_iter_events_sees_appends_made_while_iterating(store: StateStore) -> None:
    eid = await history(store, 10)
    seen = []
    async for event in store.iter_events(eid, batch=5):
        seen.append(event.sequence)
        if event.sequence == 3:
            await store.append_events(eid, [{"type": "late"}])
    assert seen == list(range(1, 12))


async def test_iter_events_of_unknown_execution_and_bad_batch(store: StateStore) -> None:
    assert [e async for e in store.iter_events(uuid.uuid4())] == []
    for bad in (0, 10_001, "5"):
        with pytest.raises(ValidationError):
            [e async for e in store.iter_events(uuid.uuid4(), batch=bad)]  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        [e async for e in store.iter_events("not-a-uuid")]
