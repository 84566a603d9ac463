"""The materialized-state fold: each rule of the contract, RFC 7396 merge patches, and the
resume-point property (a snapshot at any cut plus the tail equals the full fold)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statestore.event_kinds import (
    ApprovalReceived,
    BaseEventKind,
    CustomEvent,
    InterruptRaised,
    NodeCancelled,
    NodeCompleted,
    NodeFailed,
    NodeScheduled,
    NodeSkipped,
    NodeStarted,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
)
from statestore.json_patch import merge_patch
from statestore.materialize import fold, initial_state, snapshot_state
from statestore.models import Event, Snapshot, WorkflowExecution, WorkflowStatus

EXECUTION = WorkflowExecution(workflow_id="wf", workflow_version="1", initial_input={"n": 0})


def events(*kinds: BaseEventKind) -> list[Event]:
    return [
        Event(execution_id=EXECUTION.execution_id, sequence=n, kind=kind)
        for n, kind in enumerate(kinds, start=1)
    ]


@pytest.mark.parametrize(
    ("target", "patch", "expected"),
    [
        ({"a": 1, "b": 2}, {"b": None, "c": 3}, {"a": 1, "c": 3}),
        ({"a": {"x": 1, "y": 2}}, {"a": {"y": None, "z": 3}}, {"a": {"x": 1, "z": 3}}),
        ({"a": [1, 2]}, {"a": [3]}, {"a": [3]}),
        ({"a": 1}, "text", "text"),
        ([1, 2], {"a": 1}, {"a": 1}),
        ({"a": 1}, None, {"a": 1}),  # top-level null: no patch
        ({"a": 1}, {}, {"a": 1}),
        ({}, {"a": {"b": None}}, {"a": {}}),
    ],
)
def test_merge_patch_follows_rfc_7396(target: Any, patch: Any, expected: Any) -> None:
    before = repr(target)
    assert merge_patch(target, patch) == expected
    assert repr(target) == before  # the target is not modified


def test_each_fold_rule() -> None:
    state = fold(
        initial_state(EXECUTION),
        events(
            WorkflowStarted(workflow_id="wf", workflow_version="1", initial_input={}),
            NodeScheduled(node_id="a", queue_type="q"),
            NodeStarted(node_id="a", worker_id="w", attempt=1),
            NodeScheduled(node_id="b", queue_type="q"),
            NodeCompleted(node_id="a", output={"r": 1}, state_patch={"n": 1}, duration_ms=3),
            NodeFailed(node_id="b", error="x", attempt=1, retryable=True),
            NodeScheduled(node_id="c", queue_type="q"),
            InterruptRaised(node_id="c", reason="review", state_for_review={}),
        ),
    )
    assert state.status is WorkflowStatus.PAUSED
    assert state.active_nodes == ["c"]
    assert state.completed_nodes == {"a": {"r": 1}}
    assert state.current_state == {"n": 1}
    assert state.last_sequence == 8

    resumed = fold(
        state,
        [
            Event(execution_id=EXECUTION.execution_id, sequence=9, kind=kind)
            for kind in [ApprovalReceived(node_id="c", decision="approved", state_patch={"ok": 1})]
        ],
    )
    assert resumed.status is WorkflowStatus.RUNNING
    assert resumed.current_state == {"n": 1, "ok": 1}
    assert state.status is WorkflowStatus.PAUSED  # the start is not modified


@pytest.mark.parametrize(
    ("last", "status"),
    [
        (WorkflowCompleted(final_state={"done": True}), WorkflowStatus.COMPLETED),
        (WorkflowFailed(error="boom"), WorkflowStatus.FAILED),
        (WorkflowCancelled(), WorkflowStatus.CANCELLED),
    ],
)
def test_terminal_events_set_the_status(last: BaseEventKind, status: WorkflowStatus) -> None:
    started = WorkflowStarted(workflow_id="wf", workflow_version="1", initial_input={})
    state = fold(initial_state(EXECUTION), events(started, last))
    assert state.status is status
    expected = {"done": True} if status is WorkflowStatus.COMPLETED else {"n": 0}
    assert state.current_state == expected


def test_interrupt_pauses_only_a_running_execution_and_other_kinds_change_nothing() -> None:
    state = fold(
        initial_state(EXECUTION),
        events(
            InterruptRaised(node_id="x", reason="r", state_for_review={}),
            CustomEvent(type="note", text="hello"),
            NodeSkipped(node_id="never", reason="r"),
            NodeCancelled(node_id="never"),
        ),
    )
    assert state.status is WorkflowStatus.PENDING
    assert state.current_state == {"n": 0} and state.active_nodes == []
    assert state.last_sequence == 4


NODES = st.sampled_from(["a", "b", "c", "d"])
JSON = st.recursive(
    st.none() | st.integers(-5, 5) | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3)
    ),
    max_leaves=6,
)
KINDS = st.one_of(
    st.builds(
        WorkflowStarted,
        workflow_id=st.just("wf"),
        workflow_version=st.just("1"),
        initial_input=st.just({}),
    ),
    st.builds(WorkflowCompleted, final_state=JSON),
    st.builds(WorkflowFailed, error=st.just("e")),
    st.builds(WorkflowCancelled),
    st.builds(NodeScheduled, node_id=NODES, queue_type=st.just("q")),
    st.builds(NodeStarted, node_id=NODES, worker_id=st.just("w"), attempt=st.just(1)),
    st.builds(NodeCompleted, node_id=NODES, output=JSON, state_patch=JSON, duration_ms=st.just(1)),
    st.builds(
        NodeFailed, node_id=NODES, error=st.just("e"), attempt=st.just(1), retryable=st.booleans()
    ),
    st.builds(NodeSkipped, node_id=NODES, reason=st.just("r")),
    st.builds(NodeCancelled, node_id=NODES),
    st.builds(InterruptRaised, node_id=NODES, reason=st.just("r"), state_for_review=st.just({})),
    st.builds(
        ApprovalReceived,
        node_id=NODES,
        decision=st.sampled_from(["approved", "rejected"]),
        state_patch=JSON,
    ),
    st.builds(CustomEvent, type=st.just("custom")),
)


@settings(max_examples=200, deadline=None)
@given(kinds=st.lists(KINDS, max_size=25), data=st.data())
def test_a_snapshot_at_any_cut_plus_the_tail_equals_the_full_fold(
    kinds: list[BaseEventKind], data: st.DataObject
) -> None:
    history = events(*kinds)
    full = fold(initial_state(EXECUTION), history)
    cut = data.draw(st.integers(0, len(history)), label="cut")
    head = fold(initial_state(EXECUTION), history[:cut])
    # Through a Snapshot model and back, as a stored snapshot is.
    snapshot = Snapshot.model_validate(
        {
            "execution_id": str(EXECUTION.execution_id),
            "id": str(uuid.uuid4()),
            "at_sequence": head.last_sequence,
            "state": head.current_state,
            "status": head.status,
            "completed_nodes": head.completed_nodes,
            "active_nodes": head.active_nodes,
            "last_sequence": head.last_sequence,
        }
    )
    assert fold(snapshot_state(snapshot), history[cut:]) == full
