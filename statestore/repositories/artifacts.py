"""Content-addressed artifacts: bytes stored once per tenant under their SHA-256."""

from __future__ import annotations

import hashlib
import re

from sqlalchemy.orm import Session

from statestore.db import queries
from statestore.errors import ValidationError
from statestore.models import ArtifactRef
from statestore.repositories.base import Repository
from statestore.validation import check_text

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ArtifactRepository(Repository):
    """``put_artifact`` and ``get_artifact``."""

    def put(self, session: Session, data: object, media_type: object) -> ArtifactRef:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ValidationError(f"data must be bytes, got {type(data).__name__}")
        data = bytes(data)
        limit = self.context.max_artifact_bytes
        if len(data) > limit:
            raise ValidationError(
                f"artifact of {len(data)} bytes is larger than max_artifact_bytes={limit}"
            )
        media = None if media_type is None else check_text("media_type", media_type, max_length=255)
        digest = hashlib.sha256(data).hexdigest()
        tenant_id = self.context.scope.tenant_id or "default"
        values = {
            "tenant_id": tenant_id,
            "hash": digest,
            "size": len(data),
            "media_type": media,
            "data": data,
            "created_at": self.context.now(),
        }
        stored = queries.insert_artifact(session, values)
        return ArtifactRef(hash=digest, size=int(stored.size), media_type=stored.media_type)

    def get(self, session: Session, hash: object) -> bytes | None:
        if not isinstance(hash, str) or not _SHA256_HEX.fullmatch(hash):
            raise ValidationError("hash must be a SHA-256 in lowercase hex (64 characters)")
        tenant_id = self.context.scope.tenant_id or "default"
        return queries.select_artifact(session, tenant_id, hash)
