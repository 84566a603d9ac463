"""The append-only event log of each execution, with gapless store-assigned sequences.

An append goes one way: its input is checked and turned into what the statement needs
(:meth:`EventRepository._checked_append`), one call of :func:`statestore.db.queries.append_events`
writes it, and a refusal is explained from what that call returned.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy.orm import Session

from statestore.db import queries
from statestore.db.runner import single_statement
from statestore.errors import (
    NotFoundError,
    SequenceConflictError,
    StateStoreError,
    TenantError,
    ValidationError,
)
from statestore.event_kinds import BaseEventKind, load_stored_kind, parse_event_kind
from statestore.models import Event, from_database
from statestore.repositories.base import Repository, refusal_if_visible
from statestore.validation import (
    check_identifier,
    check_int,
    check_optional_int,
    check_str_keys,
    check_uuid,
    coerce_model,
    json_text,
)

MAX_BATCH = 10_000


def event_from_row(row: Any, execution_id: uuid.UUID) -> Event:
    """An event from a row of :func:`statestore.db.queries.select_events`. Built without
    validation (see :func:`statestore.models.from_database`); the kind is validated once,
    when :func:`load_stored_kind` parses its JSON text."""
    return from_database(
        Event,
        id=row.id,
        execution_id=execution_id,
        sequence=row.sequence,
        kind=load_stored_kind(row.kind, row.event_type),
        created_at=row.created_at,
        tenant_id=row.tenant_id,
        position=row.position,
    )


class _Append(NamedTuple):
    """An append's input, checked: what :func:`statestore.db.queries.append_events` takes,
    and the refusal of a model naming another tenant (nothing is written then)."""

    execution_id: uuid.UUID
    events: list[queries.NewEvent]
    created_at: datetime
    expected: int | None
    other_tenant: TenantError | None = None


def _not_appended(subject: Any, execution_id: uuid.UUID, expected: int | None) -> StateStoreError:
    """Why an append changed nothing, from the execution's ``last_sequence`` as read after
    it (``None``: the execution is missing in this scope)."""
    if subject is None:
        return NotFoundError(f"execution {execution_id} not found")
    return SequenceConflictError(
        f"execution {execution_id} is at sequence {subject.last_sequence}, expected {expected}"
    )


class EventRepository(Repository):
    """Appends and reads of execution event logs."""

    @single_statement
    def append(self, session: Session, event: Event, expected_sequence: int | None) -> int:
        append = self._checked_append(event, expected_sequence)
        return self._append(session, append)

    def append_many(
        self,
        session: Session,
        execution_id: uuid.UUID | str,
        kinds: Sequence[BaseEventKind | dict[str, Any]],
        expected_sequence: int | None,
    ) -> list[int]:
        append = self._checked_append_many(execution_id, kinds, expected_sequence)
        first = self._append(session, append)
        return list(range(first, first + len(append.events)))

    def _append(self, session: Session, append: _Append) -> int:
        """Write a checked append; the first new sequence."""
        if append.other_tenant is not None:
            raise refusal_if_visible(session, append.execution_id, append.other_tenant)
        appended = queries.append_events(
            session, append.execution_id, append.events, append.created_at, append.expected
        )
        if isinstance(appended, queries.Refused):
            raise _not_appended(appended.subject, append.execution_id, append.expected)
        return appended

    def _checked_append(self, event: Event, expected_sequence: int | None) -> _Append:
        event = coerce_model("event", Event, event)
        new = self._new_event(event.id, event.kind)
        expected = check_optional_int("expected_sequence", expected_sequence, minimum=0)
        other_tenant = self.context.other_tenant(event)
        created_at = self.context.stamp(event, "created_at")
        return _Append(event.execution_id, [new], created_at, expected, other_tenant)

    def _checked_append_many(
        self,
        execution_id: uuid.UUID | str,
        kinds: Sequence[BaseEventKind | dict[str, Any]],
        expected_sequence: int | None,
    ) -> _Append:
        execution_id = check_uuid("execution_id", execution_id)
        if isinstance(kinds, str | bytes | dict) or not isinstance(kinds, Sequence):
            raise ValidationError("kinds must be a sequence of event kinds")
        if len(kinds) > MAX_BATCH:
            raise ValidationError(f"at most {MAX_BATCH} events per append_events call")
        events = [self._new_event(uuid.uuid4(), parse_event_kind(kind)) for kind in kinds]
        expected = check_optional_int("expected_sequence", expected_sequence, minimum=0)
        return _Append(execution_id, events, self.context.now(), expected)

    def encode(self, kinds: Sequence[BaseEventKind | dict[str, Any]]) -> list[queries.NewEvent]:
        """Kinds checked and encoded as events to append (new ids), before any write."""
        if isinstance(kinds, str | bytes | dict) or not isinstance(kinds, Sequence):
            raise ValidationError("events must be a sequence of event kinds")
        if len(kinds) > MAX_BATCH:
            raise ValidationError(f"at most {MAX_BATCH} events per call")
        return [self._new_event(uuid.uuid4(), parse_event_kind(kind)) for kind in kinds]

    def _new_event(self, event_id: uuid.UUID, kind: BaseEventKind) -> queries.NewEvent:
        """An event's id, its kind's ``type`` and the kind's checked JSON text."""
        # JSON mode would stringify non-str keys: check the kind's own values (what
        # model_dump() would give, without copying them).
        check_str_keys("event kind", kind)
        payload = kind.to_json_dict()
        limit = self.context.max_json_bytes
        text = json_text("event kind", payload, limit, keys_checked=True)
        return queries.NewEvent(event_id, payload["type"], text)

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
        return [event_from_row(row, execution_id) for row in rows]

    def feed(self, session: Session, after: int, limit: int) -> list[Event]:
        after = check_int("after", after, minimum=0)
        limit = check_int("limit", limit, minimum=1, maximum=MAX_BATCH)
        rows = queries.select_feed(session, after, limit)
        return [event_from_row(row, row.execution_id) for row in rows]

    def save_checkpoint(self, session: Session, consumer: str, position: int) -> None:
        values = {
            "tenant_id": self.context.scope.tenant_id or "default",
            "consumer": check_identifier("consumer", consumer),
            "position": check_int("position", position, minimum=0),
            "updated_at": self.context.now(),
        }
        queries.upsert_checkpoint(session, values)

    def get_checkpoint(self, session: Session, consumer: str) -> int:
        tenant_id = self.context.scope.tenant_id or "default"
        return (
            queries.select_checkpoint(session, tenant_id, check_identifier("consumer", consumer))
            or 0
        )

    def latest_sequence(self, session: Session, execution_id: uuid.UUID | str) -> int:
        execution_id = check_uuid("execution_id", execution_id)
        return queries.select_latest_sequence(session, execution_id) or 0
