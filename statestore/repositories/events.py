"""The append-only event log of each execution, with gapless store-assigned sequences."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, NoReturn

from sqlalchemy.orm import Session

from statestore.db import queries
from statestore.db.driver import RawValue
from statestore.db.runner import single_statement
from statestore.errors import (
    NotFoundError,
    SequenceConflictError,
    ValidationError,
)
from statestore.event_kinds import BaseEventKind, load_stored_kind, parse_event_kind
from statestore.models import Event
from statestore.repositories.base import Repository, refuse_foreign_child
from statestore.validation import (
    check_int,
    check_optional_int,
    check_str_keys,
    check_uuid,
    coerce_model,
    json_text,
)

MAX_BATCH = 10_000


def event_from_row(row: Any, execution_id: uuid.UUID) -> Event:
    """An event from a row of :func:`statestore.db.queries.select_events`."""
    return Event(
        id=row.id,
        execution_id=execution_id,
        sequence=row.sequence,
        kind=load_stored_kind(row.kind, row.event_type),
        created_at=row.created_at,
        tenant_id=row.tenant_id,
    )


class EventRepository(Repository):
    """Appends and reads of execution event logs."""

    @single_statement
    def append(self, session: Session, event: Event, expected_sequence: int | None) -> int:
        event = coerce_model("event", Event, event)
        event_type, kind = self._kind_json(event.kind)
        expected = check_optional_int("expected_sequence", expected_sequence, minimum=0)
        refuse_foreign_child(self.context, session, event, event.execution_id)
        values = {
            "p_id": event.id,
            "p_execution_id": event.execution_id,
            "p_event_type": event_type,
            "p_kind": kind,
            "p_created_at": self.context.stamp(event, "created_at"),
        }
        appended = queries.append_event(session, values, expected)
        if appended is None:
            self._refused(session, event.execution_id, expected)
        return appended[0]

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
        # JSON mode would stringify non-str keys: check the kind's own values (what
        # model_dump() would give, without copying them).
        check_str_keys("event kind", kind)
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
        row = queries.reserve_sequences(session, execution_id, count, expected)
        if row is None:
            self._refused(session, execution_id, expected)
        return row.last_sequence - count + 1, row.tenant_id

    @staticmethod
    def _refused(session: Session, execution_id: uuid.UUID, expected: int | None) -> NoReturn:
        """Why a reserve changed nothing: the execution is missing in this scope, or it is
        not at the expected sequence."""
        latest = queries.select_sequence_if_exists(session, execution_id)
        if latest is None:
            raise NotFoundError(f"execution {execution_id} not found")
        raise SequenceConflictError(
            f"execution {execution_id} is at sequence {latest}, expected {expected}"
        )

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

    def latest_sequence(self, session: Session, execution_id: uuid.UUID | str) -> int:
        return queries.select_latest_sequence(session, check_uuid("execution_id", execution_id))
