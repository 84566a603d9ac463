"""Turns: one workflow step as one transaction, and the reads an engine resumes from.

A turn composes the other repositories' operations inside the one transaction the runner
gives it (each operation sees the writes before it: no operation leaves ORM objects
behind), so every rule stays defined once — who holds a lease, how an item settles, how
sequences are reserved, what an enqueue requires.

Order of a turn (the contract's, ``API.md`` "Atomic turns"): the execution's row is locked
first — the same lock that reserves event sequences — so sibling turns of one execution are
ordered and a snapshot taken inside a turn sees every committed sibling; then the item is
settled (fenced), events appended, the state patched, successors enqueued, the status moved,
the snapshot written and the effect recorded.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from statestore.db import queries
from statestore.db.schema import ExecutionRow
from statestore.db.tenancy import narrowed_to
from statestore.errors import LeaseLostError, NotFoundError, ValidationError
from statestore.event_kinds import WorkflowStarted, parse_event_kind
from statestore.json_patch import merge_patch
from statestore.materialize import fold, initial_state, snapshot_state
from statestore.models import (
    MaterializedState,
    Snapshot,
    TurnResult,
    WorkflowExecution,
    WorkflowStatus,
    WorkItem,
    WorkItemStatus,
)
from statestore.repositories.base import Repository, StoreContext
from statestore.repositories.effects import EffectRepository
from statestore.repositories.events import MAX_BATCH, EventRepository
from statestore.repositories.executions import ExecutionRepository
from statestore.repositories.queue import MAX_CLAIM, CheckedItem, QueueRepository
from statestore.repositories.snapshots import SnapshotRepository
from statestore.validation import (
    check_enum,
    check_identifier,
    check_int,
    check_json,
    check_text,
    check_timedelta,
    check_uuid,
    coerce_model,
    json_text,
)


@dataclass(frozen=True)
class Turn:
    """A turn's arguments, checked (see :meth:`TurnRepository.check`)."""

    item_id: uuid.UUID
    worker_id: str
    lease_fence: int
    events: list[queries.NewEvent]
    state_patch: Any
    enqueue: list[CheckedItem]
    """The successors, checked and turned into their rows."""
    fail: str | None
    retry_in: timedelta | None
    status: WorkflowStatus | None
    snapshot: bool
    effect_key: str | None
    effect: str | None
    """The effect as checked JSON text."""


