"""The event log: gapless store-assigned sequences, optimistic appends, reads, kinds."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import T0, Clock
from sqlalchemy import text

from statestore import (
    ApprovalReceived,
    BaseEventKind,
    ChildWorkflowCompleted,
    ChildWorkflowFailed,
    ChildWorkflowStarted,
    ConflictError,
    CustomEvent,
    Event,
    ExternalEventReceived,
    InterruptRaised,
    NodeCancelled,
    NodeCompleted,
    NodeFailed,
    NodeScheduled,
    NodeSkipped,
    NodeStarted,
    NotFoundError,
    RetryScheduled,
    SequenceConflictError,
    StateStore,
    TimerCreated,
    TimerFired,
    ValidationError,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowExecution,
    WorkflowFailed,
    WorkflowStarted,
)

# Also on sqlite:///:memory: and through PgBouncer (conftest).
pytestmark = [pytest.mark.memory, pytest.mark.pgbouncer]

StoreFactory = Callable[..., Awaitable[StateStore]]

ALL_TYPED_KINDS: list[BaseEventKind] = [
    WorkflowStarted(workflow_id="wf", workflow_version="1", initial_input={"a": 1}),
    WorkflowCompleted(final_state={"done": True}),
    WorkflowFailed(error="boom"),
    WorkflowCancelled(reason=None),
    NodeScheduled(node_id="n1", queue_type="llm"),
    NodeStarted(node_id="n1", worker_id="w1", attempt=1),
    NodeCompleted(node_id="n1", output={"t": "x"}, state_patch={"k": 1}, duration_ms=12),
    NodeCompleted(
        node_id="n1",
        output=None,
        state_patch={},
        duration_ms=1,
        gen_ai_model="m",
        input_tokens=4,
        cost_usd=0.25,
        provenance={"p": [1]},
    ),
    NodeFailed(node_id="n1", error="e", attempt=2, retryable=False),
    NodeSkipped(node_id="n2", reason="branch"),
    NodeCancelled(node_id="n3"),
    RetryScheduled(node_id="n1", attempt=3, delay_ms=500),
    InterruptRaised(node_id="n4", reason="review", state_for_review={"d": 1}),
    ApprovalReceived(node_id="n4", decision="rejected"),
    ApprovalReceived(node_id="n4", decision="approved", user_id="u", comment="c", state_patch=[]),
    TimerCreated(node_id="n5", fire_at=datetime(2024, 5, 2, 8, 0, tzinfo=UTC)),
    TimerFired(node_id="n5"),
    ExternalEventReceived(correlation_key="k", payload=[1, "two", None]),
    ChildWorkflowStarted(node_id="n6", child_execution_id="c1"),
    ChildWorkflowCompleted(node_id="n6", child_execution_id="c1", output={"r": 1}),
    ChildWorkflowFailed(node_id="n6", child_execution_id="c1", error="x"),
]


async def count_events(store: StateStore) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM events"))).scalar_one())


async def new_execution(store: StateStore) -> uuid.UUID:
    execution = WorkflowExecution(workflow_id="wf", workflow_version="1")
    await store.create_execution(execution)
    return execution.execution_id


def failed(execution_id: uuid.UUID, error: str = "e", **kw: Any) -> Event:
    return Event(execution_id=execution_id, kind=WorkflowFailed(error=error), **kw)


async def test_append_event_assigns_gapless_sequences(store: StateStore) -> None:
    execution_id = await new_execution(store)
    results = []
    for i, caller_sequence in enumerate([42, 0, 7]):
        event = failed(execution_id, f"e{i}", sequence=caller_sequence)
        results.append(await store.append_event(event))
    assert results == [1, 2, 3]
    events = await store.get_events(execution_id)
    assert [e.sequence for e in events] == [1, 2, 3]
    assert [e.kind for e in events] == [WorkflowFailed(error=f"e{i}") for i in range(3)]
    assert await store.latest_sequence(execution_id) == 3


async def test_sequences_are_per_execution(store: StateStore) -> None:
    first = await new_execution(store)
    second = await new_execution(store)
    assert await store.append_event(failed(first)) == 1
    assert await store.append_event(failed(first)) == 2
    assert await store.append_event(failed(second)) == 1
    assert await store.append_events(second, [WorkflowFailed(error="x")]) == [2]
    assert await store.latest_sequence(first) == 2
    assert await store.latest_sequence(second) == 2


async def test_append_event_stores_its_fields(make_store: StoreFactory) -> None:
    store = await make_store(clock=Clock())
    execution_id = await new_execution(store)
    event = failed(execution_id, "boom")
    await store.append_event(event)
    [stored] = await store.get_events(execution_id)
    assert stored.id == event.id
    assert stored.execution_id == execution_id
    assert stored.kind == WorkflowFailed(error="boom")
    assert stored.tenant_id == "default"
    assert stored.created_at == T0


async def test_expected_sequence_match(store: StateStore) -> None:
    execution_id = await new_execution(store)
    assert await store.append_event(failed(execution_id), expected_sequence=0) == 1
    assert await store.append_event(failed(execution_id), expected_sequence=1) == 2
    assert await store.append_events(
        execution_id, [WorkflowFailed(error="a"), TimerFired(node_id="n")], expected_sequence=2
    ) == [3, 4]


async def test_expected_sequence_mismatch_writes_nothing(store: StateStore) -> None:
    execution_id = await new_execution(store)
    await store.append_event(failed(execution_id))
    for expected in (0, 2, 5):
        with pytest.raises(SequenceConflictError) as info:
            await store.append_event(failed(execution_id, "late"), expected_sequence=expected)
        assert isinstance(info.value, ConflictError)
    assert await store.latest_sequence(execution_id) == 1
    assert await count_events(store) == 1
    assert [e.kind for e in await store.get_events(execution_id)] == [WorkflowFailed(error="e")]
    # No gap was left behind.
    assert await store.append_event(failed(execution_id)) == 2


def test_sequence_conflict_is_a_conflict() -> None:
    assert issubclass(SequenceConflictError, ConflictError)


async def test_append_event_missing_execution(store: StateStore) -> None:
    with pytest.raises(NotFoundError):
        await store.append_event(failed(uuid.uuid4()))
    with pytest.raises(NotFoundError):
        await store.append_event(failed(uuid.uuid4()), expected_sequence=0)
    assert await count_events(store) == 0


async def test_duplicate_event_id_is_a_conflict(store: StateStore) -> None:
    execution_id = await new_execution(store)
    event = failed(execution_id, "first")
    await store.append_event(event)
    with pytest.raises(ConflictError):
        await store.append_event(failed(execution_id, "second", id=event.id))
    assert await count_events(store) == 1
    assert await store.latest_sequence(execution_id) == 1
    [stored] = await store.get_events(execution_id)
    assert stored.kind == WorkflowFailed(error="first")
    assert await store.append_event(failed(execution_id)) == 2  # gapless after the failure


async def test_append_events_returns_sequences(store: StateStore) -> None:
    execution_id = await new_execution(store)
    kinds = [NodeScheduled(node_id="a", queue_type="q"), {"type": "timer_fired", "node_id": "t"}]
    assert await store.append_events(execution_id, kinds) == [1, 2]
    assert await store.append_events(str(execution_id), [NodeCancelled(node_id="a")]) == [3]
    events = await store.get_events(execution_id)
    assert [e.sequence for e in events] == [1, 2, 3]
    assert [type(e.kind) for e in events] == [NodeScheduled, TimerFired, NodeCancelled]
    assert all(e.execution_id == execution_id for e in events)
    assert len({e.id for e in events}) == 3


async def test_append_events_all_or_nothing_on_invalid_kind(store: StateStore) -> None:
    execution_id = await new_execution(store)
    batch: list[Any] = [
        WorkflowFailed(error="ok"),
        {"type": "node_completed", "node_id": "n1"},  # missing fields
        TimerFired(node_id="n"),
    ]
    with pytest.raises(ValidationError):
        await store.append_events(execution_id, batch)
    assert await store.get_events(execution_id) == []
    assert await store.latest_sequence(execution_id) == 0
    assert await count_events(store) == 0


async def test_append_events_all_or_nothing_on_sequence_conflict(store: StateStore) -> None:
    execution_id = await new_execution(store)
    await store.append_event(failed(execution_id))
    with pytest.raises(SequenceConflictError):
        await store.append_events(
            execution_id,
            [WorkflowFailed(error="a"), WorkflowFailed(error="b")],
            expected_sequence=0,
        )
    assert await store.latest_sequence(execution_id) == 1
    assert await count_events(store) == 1
    assert await store.append_events(execution_id, [WorkflowFailed(error="c")]) == [2]


async def test_append_events_missing_execution(store: StateStore) -> None:
    with pytest.raises(NotFoundError):
        await store.append_events(uuid.uuid4(), [WorkflowFailed(error="a")])
    assert await count_events(store) == 0


async def test_get_events_since_and_limit(store: StateStore) -> None:
    execution_id = await new_execution(store)
    await store.append_events(execution_id, [WorkflowFailed(error=str(i)) for i in range(1, 6)])
    events = await store.get_events(execution_id)
    assert [e.sequence for e in events] == [1, 2, 3, 4, 5]
    assert [e.kind.error for e in events] == ["1", "2", "3", "4", "5"]  # type: ignore[attr-defined]
    since = await store.get_events_since(execution_id, 2)
    assert [e.sequence for e in since] == [3, 4, 5]
    assert [e.sequence for e in await store.get_events_since(execution_id, 0)] == [1, 2, 3, 4, 5]
    assert [e.sequence for e in await store.get_events_since(execution_id, 1, limit=2)] == [2, 3]
    assert [e.sequence for e in await store.get_events_since(execution_id, 3, limit=10)] == [4, 5]
    assert await store.get_events_since(execution_id, 5) == []
    assert await store.get_events_since(execution_id, 99) == []


async def test_unknown_execution_reads_are_empty(store: StateStore) -> None:
    unknown = uuid.uuid4()
    assert await store.get_events(unknown) == []
    assert await store.get_events_since(unknown, 0) == []
    assert await store.get_events_since(str(unknown), 0, limit=5) == []
    assert await store.latest_sequence(unknown) == 0


async def test_latest_sequence_of_execution_without_events_is_zero(store: StateStore) -> None:
    execution_id = await new_execution(store)
    assert await store.latest_sequence(execution_id) == 0
    assert await store.get_events(execution_id) == []


async def test_typed_kinds_round_trip_as_their_classes(store: StateStore) -> None:
    execution_id = await new_execution(store)
    half = len(ALL_TYPED_KINDS) // 2
    for kind in ALL_TYPED_KINDS[:half]:
        await store.append_event(Event(execution_id=execution_id, kind=kind))
    await store.append_events(execution_id, ALL_TYPED_KINDS[half:])
    events = await store.get_events(execution_id)
    assert [e.sequence for e in events] == list(range(1, len(ALL_TYPED_KINDS) + 1))
    for stored, original in zip(events, ALL_TYPED_KINDS, strict=True):
        assert type(stored.kind) is type(original)
        assert stored.kind == original
        assert stored.kind.to_json_dict() == original.to_json_dict()


async def test_typed_kinds_given_as_json_objects(store: StateStore) -> None:
    execution_id = await new_execution(store)
    await store.append_events(execution_id, [kind.to_json_dict() for kind in ALL_TYPED_KINDS])
    events = await store.get_events(execution_id)
    assert [type(e.kind) for e in events] == [type(k) for k in ALL_TYPED_KINDS]
    assert [e.kind for e in events] == ALL_TYPED_KINDS


async def test_unknown_type_round_trips_as_custom_event(store: StateStore) -> None:
    execution_id = await new_execution(store)
    data = {"type": "engine_specific", "n": 1, "deep": {"list": [1, {"x": None}]}, "f": 0.5}
    await store.append_events(execution_id, [data])
    await store.append_event(
        Event(execution_id=execution_id, kind=CustomEvent(type="other_thing", k="v"))
    )
    first, second = await store.get_events(execution_id)
    assert type(first.kind) is CustomEvent
    assert first.kind.type == "engine_specific"
    assert first.kind.to_json_dict() == data
    assert type(second.kind) is CustomEvent
    assert second.kind.to_json_dict() == {"type": "other_thing", "k": "v"}


@pytest.mark.parametrize(
    "bad_kind",
    [
        {"type": "node_completed"},
        {"type": "node_started", "node_id": "n", "worker_id": "w", "attempt": "x"},
        {"type": "approval_received", "node_id": "n", "decision": "perhaps"},
    ],
    ids=["missing", "mistyped", "bad-literal"],
)
async def test_typed_kind_with_bad_fields_is_a_validation_error(
    store: StateStore, bad_kind: dict[str, Any]
) -> None:
    execution_id = await new_execution(store)
    with pytest.raises(ValidationError):
        await store.append_events(execution_id, [bad_kind])
    # The same through append_event, on a (mutable) Event whose kind was replaced.
    event = failed(execution_id)
    event.kind = bad_kind  # type: ignore[assignment]
    with pytest.raises(ValidationError):
        await store.append_event(event)
    assert await count_events(store) == 0
    assert await store.latest_sequence(execution_id) == 0


async def test_append_events_created_at_from_clock(make_store: StoreFactory) -> None:
    clock = Clock()
    store = await make_store(clock=clock)
    execution_id = await new_execution(store)
    clock.now = T0 + timedelta(minutes=5)
    await store.append_events(execution_id, [WorkflowFailed(error="a"), TimerFired(node_id="t")])
    events = await store.get_events(execution_id)
    assert [e.created_at for e in events] == [T0 + timedelta(minutes=5)] * 2
