"""The append-only event log of each execution, with gapless store-assigned sequences."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row
from sqlalchemy.orm import Session

from statestore.db import queries
from statestore.db.driver import RawValue
from statestore.errors import NotFoundError, SequenceConflictError, ValidationError
from statestore.event_kinds import BaseEventKind, load_stored_kind, parse_event_kind
from statestore.models import Event
from statestore.repositories.base import Repository
from statestore.validation import (
    check_int,
    check_optional_int,
    check_str_keys,
    check_uuid,
    coerce_model,
    json_text,
)

MAX_BATCH = 10_000


def event_from_row(row: Row[Any]) -> Event:
    return Event(
        id=row.id,
        execution_id=row.execution_id,
        sequence=row.sequence,
        kind=load_stored_kind(row.kind),
        created_at=row.created_at,
        tenant_id=row.tenant_id,
    )


class EventRepository(Repository):
    """Appends and reads of execution event logs."""

    def append(self, session: Session, event: Event, expected_sequence: int | None) -> int:
        event = coerce_model("event", Event, event)
        event_type, kind = self._kind_json(event.kind)
        expected = check_optional_int("expected_sequence", expected_sequence, minimum=0)
        first, tenant_id = self._reserve(session, event.execution_id, 1, expected)
        self.context.check_child_tenant(event, tenant_id)
        queries.insert_events(
            session,
            [
                {
                    "id": event.id,
                    "tenant_id": tenant_id,
                    "execution_id": event.execution_id,
                    "sequence": first,
                    "event_type": event_type,
                    "kind": kind,
                    "created_at": self.context.stamp(event, "created_at"),
                }
            ],
        )
        return first

    def append_many(
        self,
        session: Session,
        execution_id: uuid.UUID | str,
        kinds: Sequence[BaseEventKind | dict[str, Any]],
        expected_sequence: int | None,
    ) -> list[int]:
        execution_id = check_uuid("execution_id", execution_id)
        if isinstance(kinds, str | bytes | dict) or not isinstance(kinds, Sequence):
            raise ValidationError("kinds must be a sequence of event kinds")
        if len(kinds) > MAX_BATCH:
            raise ValidationError(f"at most {MAX_BATCH} events per append_events call")
        payloads = [self._kind_json(parse_event_kind(kind)) for kind in kinds]
        expected = check_optional_int("expected_sequence", expected_sequence, minimum=0)
        first, tenant_id = self._reserve(session, execution_id, len(payloads), expected)
        if not payloads:
            return []
        now = self.context.now()
        sequences = list(range(first, first + len(payloads)))
        queries.insert_events(
            session,
            [
                {
                    "id": uuid.uuid4(),
                    "tenant_id": tenant_id,
                    "execution_id": execution_id,
                    "sequence": sequence,
                    "event_type": event_type,
                    "kind": kind,
                    "created_at": now,
                }
                for sequence, (event_type, kind) in zip(sequences, payloads, strict=True)
            ],
        )
        return sequences

    def _kind_json(self, kind: BaseEventKind) -> tuple[str, RawValue]:
        """The kind's ``type`` and its checked JSON text."""
        check_str_keys("event kind", kind.model_dump())  # JSON mode would stringify keys
        payload = kind.to_json_dict()
        limit = self.context.max_json_bytes
        return payload["type"], RawValue(json_text("event kind", payload, limit, keys_checked=True))

    def _reserve(
        self, session: Session, execution_id: uuid.UUID, count: int, expected: int | None
    ) -> tuple[int, str]:
        """Bump the execution's ``last_sequence`` by ``count``; returns the first reserved
        sequence and the execution's tenant. The row update serialises appenders of one
        execution on both databases, so sequences are gapless without a retry loop; a
        failed append rolls the bump back with its transaction."""
        row = queries.reserve_sequences(session, execution_id, count)
        if row is None:
            raise NotFoundError(f"execution {execution_id} not found")
        latest = row.last_sequence - count
        if expected is not None and latest != expected:
            raise SequenceConflictError(
                f"execution {execution_id} is at sequence {latest}, expected {expected}"
            )
        return latest + 1, row.tenant_id

    def get(self, session: Session, execution_id: uuid.UUID | str) -> list[Event]:
        return self.since(session, execution_id, 0, None)

    def since(
        self,
        session: Session,
        execution_id: uuid.UUID | str,
        since: int,
        limit: int | None,
    ) -> list[Event]:
        execution_id = check_uuid("execution_id", execution_id)
        since = check_int("since", since, minimum=0)
        limit = None if limit is None else check_int("limit", limit, minimum=1)
        rows = queries.select_events(session, execution_id, since, limit)
        return [event_from_row(row) for row in rows]

    def latest_sequence(self, session: Session, execution_id: uuid.UUID | str) -> int:
        return queries.select_latest_sequence(session, check_uuid("execution_id", execution_id))