class TurnRepository(Repository):
    """``commit_turn``, ``start_execution`` and ``materialize``."""

    def __init__(
        self,
        context: StoreContext,
        *,
        executions: ExecutionRepository,
        events: EventRepository,
        queue: QueueRepository,
        snapshots: SnapshotRepository,
        effects: EffectRepository,
    ) -> None:
        super().__init__(context)
        self.executions = executions
        self.events = events
        self.queue = queue
        self.snapshots = snapshots
        self.effects = effects

    def check(
        self,
        item_id: object,
        worker_id: object,
        lease_fence: object,
        events: Sequence[Any],
        state_patch: Any,
        enqueue: Sequence[Any],
        fail: object,
        retry_in: object,
        status: object,
        snapshot: object,
        effect_key: object,
        effect: Any,
    ) -> Turn:
        """Every argument checked before anything is written (``ValidationError``)."""
        if retry_in is not None and fail is None:
            raise ValidationError("retry_in needs fail= (a completed item is not retried)")
        if not isinstance(snapshot, bool):
            raise ValidationError("snapshot must be True or False")
        max_bytes = self.context.max_json_bytes
        return Turn(
            item_id=check_uuid("item_id", item_id),
            worker_id=check_identifier("worker_id", worker_id),
            lease_fence=check_int("lease_fence", lease_fence, minimum=0),
            events=self.events.encode(events),
            state_patch=None
            if state_patch is None
            else check_json("state_patch", state_patch, max_bytes),
            enqueue=[
                self.queue.check_item(item, "enqueue item")
                for item in _sequence("enqueue", enqueue, MAX_CLAIM)
            ],
            fail=None if fail is None else check_text("fail", fail),
            retry_in=None if retry_in is None else check_timedelta("retry_in", retry_in),
            status=None if status is None else check_enum("status", WorkflowStatus, status),
            snapshot=snapshot,
            effect_key=None if effect_key is None else self.effects.check_key(effect_key),
            effect=None if effect_key is None else self.effects.encode(effect),
        )

    def commit(self, session: Session, turn: Turn) -> TurnResult:
        """The turn, all of it or nothing (the runner's transaction). On PostgreSQL a
        plain step is BEGIN, the lock, the settle, one UPDATE of the execution, the events'
        INSERT, one INSERT per successor, COMMIT."""
        locked = queries.lock_turn(session, turn.item_id)
        if locked is None:
            raise NotFoundError(f"work item {turn.item_id} not found")
        execution_id = locked.execution_id
        now = self.context.now()
        # The turn acts for the item's tenant only: successors may target any execution of
        # that tenant, never another's (also on the unscoped store).
        with narrowed_to(session, locked.tenant_id):
            item_status = self._settle(session, turn, now)
            sequences = self._advance(session, turn, locked, now)
            enqueued = [self.queue.enqueue_checked(session, item) for item in turn.enqueue]
            if turn.status is not None:
                self.executions.update_status(session, execution_id, turn.status, None)
            snapshot_at = self._snapshot(session, execution_id) if turn.snapshot else None
            if turn.effect_key is not None and turn.effect is not None:
                self.effects.record(
                    session,
                    locked.tenant_id,
                    turn.effect_key,
                    turn.effect,
                    execution_id,
                    turn.item_id,
                )
        return TurnResult(
            sequences=sequences,
            item_status=item_status,
            enqueued=enqueued,
            snapshot_at=snapshot_at,
        )

    def _advance(self, session: Session, turn: Turn, locked: Any, now: datetime) -> list[int]:
        """The events and the state patch: one UPDATE of the locked execution (sequences
        reserved, state merged from the row read under the lock), then the events' INSERT."""
        state_json = None
        if turn.state_patch is not None:
            merged = merge_patch(locked.current_state, turn.state_patch)
            state_json = json_text("current_state", merged, self.context.max_json_bytes)
        if not turn.events and state_json is None:
            return []
        execution_id = locked.execution_id
        count = len(turn.events)
        first = queries.advance_execution(session, execution_id, count, state_json, now)
        if turn.events:
            queries.insert_events(session, locked.tenant_id, execution_id, first, turn.events, now)
        return list(range(first, first + count))

    def _settle(self, session: Session, turn: Turn, now: datetime) -> WorkItemStatus:
        """Complete the item, or fail it as ``fail_work_item`` would; both fenced. Unlike
        ``complete_work_item``, a repeat by the same lease is refused: a turn commits at
        most once per lease."""
        if turn.fail is not None:
            return self.queue.fail(
                session, turn.item_id, turn.fail, turn.retry_in, turn.worker_id, turn.lease_fence
            )
        refused = queries.complete_item(
            session, turn.item_id, turn.worker_id, turn.lease_fence, now
        )
        if refused is not None:
            raise LeaseLostError(
                f"work item {turn.item_id} is not claimed by worker {turn.worker_id!r} "
                f"with lease fence {turn.lease_fence}"
            )
        return WorkItemStatus.COMPLETED

    def _snapshot(self, session: Session, execution_id: uuid.UUID) -> int:
        """Write the materialized state at the execution's last sequence; returns it."""
        state = self.materialize(session, execution_id)
        self.snapshots.write(
            session,
            Snapshot(
                execution_id=execution_id,
                at_sequence=state.last_sequence,
                state=state.current_state,
                status=state.status,
                completed_nodes=state.completed_nodes,
                active_nodes=state.active_nodes,
                last_sequence=state.last_sequence,
            ),
        )
        return state.last_sequence

    def materialize(self, session: Session, execution_id: uuid.UUID | str) -> MaterializedState:
        """The latest snapshot (or the initial input) with the later events folded in."""
        execution = self.executions.get(session, execution_id)
        if execution is None:
            raise NotFoundError(f"execution {execution_id} not found")
        latest = self.snapshots.latest(session, execution.execution_id)
        start = initial_state(execution) if latest is None else snapshot_state(latest)
        tail = self.events.since(session, execution.execution_id, start.last_sequence, None)
        return fold(start, tail)

    def start(
        self,
        session: Session,
        execution: WorkflowExecution,
        events: Sequence[Any],
        enqueue: Sequence[Any],
        idempotency_key: str | None,
    ) -> tuple[WorkflowExecution, bool]:
        """Create the execution, append ``events`` (sequences 1..n) and enqueue ``enqueue``;
        with ``idempotency_key``, an execution already started with it is returned instead
        (``False``) and nothing is written."""
        execution = coerce_model("execution", WorkflowExecution, execution)
        kinds = [parse_event_kind(kind) for kind in _sequence("events", events, MAX_BATCH)]
        items = [
            coerce_model("enqueue item", WorkItem, item)
            for item in _sequence("enqueue", enqueue, MAX_CLAIM)
        ]
        key = (
            None
            if idempotency_key is None
            else check_identifier("idempotency_key", idempotency_key)
        )
        if key is not None:
            existing = self.find_started(session, execution, key)
            if existing is not None:
                return existing, False
        self.executions.create(session, execution, idempotency_key=key)
        if kinds:
            self.events.append_many(session, execution.execution_id, kinds, 0)
        for item in items:
            self.queue.enqueue(session, item)
        started = self.executions.get(session, execution.execution_id)
        assert started is not None  # created just above, in this transaction
        return started, True

    def continue_as_new(
        self,
        session: Session,
        item_id: object,
        worker_id: object,
        lease_fence: object,
        state: Any,
        enqueue: Sequence[Any],
    ) -> WorkflowExecution:
        """Complete the item (fenced), mark its execution completed and create the next
        segment (:func:`segment_id`) with ``state`` as its input and state, a
        WorkflowStarted event at sequence 1 and ``enqueue`` (their ``execution_id``
        replaced). A retry whose first try committed returns that segment, writing
        nothing."""
        item_id = check_uuid("item_id", item_id)
        worker_id = check_identifier("worker_id", worker_id)
        lease_fence = check_int("lease_fence", lease_fence, minimum=0)
        state = check_json("state", state, self.context.max_json_bytes)
        items = [
            coerce_model("enqueue item", WorkItem, item)
            for item in _sequence("enqueue", enqueue, MAX_CLAIM)
        ]
        locked = queries.lock_turn(session, item_id)
        if locked is None:
            raise NotFoundError(f"work item {item_id} not found")
        with narrowed_to(session, locked.tenant_id):
            parent = self.executions.get(session, locked.execution_id)
            assert parent is not None  # the item's execution, visible like the item
            new_id = segment_id(parent.execution_id, parent.segment + 1)
            existing = self.executions.get(session, new_id)
            if existing is not None:
                return existing
            now = self.context.now()
            if queries.complete_item(session, item_id, worker_id, lease_fence, now) is not None:
                raise LeaseLostError(
                    f"work item {item_id} is not claimed by worker {worker_id!r} "
                    f"with lease fence {lease_fence}"
                )
            self.executions.update_status(
                session, parent.execution_id, WorkflowStatus.COMPLETED, None
            )
            segment = WorkflowExecution(
                execution_id=new_id,
                workflow_id=parent.workflow_id,
                workflow_version=parent.workflow_version,
                status=WorkflowStatus.RUNNING,
                initial_input=state,
                current_state=state,
                started_at=now,
                updated_at=now,
                tenant_id=locked.tenant_id,
                parent_execution_id=parent.execution_id,
                segment=parent.segment + 1,
            )
            self.executions.create(session, segment)
            started = WorkflowStarted(
                workflow_id=parent.workflow_id,
                workflow_version=parent.workflow_version,
                initial_input=state,
            )
            self.events.append_many(session, new_id, [started], 0)
            for item in items:
                self.queue.enqueue(session, item.model_copy(update={"execution_id": new_id}))
            created = self.executions.get(session, new_id)
            assert created is not None  # created just above, in this transaction
            return created

    def segment_chain(self, session: Session, execution_id: object) -> list[WorkflowExecution]:
        """The segments up to ``execution_id``, root first ([] if it is not visible)."""
        chain: list[WorkflowExecution] = []
        current = self.executions.get(session, check_uuid("execution_id", execution_id))
        while current is not None:
            chain.append(current)
            if current.parent_execution_id is None:
                break
            current = self.executions.get(session, current.parent_execution_id)
        return chain[::-1]

    def find_started(
        self, session: Session, execution: WorkflowExecution, key: str
    ) -> WorkflowExecution | None:
        """The execution of ``execution``'s tenant started with idempotency ``key``."""
        tenant_id = self.context.tenant_for(execution)
        with narrowed_to(session, tenant_id):
            row = session.execute(
                select(ExecutionRow.id).where(ExecutionRow.idempotency_key == key)
            ).first()
            return None if row is None else self.executions.get(session, row.id)


def segment_id(parent_id: uuid.UUID, segment: int) -> uuid.UUID:
    """A segment's id: derived from its parent's (a random id the tenant owns, so no other
    tenant can predict it, design decision 14) and its number, so a retry finds it."""
    return uuid.uuid5(parent_id, f"statestore-segment-{segment}")


def _sequence(name: str, value: Any, limit: int) -> Sequence[Any]:
    if isinstance(value, str | bytes | dict) or not isinstance(value, Sequence):
        raise ValidationError(f"{name} must be a sequence")
    if len(value) > limit:
        raise ValidationError(f"at most {limit} {name} per call")
    return value
