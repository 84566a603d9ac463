"""The work-item queue: enqueue, atomic claims under fenced leases, settling, reclaim of
expired leases with retries and backoff, and the dead-letter queue.

State machine: ``pending → claimed`` by a claim (``attempt += 1``, a new ``lease_fence``);
``claimed → completed | failed | pending | dead_lettered`` only by the lease holder (the
worker and fence it was given, when it names them) or, once the lease has expired, by
reclaim, the only way an expired lease ends: a claim never takes over an expired lease by
itself. ``lease_fence`` only grows, so a worker holding a stale lease can never settle an
item another worker claimed since.

The rules these writes are guarded by ("claimed and held by this lease", "an execution takes
new work") are written once, in SQL, in :mod:`statestore.db.queries`; a refused write comes
back with the item's or execution's terms, which :func:`_lease_lost` and :func:`_no_new_work`
turn into the caller's error.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from statestore.db import queries
from statestore.db.runner import single_statement
from statestore.db.schema import WorkItemRow
from statestore.errors import (
    ConflictError,
    InvalidTransitionError,
    LeaseLostError,
    NotFoundError,
    StateStoreError,
    TenantError,
    TenantSuspendedError,
    ValidationError,
)
from statestore.models import DeadLetter, WorkItem, WorkItemStatus, from_database
from statestore.repositories.base import (
    NO_SESSION_SYNC,
    Repository,
    refusal_if_visible,
    row_columns,
    select_row,
    update_rows,
)
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
_SETTLED = [WorkItemStatus.COMPLETED.value, WorkItemStatus.FAILED.value]
"""The statuses retention deletes (dead-lettered items wait for a person)."""


def backoff(attempt: int) -> timedelta:
    """Delay before an expired item is offered again: 2 s, 4 s, … capped at 64 s."""
    return timedelta(seconds=2 ** min(max(attempt, 0), 6))


def item_from_row(row: Any) -> WorkItem:
    """A model from an ORM row or a Core row of ``work_items`` (not re-validated: see
    :func:`statestore.models.from_database`)."""
    return from_database(
        WorkItem,
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
        dedupe_key=row.dedupe_key,
    )


def _locked_lease(
    session: Session, item_id: uuid.UUID, worker_id: str | None, fence: int | None
) -> Any:
    """The item's lease row, locked until commit, if held by ``worker_id`` / ``fence``
    (each checked when given); NotFoundError or LeaseLostError otherwise."""
    lease = queries.select_lease(session, item_id, worker_id, fence, lock=True)
    if lease is None:
        raise NotFoundError(f"work item {item_id} not found")
    if not lease.held:
        raise _lease_lost(lease, worker_id, fence)
    return lease


def _claim_order(row: Any) -> tuple[int, datetime, uuid.UUID]:
    return (-row.priority, row.created_at, row.id)


class CheckedItem(NamedTuple):
    """An enqueue's input, checked: what :func:`statestore.db.queries.enqueue_item` takes
    (every column of the new item but ``tenant_id``, the payload as its JSON text), and the
    refusal of a model naming another tenant (nothing is written then)."""

    values: dict[str, Any]
    other_tenant: TenantError | None


def _no_new_work(execution: Any, execution_id: uuid.UUID) -> StateStoreError | None:
    """Why an execution takes no new work, from its :func:`statestore.db.queries.select_new_work`
    row (``None``: missing in this scope): the first false term as the caller's error, or
    ``None`` if every term holds."""
    if execution is None:
        return NotFoundError(f"execution {execution_id} not found")
    if not execution.tenant_active:
        return TenantSuspendedError(
            f"tenant {execution.tenant_id!r} is {execution.tenant_status}; new work is refused"
        )
    if not execution.open:
        return InvalidTransitionError(
            f"execution {execution_id} is {execution.status}; it takes no new work"
        )
    return None


def _lease_lost(lease: Any, worker_id: str | None, fence: int | None) -> LeaseLostError:
    """The error for a lease that does not hold, naming the first false term of
    :func:`statestore.db.queries.select_lease`'s row; if every term holds now, the item was
    claimed again while the refused write ran."""
    if not lease.claimed:
        return LeaseLostError(f"work item {lease.id} is {lease.status}, not claimed")
    if not lease.by_worker:
        return LeaseLostError(f"work item {lease.id} is not leased to worker {worker_id!r}")
    if not lease.by_fence:
        return LeaseLostError(
            f"work item {lease.id} has lease fence {lease.lease_fence}, not {fence} (stale lease)"
        )
    return LeaseLostError(f"work item {lease.id} was claimed again while completing")


class QueueRepository(Repository):
    """Work items and their leases."""

    # ------------------------------------------------------------------ enqueue and read

    @single_statement
    def enqueue(self, session: Session, item: WorkItem) -> uuid.UUID:
        """Add a pending work item; returns its id (an active item's with the same tenant,
        queue type and dedupe key, if one exists: nothing is written then). Refused, with
        nothing written:
        NotFoundError (execution missing in this scope), InvalidTransitionError (execution
        finished), TenantSuspendedError (tenant not active), ConflictError (duplicate id)."""
        return self.enqueue_checked(session, self.check_item(item))

    def enqueue_checked(self, session: Session, new: CheckedItem) -> uuid.UUID:
        """:meth:`enqueue` of an item :meth:`check_item` already checked (a turn checks
        its successors before its transaction begins)."""
        execution_id = new.values["execution_id"]
        if new.other_tenant is not None:
            raise refusal_if_visible(session, execution_id, new.other_tenant)
        refused = queries.enqueue_item(session, new.values)
        if isinstance(refused, queries.Deduplicated):
            return refused.item_id  # an active item holds the dedupe key: nothing written
        if refused is not None:
            # Every term holds now: the execution changed after the insert; retry.
            raise _no_new_work(refused.subject, execution_id) or ConflictError(
                f"execution {execution_id} changed while enqueueing; retry"
            )
        item_id: uuid.UUID = new.values["id"]
        return item_id

    def check_item(self, item: WorkItem, name: str = "item") -> CheckedItem:
        """An item to enqueue, checked (``ValidationError``, naming it ``name``) and turned
        into its row."""
        item = coerce_model(name, WorkItem, item)
        now = self.context.now()
        values: dict[str, Any] = {
            "id": item.id,
            "execution_id": item.execution_id,
            "node_id": check_identifier("node_id", item.node_id),
            "queue_type": check_identifier("queue_type", item.queue_type),
            "payload": json_text("payload", item.payload, self.context.max_json_bytes),
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
            "dedupe_key": check_optional_identifier("dedupe_key", item.dedupe_key),
        }
        return CheckedItem(values, self.context.other_tenant(item))

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

    def release_abandoned(self, session: Session, items: Sequence[WorkItem]) -> set[uuid.UUID]:
        """Give back items a claim leased to a caller that never received them (it stopped
        waiting, :func:`statestore.procedures.claim_waiting`): each one still held by
        exactly the lease that claim gave it (worker and fence) is pending again, with the
        attempt that claim counted undone, and announced to waiting claims; the others
        (settled or reclaimed meanwhile) are left alone. Returns the ids given back."""
        held = [(item.id, item.worker_id or "", item.lease_fence) for item in items]
        return queries.release_items(session, held, self.context.now())

    @single_statement
    def announce(self, session: Session, queue_types: Sequence[str]) -> None:
        """Tell the waiting claims of every process that items of ``queue_types`` may be
        claimable, writing nothing else (PostgreSQL ``NOTIFY``; nothing on SQLite): after a
        claim that rolled back, whose locked rows concurrent claims skipped."""
        queries.notify_work(session, self._queue_types(queue_types))

    def next_due(self, session: Session, queue_types: Sequence[str]) -> datetime | None:
        """When the earliest pending item of ``queue_types`` that is not due yet comes due."""
        types = self._queue_types(queue_types)
        return queries.select_next_due(session, types, self.context.now())

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
        refused = queries.renew_lease(session, item_id, worker_id, fence, now, expires)
        if refused is not None:
            if refused.subject is None:
                raise NotFoundError(f"work item {item_id} not found")
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
        """Complete a claimed item held by this lease; a repeat by the same lease is a
        no-op. Refused: NotFoundError, LeaseLostError."""
        item_id = check_uuid("item_id", item_id)
        worker_id = check_optional_identifier("worker_id", worker_id)
        fence = check_optional_int("lease_fence", lease_fence, minimum=0)
        refused = queries.complete_item(session, item_id, worker_id, fence, self.context.now())
        if refused is None:
            return
        lease = refused.subject
        if lease is None:
            raise NotFoundError(f"work item {item_id} not found")
        if not lease.completed_by_lease:
            raise _lease_lost(lease, worker_id, fence)

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
        done = queries.complete_items(session, guarded, now)
        results = []
        for item_id, worker_id, fence in held:
            if (item_id, worker_id, fence) in done:
                results.append(True)
                done.discard((item_id, worker_id, fence))  # a duplicate of it is a repeat
                continue
            # Not held that way: complete it alone, which tells a repeat by the same lease
            # (a no-op, True) from a lost lease (False).
            refused = queries.complete_item(session, item_id, worker_id, fence, now)
            lease = None if refused is None else refused.subject
            results.append(refused is None or (lease is not None and lease.completed_by_lease))
        return results

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
        lease = _locked_lease(session, item_id, worker_id, fence)
        now = self.context.now()
        values: dict[str, Any] = {"last_error": error, "lease_expires_at": None, "updated_at": now}
        if delay is None:
            status = WorkItemStatus.FAILED
        elif lease.attempt < lease.max_attempts:
            status = WorkItemStatus.PENDING
            values.update(worker_id=None, available_at=now + delay)
        else:
            status = WorkItemStatus.DEAD_LETTERED
            values.update(dead_lettered_at=now)
        self._update(session, item_id, status=status.value, **values)
        if status is WorkItemStatus.PENDING:
            queries.notify_work(session, [lease.queue_type])
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
        lease = _locked_lease(session, item_id, worker_id, fence)
        now = self.context.now()
        self._update(
            session,
            item_id,
            status=WorkItemStatus.PENDING.value,
            attempt=max(0, lease.attempt - 1),
            worker_id=None,
            lease_expires_at=None,
            available_at=due or (now + delay if delay is not None else now),
            updated_at=now,
        )
        queries.notify_work(session, [lease.queue_type])

    # ------------------------------------------------------------------ reclaim

    def reclaim_batch(
        self, session: Session, batch: int = RECLAIM_BATCH
    ) -> tuple[list[WorkItem], list[WorkItem]]:
        """Reclaim up to ``batch`` expired leases; returns (retryable, exhausted).

        Each item changes only through a conditional UPDATE that re-checks that it is still
        claimed under the fence read here and that its lease has expired, so a renew landing
        in between keeps the item with its worker, and two reclaimers never report the same
        item (rows are locked with SKIP LOCKED on PostgreSQL)."""
        batch = check_int("batch", batch, minimum=1, maximum=10_000)
        now = self.context.now()
        expired = session.execute(
            select(
                WorkItemRow.id,
                WorkItemRow.attempt,
                WorkItemRow.max_attempts,
                WorkItemRow.lease_fence,
            )
            .where(WorkItemRow.status == queries.CLAIMED, queries.lease_expired(now))
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
        queries.notify_work(session, [item.queue_type for item in retryable])
        return retryable, exhausted

    def _release_expired(
        self, session: Session, keys: list[tuple[uuid.UUID, int]], now: datetime, **values: Any
    ) -> list[WorkItem]:
        if not keys:
            return []
        still_held = [
            and_(WorkItemRow.id == item_id, queries.lease_held(None, fence))
            for item_id, fence in keys
        ]
        rows = session.execute(
            update(WorkItemRow)
            .where(
                WorkItemRow.id.in_([item_id for item_id, _ in keys]),
                or_(*still_held),
                queries.lease_expired(now),
            )
            .values(lease_expires_at=None, updated_at=now, **values)
            .returning(*row_columns(WorkItemRow))
            .execution_options(**NO_SESSION_SYNC)
        ).all()
        return [item_from_row(row) for row in sorted(rows, key=lambda r: str(r.id))]

    def delete_settled(self, session: Session, retention: timedelta, batch: int) -> int:
        """Delete up to ``batch`` completed and failed items settled (last changed) more
        than ``retention`` ago; the number deleted. Other statuses are never touched."""
        retention = check_timedelta("retention", retention)
        batch = check_int("batch", batch, minimum=1, maximum=10_000)
        cutoff = self.context.now() - retention
        oldest = (
            select(WorkItemRow.id)
            .where(
                WorkItemRow.status.in_(_SETTLED),
                WorkItemRow.updated_at < cutoff,
            )
            .limit(batch)
        )
        result = session.execute(
            delete(WorkItemRow)
            .where(
                WorkItemRow.id.in_(oldest.scalar_subquery()),
                WorkItemRow.status.in_(_SETTLED),
            )
            .execution_options(**NO_SESSION_SYNC)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

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
        refused = _no_new_work(queries.select_new_work(session, row.execution_id), row.execution_id)
        if refused is not None:
            raise refused
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
        queries.notify_work(session, [row.queue_type])

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
