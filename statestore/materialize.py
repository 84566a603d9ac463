"""Materialized state: an execution's history folded into what an engine resumes from.

The fold is a left fold over events in sequence order, so a snapshot of the fold of events
``1..k`` plus the fold of the rest equals the fold of every event: a snapshot is a resume
point, and :meth:`StateStore.materialize` reads only the events after the latest one.
"""

from __future__ import annotations

from collections.abc import Iterable

from statestore.event_kinds import (
    ApprovalReceived,
    BaseEventKind,
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
from statestore.models import Event, MaterializedState, Snapshot, WorkflowExecution, WorkflowStatus


def initial_state(execution: WorkflowExecution) -> MaterializedState:
    """Where the fold starts without a snapshot: the initial input, pending, no nodes."""
    return MaterializedState(
        current_state=execution.initial_input,
        status=WorkflowStatus.PENDING,
        completed_nodes={},
        active_nodes=[],
        last_sequence=0,
    )


def snapshot_state(snapshot: Snapshot) -> MaterializedState:
    """Where the fold starts from a snapshot."""
    return MaterializedState(
        current_state=snapshot.state,
        status=snapshot.status,
        completed_nodes=dict(snapshot.completed_nodes),
        active_nodes=list(snapshot.active_nodes),
        last_sequence=snapshot.last_sequence,
    )


def fold(start: MaterializedState, events: Iterable[Event]) -> MaterializedState:
    """``start`` with ``events`` (ascending sequence) applied; ``start`` is not modified."""
    state = start.model_copy(deep=True)
    for event in events:
        _apply(state, event.kind)
        state.last_sequence = max(state.last_sequence, event.sequence)
    return state


def _apply(state: MaterializedState, kind: BaseEventKind) -> None:
    """One event's effect, by the rules of the contract (API.md, "Materialized state")."""
    match kind:
        case WorkflowStarted():
            state.status = WorkflowStatus.RUNNING
        case WorkflowCompleted():
            state.current_state = kind.final_state
            state.status = WorkflowStatus.COMPLETED
        case WorkflowFailed():
            state.status = WorkflowStatus.FAILED
        case WorkflowCancelled():
            state.status = WorkflowStatus.CANCELLED
        case NodeScheduled() | NodeStarted():
            if kind.node_id not in state.active_nodes:
                state.active_nodes.append(kind.node_id)
        case NodeCompleted():
            _deactivate(state, kind.node_id)
            state.completed_nodes[kind.node_id] = kind.output
            state.current_state = merge_patch(state.current_state, kind.state_patch)
        case NodeFailed() | NodeSkipped() | NodeCancelled():
            _deactivate(state, kind.node_id)
        case InterruptRaised():
            if state.status is WorkflowStatus.RUNNING:
                state.status = WorkflowStatus.PAUSED
        case ApprovalReceived():
            state.current_state = merge_patch(state.current_state, kind.state_patch)
            state.status = WorkflowStatus.RUNNING
        case _:
            pass  # other kinds change nothing but the sequence


def _deactivate(state: MaterializedState, node_id: str) -> None:
    if node_id in state.active_nodes:
        state.active_nodes.remove(node_id)
