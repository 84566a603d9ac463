"""Event kinds: what happened in an execution.

A kind serialises as one JSON object, internally tagged by ``"type"`` (snake_case), with its
fields beside the tag: ``{"type": "node_completed", "node_id": "n1", ...}``. That is the JSON
of jamjet-state, the Rust state store this package's contract was taken from (a serde
"internally tagged" enum). The lifecycle kinds are typed models; any other ``type`` is kept
verbatim as a :class:`CustomEvent`, so engines can add kinds of their own and old readers
never break on a new kind.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, JsonValue

from statestore.errors import ValidationError
from statestore.validation import json_error, pydantic_error

FieldTypes = Mapping[str, type]
"""Field name → the Python type its JSON form is parsed back into."""


class BaseEventKind(BaseModel):
    """Common base of every event kind. ``type`` is the tag."""

    # "constants": NaN/Infinity survive model_dump(mode="json") as floats, so the store's
    # JSON check refuses them instead of pydantic silently turning them into null.
    model_config = ConfigDict(extra="allow", ser_json_inf_nan="constants")

    type: str
    # Optional fields jamjet-state omits from JSON when they are absent (instead of null).
    _omit_when_none: ClassVar[frozenset[str]] = frozenset()

    def to_json_dict(self) -> dict[str, Any]:
        """The kind as one JSON object: ``"type"`` and the fields beside it, as jamjet-state
        writes it."""
        try:
            data = self.model_dump(mode="json")
        except ValueError as exc:  # e.g. pydantic cannot encode a lone surrogate in a key
            raise json_error("event kind", exc) from None
        for field in self._omit_when_none:
            if data.get(field, 0) is None:
                del data[field]
        return data

    def json_typed_fields(self) -> FieldTypes:
        """Fields that may hold a Python value JSON has no type for (a datetime), because
        reading the event back parses them with the typed kind named by ``type``. Empty for
        an engine's own kinds: they read back as :class:`CustomEvent`, whose values are
        plain JSON, so every value in them must already be JSON
        (:func:`statestore.validation.check_json_shape`)."""
        typed = KIND_BY_TYPE.get(self.type)
        if typed is None or not isinstance(self, typed):
            return {}
        return _TYPED_FIELDS[typed]


class CustomEvent(BaseEventKind):
    """Any kind whose ``type`` is not one of the typed lifecycle kinds; kept verbatim."""


class WorkflowStarted(BaseEventKind):
    type: Literal["workflow_started"] = "workflow_started"
    workflow_id: str
    workflow_version: str
    initial_input: JsonValue


class WorkflowCompleted(BaseEventKind):
    type: Literal["workflow_completed"] = "workflow_completed"
    final_state: JsonValue


class WorkflowFailed(BaseEventKind):
    type: Literal["workflow_failed"] = "workflow_failed"
    error: str


class WorkflowCancelled(BaseEventKind):
    type: Literal["workflow_cancelled"] = "workflow_cancelled"
    reason: str | None = None


class NodeScheduled(BaseEventKind):
    type: Literal["node_scheduled"] = "node_scheduled"
    node_id: str
    queue_type: str


class NodeStarted(BaseEventKind):
    type: Literal["node_started"] = "node_started"
    node_id: str
    worker_id: str
    attempt: int


class NodeCompleted(BaseEventKind):
    type: Literal["node_completed"] = "node_completed"
    node_id: str
    output: JsonValue
    state_patch: JsonValue
    duration_ms: int
    gen_ai_system: str | None = None
    gen_ai_model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None
    cost_usd: float | None = None
    provenance: JsonValue | None = None

    _omit_when_none: ClassVar[frozenset[str]] = frozenset(
        {
            "gen_ai_system",
            "gen_ai_model",
            "input_tokens",
            "output_tokens",
            "finish_reason",
            "cost_usd",
            "provenance",
        }
    )


class NodeFailed(BaseEventKind):
    type: Literal["node_failed"] = "node_failed"
    node_id: str
    error: str
    attempt: int
    retryable: bool


class NodeSkipped(BaseEventKind):
    type: Literal["node_skipped"] = "node_skipped"
    node_id: str
    reason: str


class NodeCancelled(BaseEventKind):
    type: Literal["node_cancelled"] = "node_cancelled"
    node_id: str


class RetryScheduled(BaseEventKind):
    type: Literal["retry_scheduled"] = "retry_scheduled"
    node_id: str
    attempt: int
    delay_ms: int


class InterruptRaised(BaseEventKind):
    type: Literal["interrupt_raised"] = "interrupt_raised"
    node_id: str
    reason: str
    state_for_review: JsonValue


class ApprovalReceived(BaseEventKind):
    type: Literal["approval_received"] = "approval_received"
    node_id: str
    decision: Literal["approved", "rejected"]
    user_id: str | None = None
    comment: str | None = None
    state_patch: JsonValue | None = None


class TimerCreated(BaseEventKind):
    type: Literal["timer_created"] = "timer_created"
    node_id: str
    fire_at: datetime


class TimerFired(BaseEventKind):
    type: Literal["timer_fired"] = "timer_fired"
    node_id: str


class ExternalEventReceived(BaseEventKind):
    type: Literal["external_event_received"] = "external_event_received"
    correlation_key: str
    payload: JsonValue


class ChildWorkflowStarted(BaseEventKind):
    type: Literal["child_workflow_started"] = "child_workflow_started"
    node_id: str
    child_execution_id: str


class ChildWorkflowCompleted(BaseEventKind):
    type: Literal["child_workflow_completed"] = "child_workflow_completed"
    node_id: str
    child_execution_id: str
    output: JsonValue


class ChildWorkflowFailed(BaseEventKind):
    type: Literal["child_workflow_failed"] = "child_workflow_failed"
    node_id: str
    child_execution_id: str
    error: str


TYPED_KINDS: tuple[type[BaseEventKind], ...] = (
    WorkflowStarted,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowCancelled,
    NodeScheduled,
    NodeStarted,
    NodeCompleted,
    NodeFailed,
    NodeSkipped,
    NodeCancelled,
    RetryScheduled,
    InterruptRaised,
    ApprovalReceived,
    TimerCreated,
    TimerFired,
    ExternalEventReceived,
    ChildWorkflowStarted,
    ChildWorkflowCompleted,
    ChildWorkflowFailed,
)

KIND_BY_TYPE: dict[str, type[BaseEventKind]] = {
    kind.model_fields["type"].default: kind for kind in TYPED_KINDS
}
# Declared datetime fields: JSON holds their ISO text, the kind's model parses it back.
_TYPED_FIELDS: dict[type[BaseEventKind], FieldTypes] = {
    kind: {name: datetime for name, f in kind.model_fields.items() if f.annotation is datetime}
    for kind in TYPED_KINDS
}


def parse_event_kind(value: object) -> BaseEventKind:
    """Turn a kind model or its JSON object into the right kind model.

    Raises :class:`statestore.errors.ValidationError` for a typed kind with missing or
    mistyped fields, or for anything that is not an object with a string ``"type"``.
    """
    if isinstance(value, BaseEventKind):
        if type(value) is not CustomEvent or value.type not in KIND_BY_TYPE:
            return value
        value = value.to_json_dict()  # a CustomEvent posing as a typed kind: check it
    if not isinstance(value, dict):
        raise ValidationError(f"event kind must be an object, got {type(value).__name__}")
    tag = value.get("type")
    if not isinstance(tag, str) or not tag:
        raise ValidationError('event kind needs a non-empty string "type"')
    kind_type = KIND_BY_TYPE.get(tag, CustomEvent)
    try:
        return kind_type.model_validate(value)
    except pydantic.ValidationError as exc:
        raise pydantic_error(f"event kind {tag!r}", exc) from None


def load_stored_kind(data: dict[str, Any] | str, event_type: str | None = None) -> BaseEventKind:
    """A kind read back from the database: its JSON object, or the JSON text with the row's
    ``event_type`` (parsed by the typed model directly). Never fails: a stored object that
    no longer fits its typed kind is returned as a :class:`CustomEvent`, so one odd row
    cannot break every read of an execution's history."""
    if isinstance(data, str):
        kind_type = KIND_BY_TYPE.get(event_type or "", CustomEvent)
        try:
            kind = kind_type.model_validate_json(data)
            if kind.type == event_type or kind_type is CustomEvent:
                return kind
        except pydantic.ValidationError:
            pass
        data = json.loads(data)
    if not isinstance(data, dict):  # not written by the store; keep it readable
        return CustomEvent(type=event_type or "unknown", value=data)
    kind_type = KIND_BY_TYPE.get(data.get("type", ""), CustomEvent)
    try:
        return kind_type.model_validate(data)
    except pydantic.ValidationError:
        return CustomEvent.model_validate(data)


def _validate_kind(value: object) -> BaseEventKind:
    try:
        return parse_event_kind(value)
    except ValidationError as exc:
        # Inside a pydantic model, surface as a pydantic error so model construction fails
        # the usual way; the store turns it back into statestore's ValidationError.
        raise ValueError(str(exc)) from None


def _serialize_kind(value: BaseEventKind) -> dict[str, Any]:
    return value.to_json_dict()


EventKind = Annotated[
    BaseEventKind,
    pydantic.PlainValidator(_validate_kind),
    pydantic.PlainSerializer(_serialize_kind, return_type=dict[str, Any]),
]
"""Annotated type of ``Event.kind``: any typed kind or a :class:`CustomEvent`."""
