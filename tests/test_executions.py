"""Executions: creation, status transitions, current state, array appends, listing."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone

import pytest
from conftest import T0, Clock

from statestore import (
    ConflictError,
    InvalidTransitionError,
    NotFoundError,
    StateStore,
    ValidationError,
    WorkflowExecution,
    WorkflowStatus,
)

pytestmark = pytest.mark.memory  # also on sqlite:///:memory: (conftest)

StoreFactory = Callable[..., Awaitable[StateStore]]
TERMINAL = [s for s in WorkflowStatus if s.is_terminal]
ACTIVE = [s for s in WorkflowStatus if s.is_active]


def new_execution(workflow_id: str = "wf", **kw: object) -> WorkflowExecution:
    return WorkflowExecution(workflow_id=workflow_id, workflow_version="1", **kw)


async def created(store: StateStore, **kw: object) -> WorkflowExecution:
    execution = new_execution(**kw)  # type: ignore[arg-type]
    await store.create_execution(execution)
    return execution


async def fetch(store: StateStore, execution_id: uuid.UUID) -> WorkflowExecution:
    found = await store.get_execution(execution_id)
    assert found is not None
    return found


# ---------------------------------------------------------------- create / get


def test_enum_values_and_predicates() -> None:
    assert WorkflowStatus.LIMIT_EXCEEDED == "limit_exceeded"
    assert {s.value for s in TERMINAL} == {"completed", "failed", "cancelled", "limit_exceeded"}
    assert {s.value for s in ACTIVE} == {"pending", "running", "paused"}


async def test_create_and_get_round_trip(store: StateStore) -> None:
    execution = new_execution(
        workflow_id="orders",
        status=WorkflowStatus.RUNNING,
        initial_input={"order": 7, "items": ["a", "b"], "meta": {"x": None}},
        current_state={"step": 2, "ratio": 0.25, "flag": False},
    )
    await store.create_execution(execution)
    found = await store.get_execution(execution.execution_id)
    assert isinstance(found, WorkflowExecution)
    assert found.execution_id == execution.execution_id
    assert found.workflow_id == "orders" and found.workflow_version == "1"
    assert found.status is WorkflowStatus.RUNNING
    assert found.initial_input == {"order": 7, "items": ["a", "b"], "meta": {"x": None}}
    assert found.current_state == {"step": 2, "ratio": 0.25, "flag": False}
    assert found.tenant_id == "default"
    assert found.completed_at is None
    # A string id works too.
    by_str = await store.get_execution(str(execution.execution_id))
    assert by_str is not None and by_str.execution_id == execution.execution_id


async def test_defaults(make_store: StoreFactory) -> None:
    store = await make_store(clock=Clock())
    execution = new_execution()
    await store.create_execution(execution)
    found = await fetch(store, execution.execution_id)
    assert isinstance(found.execution_id, uuid.UUID)
    assert found.status is WorkflowStatus.PENDING
    assert found.initial_input == {} and found.current_state == {}
    assert found.started_at == T0 and found.updated_at == T0
    assert found.completed_at is None
    assert found.tenant_id == "default"


async def test_clock_times_are_returned_as_utc(make_store: StoreFactory) -> None:
    plus_two = timezone(timedelta(hours=2))
    local = datetime(2024, 5, 1, 14, 0, 0, tzinfo=plus_two)
    store = await make_store(clock=lambda: local)
    execution = await created(store)
    found = await fetch(store, execution.execution_id)
    assert found.started_at == T0
    assert found.started_at.utcoffset() == timedelta(0)
    assert found.updated_at.utcoffset() == timedelta(0)


async def test_duplicate_id_is_a_conflict(store: StateStore) -> None:
    execution = await created(store, workflow_id="first")
    duplicate = new_execution(workflow_id="second", execution_id=execution.execution_id)
    with pytest.raises(ConflictError):
        await store.create_execution(duplicate)
    found = await fetch(store, execution.execution_id)
    assert found.workflow_id == "first"
    assert len(await store.list_executions()) == 1


async def test_get_missing_is_none(store: StateStore) -> None:
    assert await store.get_execution(uuid.uuid4()) is None
    assert await store.get_execution(str(uuid.uuid4())) is None


# ---------------------------------------------------------------- status


async def test_status_update_sets_updated_at_from_clock(make_store: StoreFactory) -> None:
    clock = Clock()
    store = await make_store(clock=clock)
    execution = await created(store)
    t1 = clock.advance(10)
    await store.update_execution_status(execution.execution_id, WorkflowStatus.RUNNING)
    found = await fetch(store, execution.execution_id)
    assert found.status is WorkflowStatus.RUNNING
    assert found.started_at == T0 and found.updated_at == t1
    assert found.completed_at is None
    t2 = clock.advance(5)
    await store.update_execution_status(execution.execution_id, "paused")
    found = await fetch(store, execution.execution_id)
    assert found.status is WorkflowStatus.PAUSED and found.updated_at == t2
    assert found.completed_at is None


async def test_terminal_status_sets_completed_at(make_store: StoreFactory) -> None:
    clock = Clock()
    store = await make_store(clock=clock)
    for terminal in TERMINAL:
        execution = await created(store, status=WorkflowStatus.RUNNING)
        t1 = clock.advance(30)
        await store.update_execution_status(execution.execution_id, terminal)
        found = await fetch(store, execution.execution_id)
        assert found.status is terminal
        assert found.completed_at == t1 and found.updated_at == t1
        assert found.started_at == t1 - timedelta(seconds=30)


async def test_leaving_a_terminal_status_is_refused(make_store: StoreFactory) -> None:
    clock = Clock()
    store = await make_store(clock=clock)
    for terminal in TERMINAL:
        execution = await created(store)
        t1 = clock.advance(1)
        await store.update_execution_status(execution.execution_id, terminal)
        clock.advance(1)
        for target in WorkflowStatus:
            if target is terminal:
                continue
            with pytest.raises(InvalidTransitionError):
                await store.update_execution_status(execution.execution_id, target)
        found = await fetch(store, execution.execution_id)
        assert found.status is terminal, terminal
        assert found.updated_at == t1 and found.completed_at == t1


async def test_same_status_again_is_a_noop(make_store: StoreFactory) -> None:
    clock = Clock()
    store = await make_store(clock=clock)
    execution = await created(store)
    t1 = clock.advance(1)
    await store.update_execution_status(execution.execution_id, WorkflowStatus.RUNNING)
    clock.advance(1)
    await store.update_execution_status(execution.execution_id, WorkflowStatus.RUNNING)
    found = await fetch(store, execution.execution_id)
    assert found.status is WorkflowStatus.RUNNING and found.updated_at == t1
    # Also for a terminal status: no error, completed_at unchanged.
    t3 = clock.advance(1)
    await store.update_execution_status(execution.execution_id, WorkflowStatus.COMPLETED)
    clock.advance(1)
    await store.update_execution_status(execution.execution_id, WorkflowStatus.COMPLETED)
    found = await fetch(store, execution.execution_id)
    assert found.status is WorkflowStatus.COMPLETED
    assert found.completed_at == t3 and found.updated_at == t3


async def test_expected_matching_applies(make_store: StoreFactory) -> None:
    clock = Clock()
    store = await make_store(clock=clock)
    execution = await created(store)
    t1 = clock.advance(1)
    await store.update_execution_status(
        execution.execution_id, WorkflowStatus.RUNNING, expected=WorkflowStatus.PENDING
    )
    found = await fetch(store, execution.execution_id)
    assert found.status is WorkflowStatus.RUNNING and found.updated_at == t1


async def test_expected_mismatch_changes_nothing(make_store: StoreFactory) -> None:
    clock = Clock()
    store = await make_store(clock=clock)
    execution = await created(store, status=WorkflowStatus.RUNNING)
    clock.advance(1)
    with pytest.raises(InvalidTransitionError):
        await store.update_execution_status(
            execution.execution_id, WorkflowStatus.COMPLETED, expected=WorkflowStatus.PAUSED
        )
    with pytest.raises(InvalidTransitionError):
        # Even when the target equals the current status, a wrong expectation is refused.
        await store.update_execution_status(
            execution.execution_id, WorkflowStatus.RUNNING, expected="pending"
        )
    found = await fetch(store, execution.execution_id)
    assert found.status is WorkflowStatus.RUNNING
    assert found.updated_at == T0 and found.completed_at is None


async def test_update_status_missing_is_not_found(store: StateStore) -> None:
    with pytest.raises(NotFoundError):
        await store.update_execution_status(uuid.uuid4(), WorkflowStatus.RUNNING)
    with pytest.raises(NotFoundError):
        await store.update_execution_status(
            uuid.uuid4(), WorkflowStatus.RUNNING, expected=WorkflowStatus.PENDING
        )
    assert await store.list_executions() == []


# ---------------------------------------------------------------- current state


async def test_update_current_state_replaces(store: StateStore) -> None:
    execution = await created(store, current_state={"old": 1, "keep": "no"})
    await store.update_execution_current_state(execution.execution_id, {"new": [1, 2, {"x": 3}]})
    found = await fetch(store, execution.execution_id)
    assert found.current_state == {"new": [1, 2, {"x": 3}]}
    await store.update_execution_current_state(str(execution.execution_id), [1, "two"])
    assert (await fetch(store, execution.execution_id)).current_state == [1, "two"]


async def test_update_current_state_missing_is_not_found(store: StateStore) -> None:
    with pytest.raises(NotFoundError):
        await store.update_execution_current_state(uuid.uuid4(), {"a": 1})


async def test_patch_append_array_creates_then_appends(store: StateStore) -> None:
    execution = await created(store, current_state={"other": {"k": "v"}})
    await store.patch_append_array(execution.execution_id, "log", {"n": 1})
    found = await fetch(store, execution.execution_id)
    assert found.current_state == {"other": {"k": "v"}, "log": [{"n": 1}]}
    await store.patch_append_array(execution.execution_id, "log", "two")
    await store.patch_append_array(execution.execution_id, "log", [3])
    found = await fetch(store, execution.execution_id)
    assert found.current_state == {"other": {"k": "v"}, "log": [{"n": 1}, "two", [3]]}


async def test_patch_append_array_appends_to_existing_list(store: StateStore) -> None:
    execution = await created(store, current_state={"items": [1, 2]})
    await store.patch_append_array(execution.execution_id, "items", 3)
    assert (await fetch(store, execution.execution_id)).current_state == {"items": [1, 2, 3]}


NOT_APPENDABLE = [
    [1, 2],
    "text",
    None,
    {"items": 5},
    {"items": {"a": 1}},
    {"items": "abc"},
    {"items": None},
]


async def test_patch_append_array_refuses_non_object_or_non_list(
    make_store: StoreFactory,
) -> None:
    clock = Clock()
    store = await make_store(clock=clock)
    for state in NOT_APPENDABLE:
        execution = await created(store)
        await store.update_execution_current_state(execution.execution_id, state)
        before = await fetch(store, execution.execution_id)
        clock.advance(1)
        with pytest.raises(ValidationError):
            await store.patch_append_array(execution.execution_id, "items", "x")
        after = await fetch(store, execution.execution_id)
        assert after.current_state == state
        assert after.updated_at == before.updated_at


async def test_patch_append_array_missing_is_not_found(store: StateStore) -> None:
    with pytest.raises(NotFoundError):
        await store.patch_append_array(uuid.uuid4(), "log", 1)


# ---------------------------------------------------------------- listing


async def test_list_newest_updated_first(make_store: StoreFactory) -> None:
    clock = Clock()
    store = await make_store(clock=clock)
    first = await created(store)
    clock.advance(1)
    second = await created(store)
    clock.advance(1)
    third = await created(store)
    listed = await store.list_executions()
    assert [e.execution_id for e in listed] == [
        third.execution_id,
        second.execution_id,
        first.execution_id,
    ]
    # An update moves the oldest to the front.
    clock.advance(1)
    await store.update_execution_status(first.execution_id, WorkflowStatus.RUNNING)
    listed = await store.list_executions()
    assert [e.execution_id for e in listed] == [
        first.execution_id,
        third.execution_id,
        second.execution_id,
    ]


async def test_list_ties_broken_by_id(make_store: StoreFactory) -> None:
    store = await make_store(clock=Clock())
    ids = [uuid.uuid4() for _ in range(8)]
    for execution_id in ids:
        await created(store, execution_id=execution_id)
    listed = await store.list_executions()
    assert [e.execution_id for e in listed] == sorted(ids)


async def test_list_filters(store: StateStore) -> None:
    a1 = await created(store, workflow_id="a")
    a2 = await created(store, workflow_id="a", status=WorkflowStatus.RUNNING)
    b1 = await created(store, workflow_id="b", status=WorkflowStatus.RUNNING)
    await created(store, workflow_id="b")

    def ids(executions: list[WorkflowExecution]) -> set[uuid.UUID]:
        return {e.execution_id for e in executions}

    running = await store.list_executions(WorkflowStatus.RUNNING)
    assert ids(running) == {a2.execution_id, b1.execution_id}
    assert all(e.status is WorkflowStatus.RUNNING for e in running)
    assert ids(await store.list_executions(status="running")) == ids(running)
    assert len(await store.list_executions(workflow_id="a")) == 2
    assert ids(await store.list_executions(workflow_id="a")) == {a1.execution_id, a2.execution_id}
    assert ids(await store.list_executions(WorkflowStatus.RUNNING, workflow_id="a")) == {
        a2.execution_id
    }
    assert await store.list_executions(WorkflowStatus.COMPLETED) == []
    assert await store.list_executions(workflow_id="zzz") == []
    assert len(await store.list_executions()) == 4


async def test_list_limit_and_bounds(store: StateStore) -> None:
    for _ in range(3):
        await created(store)
    assert len(await store.list_executions(limit=1)) == 1
    assert len(await store.list_executions(limit=2)) == 2
    assert len(await store.list_executions(limit=1000)) == 3
    for bad in (0, 1001, -1):
        with pytest.raises(ValidationError):
            await store.list_executions(limit=bad)
    with pytest.raises(ValidationError):
        await store.list_executions(offset=-1)


async def test_offset_paging_is_stable(make_store: StoreFactory) -> None:
    clock = Clock()
    store = await make_store(clock=clock)
    # Groups of equal updated_at, so paging must rely on the id tie-break.
    for group in range(3):
        for _ in range(4):
            await created(store)
        clock.advance(1 + group)
    full = await store.list_executions(limit=1000)
    assert len(full) == 12
    pages: list[WorkflowExecution] = []
    for offset in range(0, 15, 5):
        pages.extend(await store.list_executions(limit=5, offset=offset))
    assert [e.execution_id for e in pages] == [e.execution_id for e in full]
    assert len({e.execution_id for e in pages}) == 12
    assert await store.list_executions(offset=12) == []
    # Same query twice: same answer.
    assert [e.execution_id for e in await store.list_executions(limit=3, offset=4)] == [
        e.execution_id for e in full[4:7]
    ]
