"""Models read back from the database are built without validating them again
(``models.from_database``): they must be exactly the models validation would build."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import StoreFactory
from pydantic import BaseModel

from statestore import Event, StateStore, WorkflowExecution, WorkItem
from statestore.event_kinds import CustomEvent, NodeCompleted
from statestore.models import ApiToken, from_database

KIND = NodeCompleted(node_id="n", output={"a": [1, 2.5]}, state_patch={"k": "v"}, duration_ms=3)


def assert_validated(model: BaseModel) -> None:
    """``model`` equals the model validation builds from the same values, with the same
    fields set, and dumps (Python and JSON) the same way."""
    values = {name: getattr(model, name) for name in type(model).model_fields}
    validated = type(model)(**values)
    assert model == validated
    assert model.model_fields_set == validated.model_fields_set == set(values)
    assert model.model_dump() == validated.model_dump()
    assert model.model_dump_json() == validated.model_dump_json()
    assert type(model).model_validate_json(model.model_dump_json()) == model


async def test_models_read_back_are_the_validated_models(store: StateStore) -> None:
    """Executions, events (typed and custom kinds), claimed work items and tokens."""
    execution = WorkflowExecution(
        workflow_id="wf", workflow_version="1", initial_input={"x": [1, {"y": None}]}
    )
    await store.create_execution(execution)
    execution_id = execution.execution_id
    await store.append_event(Event(execution_id=execution_id, kind=KIND))
    await store.append_events(execution_id, [CustomEvent(type="custom.thing", value={"v": 1})])
    await store.enqueue_work_item(WorkItem(execution_id=execution_id, node_id="n", queue_type="q"))
    token, record = await store.create_token("reader", "viewer")

    read = await store.get_execution(execution_id)
    assert read is not None and read.initial_input == execution.initial_input
    assert_validated(read)
    events = await store.get_events(execution_id)
    assert [type(e.kind) for e in events] == [NodeCompleted, CustomEvent]
    assert events[0].kind == KIND
    for event in events:
        assert_validated(event)
    item = await store.claim_work_item("w", ["q"])
    assert item is not None and item.lease_fence == 1
    assert_validated(item)
    validated_token = await store.validate_token(token)
    assert validated_token is not None
    unused = {"last_used_at"}  # validation records the use
    assert validated_token.model_dump(exclude=unused) == record.model_dump(exclude=unused)
    assert_validated(validated_token)


def test_from_database_needs_every_field() -> None:
    """Values that do not name every field go through ``model_construct`` (defaults
    filled); a model built from every field is the validated one."""
    partial = from_database(WorkItem, execution_id=uuid.uuid4(), node_id="n", queue_type="q")
    assert partial.attempt == 0 and partial.model_fields_set == {
        "execution_id",
        "node_id",
        "queue_type",
    }
    full = WorkItem(execution_id=uuid.uuid4(), node_id="n", queue_type="q")
    values: dict[str, Any] = {name: getattr(full, name) for name in WorkItem.model_fields}
    assert from_database(WorkItem, **values) == full
    assert isinstance(from_database(ApiToken, **{}), ApiToken)  # nothing validated


@pytest.mark.parametrize("model", [Event, WorkflowExecution, WorkItem, ApiToken])
def test_read_models_have_no_hooks_that_construction_would_skip(model: type[BaseModel]) -> None:
    """The fast path sets ``__dict__`` directly: a model with a post-init hook or private
    attributes would lose them, so those go through ``model_construct``."""
    assert not model.__pydantic_post_init__
    assert not model.__private_attributes__


def same_types(read: Any, validated: Any, where: str) -> None:
    """``read`` and ``validated`` are equal and of the same type all the way down (an enum
    equals its string and 1 equals 1.0 and True, so equality alone would not show it);
    datetimes aware and in UTC in both."""
    if isinstance(read, uuid.UUID):
        # asyncpg decodes to its subclass of uuid.UUID, which validation keeps as it is.
        assert isinstance(validated, uuid.UUID) and read == validated, where
        return
    assert type(read) is type(validated), (where, type(read), type(validated))
    assert read == validated, where
    if isinstance(read, BaseModel):
        for name in type(read).model_fields:
            same_types(getattr(read, name), getattr(validated, name), f"{where}.{name}")
    elif isinstance(read, dict):
        assert list(read) == list(validated), where
        for key in read:
            same_types(read[key], validated[key], f"{where}[{key!r}]")
    elif isinstance(read, list | tuple):
        for n, (a, b) in enumerate(zip(read, validated, strict=True)):
            same_types(a, b, f"{where}[{n}]")
    elif isinstance(read, datetime):
        assert read.utcoffset() == timedelta(0) == validated.utcoffset(), where


def check_read(model: BaseModel, where: str) -> None:
    """``model`` as read is what validation builds from its JSON and from its values."""
    cls = type(model)
    same_types(model, cls.model_validate_json(model.model_dump_json()), where + " (json)")
    values = {name: getattr(model, name) for name in cls.model_fields}
    same_types(model, cls.model_validate(values), where + " (values)")


async def test_every_read_path_returns_the_validated_model(make_store: StoreFactory) -> None:
    """Each public read (and each write returning models read back) of executions, events,
    work items, dead letters and tokens, with the values that could decode differently
    (JSON floats/ints/bools/nulls/nesting, unicode, big integers, every nullable datetime
    set, delayed and leased items), on both databases."""
    store = await make_store(lease_duration=timedelta(milliseconds=500))
    now = datetime.now(UTC).replace(microsecond=123456)
    document = {"f": 1.5, "i": 2**53, "n": None, "b": True, "s": "é✓", "l": [1, 2.0, [{}]]}
    execution = WorkflowExecution(
        workflow_id="wf", workflow_version="1", initial_input=document, current_state=[1, "x"]
    )
    await store.create_execution(execution)
    eid = execution.execution_id
    await store.update_execution_status(eid, "running")
    await store.append_event(Event(execution_id=eid, kind=KIND))
    await store.append_events(eid, [CustomEvent(type="t", value=document)])
    items = [
        WorkItem(
            execution_id=eid,
            node_id=f"n{n}",
            queue_type="q",
            payload=document,
            priority=-5 + n,
            max_attempts=1 + n % 2,
            dedupe_key=f"k{n}" if n else None,
        )
        for n in range(4)
    ]
    for new in items:
        await store.enqueue_work_item(new)
    await store.enqueue_work_item(
        WorkItem(
            execution_id=eid, node_id="later", queue_type="q", available_at=now + timedelta(hours=1)
        )
    )
    reads: dict[str, list[BaseModel]] = {}
    first, second = await store.claim_work_items("w", ["q"], 2)
    reads["claim_work_items"] = [first, second]
    await store.fail_work_item(first.id, "boom", worker_id="w", lease_fence=first.lease_fence)
    await asyncio.sleep(0.6)  # the second lease expires
    reclaimed = await store.reclaim_expired_leases()
    assert reclaimed.retryable or reclaimed.exhausted
    reads["reclaim"] = [reclaimed, *reclaimed.retryable, *reclaimed.exhausted]
    third = await store.claim_work_item("w", ["q"])
    assert third is not None
    reads["claim_work_item"] = [third]
    reads["get_execution"] = [x for x in [await store.get_execution(eid)] if x]
    reads["list_executions"] = await store.list_executions()
    reads["get_events"] = await store.get_events(eid)
    reads["get_events_since"] = await store.get_events_since(eid, 0)
    reads["iter_events"] = [e async for e in store.iter_events(eid)]
    reads["read_feed"] = await store.read_feed()
    reads["iter_feed"] = [e async for e in store.iter_feed()]
    reads["get_work_item"] = [x for x in [await store.get_work_item(i.id) for i in items] if x]
    reads["list_work_items"] = await store.list_work_items(eid)
    reads["list_dead_letters"] = await store.list_dead_letters()
    token, _ = await store.create_token("reader", "viewer", expires_in=timedelta(days=1))
    reads["validate_token"] = [x for x in [await store.validate_token(token)] if x]
    reads["list_tokens"] = await store.list_tokens()
    started, _ = await store.start_execution(
        WorkflowExecution(workflow_id="wf", workflow_version="1"), idempotency_key="key"
    )
    again, created = await store.start_execution(
        WorkflowExecution(workflow_id="wf", workflow_version="1"), idempotency_key="key"
    )
    assert not created
    reads["start_execution"] = [started, again]
    successor = await store.continue_as_new(
        third.id, worker_id="w", lease_fence=third.lease_fence, state={"carried": 1.0}
    )
    reads["continue_as_new"] = [successor]
    reads["segment_chain"] = await store.segment_chain(successor.execution_id)
    for where, models in reads.items():
        assert models, where
        for model in models:
            check_read(model, where)


async def test_rows_from_before_later_migrations_read_as_validated_models(
    store: StateStore,
) -> None:
    """Rows whose later columns (segments, feed positions, dedupe and idempotency keys)
    were added by the upgrade, not written by the store: read back as validation builds."""
    execution = WorkflowExecution(workflow_id="wf", workflow_version="1")
    await store.create_execution(execution)
    eid = execution.execution_id
    await store.append_events(eid, [CustomEvent(type="old"), CustomEvent(type="older")])
    await store.enqueue_work_item(WorkItem(execution_id=eid, node_id="n", queue_type="q"))
    await store.create_token("reader", "viewer")
    await store.downgrade("0002")
    await store.migrate()
    read = await store.get_execution(eid)
    assert read is not None and read.segment == 0 and read.parent_execution_id is None
    models: list[BaseModel] = [read, *await store.list_executions()]
    events = await store.read_feed()
    assert len(events) == 2 and all(e.position for e in events)
    models += [*events, *await store.get_events(eid)]
    claimed = await store.claim_work_item("w", ["q"])
    assert claimed is not None and claimed.dedupe_key is None
    models += [claimed, *await store.list_work_items(eid), *await store.list_tokens()]
    for model in models:
        check_read(model, type(model).__name__)
