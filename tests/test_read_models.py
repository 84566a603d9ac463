"""Models read back from the database are built without validating them again
(``models.from_database``): they must be exactly the models validation would build."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
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
