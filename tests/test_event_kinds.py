"""Event kinds: jamjet-state's internally tagged JSON form (the store the contract was taken
from), parsing, and Event JSON round trips.
No database needed."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

import statestore
from statestore import (
    ApprovalReceived,
    BaseEventKind,
    ChildWorkflowCompleted,
    ChildWorkflowFailed,
    ChildWorkflowStarted,
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
    RetryScheduled,
    TimerCreated,
    TimerFired,
    ValidationError,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
    parse_event_kind,
)

FIRE_AT = "2024-05-01T12:30:00Z"

# One JSON object per typed kind, exactly as jamjet-state serialises it.
KIND_JSON: dict[type[BaseEventKind], dict[str, Any]] = {
    WorkflowStarted: {
        "type": "workflow_started",
        "workflow_id": "wf",
        "workflow_version": "1",
        "initial_input": {"a": 1},
    },
    WorkflowCompleted: {"type": "workflow_completed", "final_state": {"done": True}},
    WorkflowFailed: {"type": "workflow_failed", "error": "boom"},
    WorkflowCancelled: {"type": "workflow_cancelled", "reason": "user"},
    NodeScheduled: {"type": "node_scheduled", "node_id": "n1", "queue_type": "llm"},
    NodeStarted: {"type": "node_started", "node_id": "n1", "worker_id": "w1", "attempt": 1},
    NodeCompleted: {
        "type": "node_completed",
        "node_id": "n1",
        "output": {"text": "hi"},
        "state_patch": {"k": [1, 2]},
        "duration_ms": 12,
    },
    NodeFailed: {
        "type": "node_failed",
        "node_id": "n1",
        "error": "timeout",
        "attempt": 2,
        "retryable": True,
    },
    NodeSkipped: {"type": "node_skipped", "node_id": "n2", "reason": "branch not taken"},
    NodeCancelled: {"type": "node_cancelled", "node_id": "n3"},
    RetryScheduled: {"type": "retry_scheduled", "node_id": "n1", "attempt": 3, "delay_ms": 500},
    InterruptRaised: {
        "type": "interrupt_raised",
        "node_id": "n4",
        "reason": "needs review",
        "state_for_review": {"draft": "text"},
    },
    ApprovalReceived: {
        "type": "approval_received",
        "node_id": "n4",
        "decision": "approved",
        "user_id": "u1",
        "comment": "ok",
        "state_patch": {"approved": True},
    },
    TimerCreated: {"type": "timer_created", "node_id": "n5", "fire_at": FIRE_AT},
    TimerFired: {"type": "timer_fired", "node_id": "n5"},
    ExternalEventReceived: {
        "type": "external_event_received",
        "correlation_key": "order-7",
        "payload": [1, "two", None],
    },
    ChildWorkflowStarted: {
        "type": "child_workflow_started",
        "node_id": "n6",
        "child_execution_id": "c-1",
    },
    ChildWorkflowCompleted: {
        "type": "child_workflow_completed",
        "node_id": "n6",
        "child_execution_id": "c-1",
        "output": {"r": 1},
    },
    ChildWorkflowFailed: {
        "type": "child_workflow_failed",
        "node_id": "n6",
        "child_execution_id": "c-1",
        "error": "child broke",
    },
}

TYPED = list(KIND_JSON)


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def normalised(data: dict[str, Any]) -> dict[str, Any]:
    """JSON with datetimes compared as instants (``Z`` vs ``+00:00`` is the same time)."""
    out = dict(data)
    if "fire_at" in out:
        out["fire_at"] = datetime.fromisoformat(str(out["fire_at"]).replace("Z", "+00:00"))
    return out


def test_every_typed_kind_is_exported_and_covered() -> None:
    assert len(TYPED) == 19
    for kind in TYPED:
        assert getattr(statestore, kind.__name__) is kind
        assert issubclass(kind, BaseEventKind)
        assert KIND_JSON[kind]["type"] == snake(kind.__name__)


def test_node_completed_json_is_internally_tagged_without_absent_telemetry() -> None:
    kind = NodeCompleted(node_id="n1", output={"text": "hi"}, state_patch={"k": 1}, duration_ms=12)
    assert kind.to_json_dict() == {
        "type": "node_completed",
        "node_id": "n1",
        "output": {"text": "hi"},
        "state_patch": {"k": 1},
        "duration_ms": 12,
    }


def test_node_completed_json_keeps_present_telemetry() -> None:
    kind = NodeCompleted(
        node_id="n1",
        output=None,
        state_patch={},
        duration_ms=5,
        gen_ai_system="openai",
        gen_ai_model="gpt",
        input_tokens=10,
        output_tokens=20,
        finish_reason="stop",
        cost_usd=0.5,
        provenance={"src": "x"},
    )
    assert kind.to_json_dict() == {
        "type": "node_completed",
        "node_id": "n1",
        "output": None,
        "state_patch": {},
        "duration_ms": 5,
        "gen_ai_system": "openai",
        "gen_ai_model": "gpt",
        "input_tokens": 10,
        "output_tokens": 20,
        "finish_reason": "stop",
        "cost_usd": 0.5,
        "provenance": {"src": "x"},
    }
    # Only the missing ones are omitted.
    partial = NodeCompleted(
        node_id="n1", output=1, state_patch={}, duration_ms=5, input_tokens=3
    ).to_json_dict()
    assert partial == {
        "type": "node_completed",
        "node_id": "n1",
        "output": 1,
        "state_patch": {},
        "duration_ms": 5,
        "input_tokens": 3,
    }


def test_workflow_cancelled_keeps_null_reason() -> None:
    assert WorkflowCancelled(reason=None).to_json_dict() == {
        "type": "workflow_cancelled",
        "reason": None,
    }
    assert WorkflowCancelled().to_json_dict() == {"type": "workflow_cancelled", "reason": None}
    assert WorkflowCancelled(reason="r").to_json_dict() == {
        "type": "workflow_cancelled",
        "reason": "r",
    }


@pytest.mark.parametrize("kind_type", TYPED, ids=lambda k: k.__name__)
def test_parse_event_kind_for_every_typed_kind(kind_type: type[BaseEventKind]) -> None:
    data = KIND_JSON[kind_type]
    parsed = parse_event_kind(data)
    assert type(parsed) is kind_type
    assert parsed.type == data["type"]
    assert normalised(parsed.to_json_dict()) == normalised(data)
    # JSON text round trip and re-parsing an instance give an equal kind.
    again = parse_event_kind(json.loads(json.dumps(parsed.to_json_dict())))
    assert type(again) is kind_type and again == parsed
    assert parse_event_kind(parsed) == parsed


def test_timer_created_fire_at_is_a_datetime() -> None:
    parsed = parse_event_kind(KIND_JSON[TimerCreated])
    assert isinstance(parsed, TimerCreated)
    assert parsed.fire_at == datetime(2024, 5, 1, 12, 30, tzinfo=UTC)


def test_unknown_type_is_a_custom_event_kept_verbatim() -> None:
    data = {"type": "my_engine_thing", "a": 1, "nested": {"b": [1, None, "x"]}, "f": 1.5}
    parsed = parse_event_kind(data)
    assert type(parsed) is CustomEvent
    assert parsed.type == "my_engine_thing"
    assert parsed.to_json_dict() == data


@pytest.mark.parametrize(
    "data",
    [
        {"type": "node_completed"},
        {"type": "node_completed", "node_id": "n1", "output": 1, "state_patch": {}},
        {"type": "node_started", "node_id": "n1", "worker_id": "w", "attempt": "first"},
        {"type": "node_failed", "node_id": "n1", "error": "e", "attempt": 1, "retryable": "?"},
        {"type": "workflow_failed"},
        {"type": "approval_received", "node_id": "n", "decision": "maybe"},
        {"type": "timer_created", "node_id": "n", "fire_at": "not a time"},
    ],
    ids=[
        "no-fields",
        "missing-duration",
        "attempt-str",
        "retryable-str",
        "missing-error",
        "bad-decision",
        "bad-fire-at",
    ],
)
def test_typed_kind_with_missing_or_mistyped_fields_is_refused(data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        parse_event_kind(data)


@pytest.mark.parametrize("value", [None, 5, "node_completed", [1], {"no": "type"}, {"type": 3}])
def test_parse_event_kind_refuses_non_kinds(value: object) -> None:
    with pytest.raises(ValidationError):
        parse_event_kind(value)


def test_statestore_validation_error_is_the_one_raised() -> None:
    with pytest.raises(statestore.StateStoreError) as info:
        parse_event_kind({"type": "node_completed"})
    assert type(info.value) is ValidationError


@pytest.mark.parametrize(
    "kind",
    [
        NodeCompleted(node_id="n1", output={"o": 1}, state_patch={"s": 2}, duration_ms=3),
        WorkflowCancelled(),
        TimerCreated(node_id="n", fire_at=datetime(2024, 5, 1, 12, 30, tzinfo=UTC)),
        CustomEvent(type="custom_thing", payload={"x": [1, 2]}, note="n"),
    ],
    ids=["node_completed", "workflow_cancelled", "timer_created", "custom"],
)
def test_event_json_round_trip(kind: BaseEventKind) -> None:
    event = Event(
        execution_id=uuid.uuid4(),
        sequence=4,
        kind=kind,
        created_at=datetime(2024, 5, 1, 12, 0, 1, 5000, tzinfo=UTC),
        tenant_id="acme",
    )
    dumped = event.model_dump(mode="json")
    assert dumped["id"] == str(event.id)
    assert dumped["execution_id"] == str(event.execution_id)
    assert dumped["sequence"] == 4
    assert dumped["tenant_id"] == "acme"
    assert normalised(dumped["kind"]) == normalised(kind.to_json_dict())
    assert dumped["kind"]["type"] == kind.type
    # Through JSON text and back.
    restored = Event.model_validate(json.loads(json.dumps(dumped)))
    assert restored == event
    assert type(restored.kind) is type(kind)
    assert Event.model_validate_json(event.model_dump_json()) == event


def test_event_json_omits_absent_node_completed_telemetry() -> None:
    event = Event(
        execution_id=uuid.uuid4(),
        kind=NodeCompleted(node_id="n1", output=1, state_patch={}, duration_ms=3),
    )
    assert event.model_dump(mode="json")["kind"] == {
        "type": "node_completed",
        "node_id": "n1",
        "output": 1,
        "state_patch": {},
        "duration_ms": 3,
    }


def test_event_accepts_kind_as_json_object() -> None:
    event = Event.model_validate({"execution_id": str(uuid.uuid4()), "kind": KIND_JSON[NodeFailed]})
    assert isinstance(event.kind, NodeFailed)
    assert event.kind.retryable is True
    assert event.sequence == 0 and event.tenant_id == "default"
