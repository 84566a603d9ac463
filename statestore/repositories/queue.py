"""The work-item queue: enqueue, atomic claims under fenced leases, settling, reclaim of
expired leases with retries and backoff, and the dead-letter queue.

State machine (one expiry path, W-1): ``pending → claimed`` by a claim (``attempt += 1``, a
new ``lease_fence``); ``claimed → completed | failed | pending | dead_lettered`` only by the
lease holder (worker and fence checked, W-4/W-7) or by reclaim once the lease has expired.
A claim never resets an expired lease by itself. ``lease_fence`` only grows.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NoReturn

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.orm import Session

from statestore.db import queries
from statestore.db.driver import RawValue
from statestore.db.runner import single_statement
from statestore.db.schema import ExecutionRow, WorkItemRow
from statestore.errors import (
    ConflictError,
    InvalidTransitionError,
    LeaseLostError,
    NotFoundError,
    ValidationError,
)
from statestore.models import DeadLetter, WorkflowStatus, WorkItem, WorkItemStatus
from statestore.repositories.base import (
    NO_SYNC,
    Repository,
    refuse_foreign_child,
    row_columns,
    select_row,
    update_rows,
)
from statestore.repositories.tenants import require_active_tenant
from statestore.validation import (
    check_datetime,
    check_identifier,
    check_int,
    check_optional_identifier,
    check_optional_int,
    check_text,
    check_timedelta,
    check_uuid,
    coerce_model,
    json_text,
)

MAX_CLAIM = 1000
MAX_PRIORITY = 2**31 - 1
MAX_ERROR_LENGTH = 64 * 1024
RECLAIM_BATCH = 500
LEASE_EXPIRED = "lease expired"


def backoff(attempt: int) -> timedelta:
    """Delay before an expired item is offered again: 2 s, 4 s, … capped at 64 s."""
    return timedelta(seconds=2 ** min(max(attempt, 0), 6))


def item_from_row(row: Any) -> WorkItem:
    """A model from an ORM row or a Core row of ``work_items``."""
    return WorkItem(
        id=row.id,
        execution_id=row.execution_id,
        node_id=row.node_id,
        queue_type=row.queue_type,
        payload=row.payload,
        attempt=row.attempt,
        max_attempts=row.max_attempts,
        priority=row.priority,
        status=WorkItemStatus(row.status),
        available_at=row.available_at,
        lease_expires_at=row.lease_expires_at,
        worker_id=row.worker_id,
        lease_fence=row.lease_fence,
        last_error=row.last_error,
        created_at=row.created_at,
        tenant_id=row.tenant_id,
    )


def _claim_order(row: Any) -> tuple[int, datetime, uuid.UUID]:
    return (-row.priority, row.created_at, row.id)


class QueueRepository(Repository):
    """Work items and their leases."""

    # ------------------------------------------------------------------ enqueue and read

    @single_statement
    def enqueue(self, session: Session, item: WorkItem) -> uuid.UUID:
        """Add a pending work item; returns its id. Refused, with nothing written:
        NotFoundError (execution missing in this scope), InvalidTransitionError (execution
        finished), TenantSuspendedError (tenant not active), ConflictError (duplicate id)."""
        item = coerce_model("item", WorkItem, item)
        max_bytes = self.context.max_json_bytes
        now = self.context.now()
        values: dict[str, Any] = {
            "id": item.id,
            "node_id": check_identifier("node_id", item.node_id),
            "queue_type": check_identifier("queue_type", item.queue_type),
            "payload": RawValue(json_text("payload", item.payload, max_bytes)),
            "status": WorkItemStatus.PENDING.value,
            "priority": check_int(
                "priority", item.priority, minimum=-MAX_PRIORITY, maximum=MAX_PRIORITY
            ),
            "attempt": check_int("attempt", item.attempt, minimum=0, maximum=MAX_PRIORITY),
            "max_attempts": check_int(
                "max_attempts", item.max_attempts, minimum=1, maximum=MAX_PRIORITY
            ),
            "available_at": item.available_at or now,
            "worker_id": None,
            "lease_expires_at": None,
            "lease_fence": check_int("lease_fence", item.lease_fence, minimum=0),
            "last_error": None,
            "created_at": self.context.stamp(item, "created_at"),
            "updated_at": now,
            "dead_lettered_at": None,
            "dedupe_key": None,
        }
        refuse_foreign_child(self.context, session, item, item.execution_id)
        if not queries.enqueue_item(session, values, item.execution_id):
            self._explain_refused_enqueue(session, item.execution_id)
        return item.id

    @staticmethod
    def _explain_refused_enqueue(session: Session, execution_id: uuid.UUID) -> NoReturn:
        execution = queries.select_execution(session, execution_id)
        if execution is None:
            raise NotFoundError(f"execution {execution_id} not found")
        require_active_tenant(session, execution.tenant_id)
        if WorkflowStatus(execution.status).is_terminal:
            raise InvalidTransitionError(
                f"execution {execution_id} is {execution.status}; it takes no new work"
            )
        # It changed between the insert and this look: the caller may simply retry.
        raise ConflictError(f"execution {execution_id} changed while enqueueing; retry")

    def get(self, session: Session, item_id: uuid.UUID | str) -> WorkItem | None:
        row = select_row(session, WorkItemRow, WorkItemRow.id == check_uuid("item_id", item_id))
        return None if row is None else item_from_row(row)

    def list_for_execution(self, session: Session, execution_id: uuid.UUID | str) -> list[WorkItem]:
        rows = session.execute(
            select(*row_columns(WorkItemRow))
            .where(WorkItemRow.execution_id == check_uuid("execution_id", execution_id))
            .order_by(WorkItemRow.created_at, WorkItemRow.id)
        )
        return [item_from_row(row) for row in rows]

    # ------------------------------------------------------------------ claim and renew

    @single_statement
    def claim(
        self, session: Session, worker_id: str, queue_types: Sequence[str], limit: int
    ) -> list[WorkItem]:
        """Lease up to ``limit`` due pending items in one statement
        (:func:`statestore.db.queries.claim_items`); returned in claim order."""
        worker_id = check_identifier("worker_id", worker_id)
        types = self._queue_types(queue_types)
        limit = check_int("limit", limit, minimum=1, maximum=MAX_CLAIM)
        now = self.context.now()
        expires = now + self.context.lease_duration
        rows = queries.claim_items(session, worker_id, types, limit, now, expires)
        return [item_from_row(row) for row in sorted(rows, key=_claim_order)]

    @single_statement
    def renew(
        self,
        session: Session,
        item_id: uuid.UUID | str,
        worker_id: str,
        lease_fence: int | None,
    ) -> datetime:
        item_id = check_uuid("item_id", item_id)
        worker_id = check_identifier("worker_id", worker_id)
        fence = check_optional_int("lease_fence", lease_fence, minimum=0)
        now = self.context.now()
        expires = now + self.context.lease_duration
        if not queries.renew_lease(session, item_id, worker_id, fence, now, expires):
            self._require_exists(session, item_id)
            raise LeaseLostError(
                f"worker {worker_id!r} does not hold an unexpired lease on work item {item_id}"
            )
        return expires

    # ------------------------------------------------------------------ settle

    @single_statement
    def complete(
        self,
        session: Session,
        item_id: uuid.UUID | str,
        worker_id: str | None,
        lease_fence: int | None,
    ) -> None:
        item_id = check_uuid("item_id", item_id)
        worker_id = check_optional_identifier("worker_id", worker_id)
        fence = check_optional_int("lease_fence", lease_fence, minimum=0)
        if queries.complete_claimed(session, item_id, worker_id, fence, self.context.now()):
            return  # the common case: one conditional UPDATE
        row = select_row(session, WorkItemRow, WorkItemRow.id == item_id)
        if row is None:
            raise NotFoundError(f"work item {item_id} not found")
        self._explain_not_completed(row, worker_id, fence)

    def complete_many(self, session: Session, items: Sequence[WorkItem]) -> list[bool]:
        if isinstance(items, str | bytes) or not isinstance(items, Sequence):
            raise ValidationError("items must be a sequence of WorkItem")
        if len(items) > MAX_CLAIM:
            raise ValidationError(f"at most {MAX_CLAIM} items per call")
        # Only the id, worker and fence of each item are used: check exactly those.
        held: list[tuple[uuid.UUID, str | None, int]] = []
        for given in items:
            item = given if isinstance(given, WorkItem) else coerce_model("item", WorkItem, given)
            held.append(
                (
                    check_uuid("item id", item.id),
                    check_optional_identifier("worker_id", item.worker_id),
                    check_int("lease_fence", item.lease_fence, minimum=0),
                )
            )
        now = self.context.now()
        guarded = list({(i, w, f) for i, w, f in held if w is not None})
        done = queries.complete_each_claimed(session, guarded, now)
        results = []
        for item_id, worker_id, fence in held:
            if (item_id, worker_id, fence) in done:
                results.append(True)
                done.discard((item_id, worker_id, fence))  # a duplicate of it is a repeat
                continue
            if queries.complete_claimed(session, item_id, worker_id, fence, now):
                results.append(True)
                continue
            row = select_row(session, WorkItemRow, WorkItemRow.id == item_id)
            try:
                if row is None:
                    raise LeaseLostError(f"work item {item_id} not found")
                self._explain_not_completed(row, worker_id, fence)
                results.append(True)  # a repeat by the same lease
            except LeaseLostError:
                results.append(False)
        return results

    def _explain_not_completed(
        self, row: Any, worker_id: str | None, lease_fence: int | None
    ) -> None:
        """Why the conditional UPDATE of :func:`statestore.db.queries.complete_claimed` (the
        one definition of what completes an item) changed nothing: a repeat by the same
        lease is a no-op and returns; anything else raises LeaseLostError."""
        if row.status == WorkItemStatus.COMPLETED.value:
            self._check_holder(row, worker_id, lease_fence)
            return
        self._require_claimed(row)
        self._check_holder(row, worker_id, lease_fence)
        # Held as given now but not when the UPDATE ran: it was claimed again in between.
        raise LeaseLostError(f"work item {row.id} was claimed again while completing")

    def fail(
        self,
        session: Session,
        item_id: uuid.UUID | str,
        error: str,
        retry_in: timedelta | None,
        worker_id: str | None,
        lease_fence: int | None,
    ) -> WorkItemStatus:
        item_id = check_uuid("item_id", item_id)
        error = check_text("error", error, max_length=MAX_ERROR_LENGTH)
        delay = None if retry_in is None else check_timedelta("retry_in", retry_in)
        worker_id = check_optional_identifier("worker_id", worker_id)
        fence = check_optional_int("lease_fence", lease_fence, minimum=0)
        row = self._locked(session, item_id)
        self._require_claimed(row)
        self._check_holder(row, worker_id, fence)
        now = self.context.now()
        values: dict[str, Any] = {"last_error": error, "lease_expires_at": None, "updated_at": now}
        if delay is None:
            status = WorkItemStatus.FAILED
        elif row.attempt < row.max_attempts:
            status = WorkItemStatus.PENDING
            values.update(worker_id=None, available_at=now + delay)
        else:
            status = WorkItemStatus.DEAD_LETTERED
            values.update(dead_lettered_at=now)
        self._update(session, item_id, status=status.value, **values)
        return status

    def park(
        self,
        session: Session,
        item_id: uuid.UUID | str,
        worker_id: str,
        lease_fence: int,
        until: datetime | None,
        retry_in: timedelta | None,
    ) -> None:
        """The holder hands the item back without using up an attempt: pending again,
        available at ``until`` (or after ``retry_in``, or now), ``attempt`` back to its
        value before this claim, the lease released. The next claim gets a greater fence."""
        item_id = check_uuid("item_id", item_id)
        worker_id = check_identifier("worker_id", worker_id)
        fence = check_int("lease_fence", lease_fence, minimum=0)
        if until is not None and retry_in is not None:
            raise ValidationError("give until or retry_in, not both")
        delay = None if retry_in is None else check_timedelta("retry_in", retry_in)
        due = None if until is None else check_datetime("until", until)
        row = self._locked(session, item_id)
        self._require_claimed(row)
        self._check_holder(row, worker_id, fence)
        now = self.context.now()
        self._update(
            session,
            item_id,
            status=WorkItemStatus.PENDING.value,
            attempt=max(0, row.attempt - 1),
            worker_id=None,
            lease_expires_at=None,
            available_at=due or (now + delay if delay is not None else now),
            updated_at=now,
        )

    # ------------------------------------------------------------------ reclaim

    def reclaim_batch(
        self, session: Session, batch: int = RECLAIM_BATCH
    ) -> tuple[list[WorkItem], list[WorkItem]]:
        """Reclaim up to ``batch`` expired leases; returns (retryable, exhausted).

        Each item changes only through a conditional UPDATE that re-checks status, lease
        expiry and fence, so a renew landing in between wins (W-3), and two reclaimers
        never report the same item (rows are locked with SKIP LOCKED on PostgreSQL)."""
        batch = check_int("batch", batch, minimum=1, maximum=10_000)
        now = self.context.now()
        expired = session.execute(
            select(
                WorkItemRow.id,
                WorkItemRow.attempt,
                WorkItemRow.max_attempts,
                WorkItemRow.lease_fence,
            )
            .where(WorkItemRow.status == queries.CLAIMED, WorkItemRow.lease_expires_at <= now)
            .order_by(WorkItemRow.lease_expires_at)
            .limit(batch)
            .with_for_update(skip_locked=True)
        ).all()
        retry_groups: dict[int, list[tuple[uuid.UUID, int]]] = defaultdict(list)
        exhausted_ids: list[tuple[uuid.UUID, int]] = []
        for item_id, attempt, max_attempts, fence in expired:
            if attempt < max_attempts:
                retry_groups[min(attempt, 6)].append((item_id, fence))
            else:
                exhausted_ids.append((item_id, fence))

        retryable: list[WorkItem] = []
        for exponent, keys in retry_groups.items():
            retryable += self._release_expired(
                session,
                keys,
                now,
                status=WorkItemStatus.PENDING.value,
                worker_id=None,
                available_at=now + backoff(exponent),
                last_error=LEASE_EXPIRED,
            )
        exhausted = self._release_expired(
            session,
            exhausted_ids,
            now,
            status=WorkItemStatus.DEAD_LETTERED.value,
            dead_lettered_at=now,
            last_error=LEASE_EXPIRED,
        )
        return retryable, exhausted

    def _release_expired(
        self, session: Session, keys: list[tuple[uuid.UUID, int]], now: datetime, **values: Any
    ) -> list[WorkItem]:
        if not keys:
            return []
        fence_matches: list[ColumnElement[bool]] = [
            (WorkItemRow.id == item_id) & (WorkItemRow.lease_fence == fence)
            for item_id, fence in keys
        ]
        rows = session.execute(
            update(WorkItemRow)
            .where(
                WorkItemRow.id.in_([item_id for item_id, _ in keys]),
                or_(*fence_matches),
                WorkItemRow.status == queries.CLAIMED,
                WorkItemRow.lease_expires_at <= now,
            )
            .values(lease_expires_at=None, updated_at=now, **values)
            .returning(*row_columns(WorkItemRow))
            .execution_options(**NO_SYNC)
        ).all()
        return [item_from_row(row) for row in sorted(rows, key=lambda r: str(r.id))]

    # ------------------------------------------------------------------ dead letters

    def move_to_dead_letter(
        self, session: Session, item_id: uuid.UUID | str, last_error: str
    ) -> None:
        item_id = check_uuid("item_id", item_id)
        error = check_text("last_error", last_error, max_length=MAX_ERROR_LENGTH)
        row = self._locked(session, item_id)
        if row.status == WorkItemStatus.COMPLETED.value:
            raise InvalidTransitionError(f"work item {item_id} is completed")
        now = self.context.now()
        self._update(
            session,
            item_id,
            status=WorkItemStatus.DEAD_LETTERED.value,
            last_error=error,
            lease_expires_at=None,
            dead_lettered_at=now,
            updated_at=now,
        )

    def list_dead_letters(self, session: Session, limit: int, offset: int) -> list[DeadLetter]:
        limit = check_int("limit", limit, minimum=1, maximum=MAX_CLAIM)
        offset = check_int("offset", offset, minimum=0)
        rows = session.execute(
            select(*row_columns(WorkItemRow))
            .where(WorkItemRow.status == queries.DEAD_LETTERED)
            .order_by(WorkItemRow.dead_lettered_at.desc(), WorkItemRow.id)
            .limit(limit)
            .offset(offset)
        )
        return [
            DeadLetter(
                item=item_from_row(row),
                last_error=row.last_error or "",
                dead_lettered_at=row.dead_lettered_at or row.updated_at,
            )
            for row in rows
        ]

    def requeue_dead_letter(self, session: Session, item_id: uuid.UUID | str) -> None:
        """Put a dead-lettered item back to pending. This is new work, so it is refused
        like an enqueue: TenantSuspendedError for an inactive tenant, InvalidTransitionError
        for a finished execution."""
        item_id = check_uuid("item_id", item_id)
        row = self._locked(session, item_id)
        if row.status != WorkItemStatus.DEAD_LETTERED.value:
            raise InvalidTransitionError(f"work item {item_id} is {row.status}, not dead-lettered")
        require_active_tenant(session, row.tenant_id)
        status = session.scalar(
            select(ExecutionRow.status).where(ExecutionRow.id == row.execution_id)
        )
        if status is not None and WorkflowStatus(status).is_terminal:
            raise InvalidTransitionError(
                f"execution {row.execution_id} is {status}; it takes no new work"
            )
        now = self.context.now()
        self._update(
            session,
            item_id,
            status=WorkItemStatus.PENDING.value,
            attempt=0,
            worker_id=None,
            lease_expires_at=None,
            available_at=now,
            dead_lettered_at=None,
            updated_at=now,
        )

    def stats(self, session: Session) -> dict[str, dict[WorkItemStatus, int]]:
        counts: dict[str, dict[WorkItemStatus, int]] = {}
        rows = session.execute(
            select(WorkItemRow.queue_type, WorkItemRow.status, func.count()).group_by(
                WorkItemRow.queue_type, WorkItemRow.status
            )
        )
        for queue_type, status, count in rows:
            per_status = counts.setdefault(queue_type, dict.fromkeys(WorkItemStatus, 0))
            per_status[WorkItemStatus(status)] = count
        return dict(sorted(counts.items()))

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _queue_types(queue_types: Sequence[str]) -> list[str]:
        if isinstance(queue_types, str | bytes) or not isinstance(queue_types, Sequence):
            raise ValidationError("queue_types must be a sequence of strings")
        if not queue_types:
            raise ValidationError("queue_types must not be empty")
        if len(queue_types) > 100:
            raise ValidationError("at most 100 queue types per claim")
        return [check_identifier("queue_type", q) for q in queue_types]

    @staticmethod
    def _locked(session: Session, item_id: uuid.UUID) -> Any:
        """The item's row, locked until commit for a read-modify-write; NotFoundError if it
        is missing in this scope."""
        row = select_row(session, WorkItemRow, WorkItemRow.id == item_id, lock=True)
        if row is None:
            raise NotFoundError(f"work item {item_id} not found")
        return row

    @staticmethod
    def _update(session: Session, item_id: uuid.UUID, **values: Any) -> None:
        """Write ``values`` to an item this operation has locked."""
        update_rows(session, WorkItemRow, WorkItemRow.id == item_id, **values)

    @staticmethod
    def _require_exists(session: Session, item_id: uuid.UUID) -> None:
        if session.scalar(select(WorkItemRow.id).where(WorkItemRow.id == item_id)) is None:
            raise NotFoundError(f"work item {item_id} not found")

    @staticmethod
    def _require_claimed(row: Any) -> None:
        if row.status != WorkItemStatus.CLAIMED.value:
            raise LeaseLostError(f"work item {row.id} is {row.status}, not claimed")

    @staticmethod
    def _check_holder(row: Any, worker_id: str | None, fence: int | None) -> None:
        if worker_id is not None and row.worker_id != worker_id:
            raise LeaseLostError(f"work item {row.id} is not leased to worker {worker_id!r}")
        if fence is not None and row.lease_fence != fence:
            raise LeaseLostError(
                f"work item {row.id} has lease fence {row.lease_fence}, not {fence} (stale lease)"
            )
