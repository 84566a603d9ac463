"""Effects: what a turn's side effect returned, recorded under a key per tenant so that a
worker re-running a node replays it instead of running the side effect again."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from statestore.db import queries
from statestore.db.schema import EffectRow
from statestore.db.tenancy import narrowed_to
from statestore.repositories.base import Repository
from statestore.validation import check_identifier, json_text


class EffectRepository(Repository):
    """Recorded effects, first writer wins."""

    def check_key(self, key: object) -> str:
        """A valid effect key (the same rules as other identifiers)."""
        return check_identifier("effect_key", key)

    def encode(self, value: Any) -> str:
        """``value`` checked (JSON, size and nesting limits) and encoded as JSON text, before
        any write."""
        return json_text("effect", value, self.context.max_json_bytes)

    def record(
        self,
        session: Session,
        tenant_id: str,
        key: str,
        value: str,
        execution_id: uuid.UUID,
        item_id: uuid.UUID | None,
    ) -> None:
        """Record ``value`` (JSON text from :meth:`encode`) under ``key`` for ``tenant_id``
        unless the key already has one."""
        queries.record_effect(
            session,
            {
                "tenant_id": tenant_id,
                "key": key,
                "value": value,
                "execution_id": execution_id,
                "item_id": item_id,
                "created_at": self.context.now(),
            },
        )

    def get(self, session: Session, key: str) -> Any:
        """The effect recorded under ``key`` in this scope's tenant (``"default"`` on the
        unscoped store), or ``None``."""
        key = self.check_key(key)
        tenant_id = self.context.scope.tenant_id or "default"
        with narrowed_to(session, tenant_id):
            value = session.scalar(select(EffectRow.value).where(EffectRow.key == key))
        return value
