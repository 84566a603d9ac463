"""API tokens: ``sst_<token id>_<secret>``; only a passlib hash of the secret is stored.

The id is public and the primary key (O(1) lookup). The secret is 256 random bits, so a
slow password KDF adds no security and only latency: tokens use ``pbkdf2_sha256`` at a low
round count through a passlib ``CryptContext`` (constant-time compare, self-describing hashes,
and ``verify_and_update`` to move to another scheme later by rehash-on-verify).

Timing must not tell an unknown id from a wrong secret, so both do the same work: the lookup
returns one row either way (an unknown id gets :data:`STAND_IN`, a token nobody holds, with
the same columns and a hash of the same scheme and rounds), and that row's hash is verified
once. Only then does validation look at whether the token was found, revoked or expired.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from passlib.context import CryptContext
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from statestore.db import queries
from statestore.db.runner import single_statement
from statestore.db.schema import ApiTokenRow
from statestore.errors import NotFoundError
from statestore.models import ApiToken, TenantStatus, TokenRole, from_database
from statestore.repositories.base import Repository, row_columns, select_row, update_rows
from statestore.repositories.tenants import require_active_tenant
from statestore.validation import check_enum, check_identifier, check_timedelta, check_uuid

TOKEN_PREFIX = "sst"
SECRET_BYTES = 32  # 256 bits
LAST_USED_RESOLUTION = timedelta(minutes=1)
_TOKEN = re.compile(r"sst_([0-9a-f]{32})_([A-Za-z0-9_-]{43})")

TOKEN_HASHES = CryptContext(
    schemes=["pbkdf2_sha256"],
    deprecated="auto",
    # High-entropy secrets need no key stretching; one round keeps validation ~25 µs.
    pbkdf2_sha256__rounds=1,
)

STAND_IN: dict[str, Any] = {
    "s_id": uuid.uuid4(),
    "s_tenant_id": "default",
    "s_name": "stand-in",
    "s_role": TokenRole.VIEWER.value,
    # The hash of a secret that is thrown away at once: nothing verifies against it.
    "s_secret_hash": TOKEN_HASHES.hash(secrets.token_urlsafe(SECRET_BYTES)),
    "s_created_at": datetime(2024, 1, 1, tzinfo=UTC),
    "s_tenant_status": TenantStatus.ACTIVE.value,
}
"""What the token lookup returns for an id missing in the scope (see
:func:`statestore.db.queries.select_token`): a row like a fresh token's, never valid."""


def token_from_row(row: Any) -> ApiToken:
    """A model from an ORM row or a Core row of ``api_tokens`` (not re-validated: see
    :func:`statestore.models.from_database`)."""
    return from_database(
        ApiToken,
        id=row.id,
        name=row.name,
        role=TokenRole(row.role),
        created_at=row.created_at,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
        tenant_id=row.tenant_id,
    )


def parse_token(token: object) -> tuple[uuid.UUID, str] | None:
    """(token id, secret) of a well-formed token string, else ``None``."""
    if not isinstance(token, str) or len(token) > 100:
        return None
    match = _TOKEN.fullmatch(token)
    if match is None:
        return None
    return uuid.UUID(match.group(1)), match.group(2)


@dataclass(frozen=True)
class Validation:
    """What the read step of ``validate_token`` found."""

    token: ApiToken | None
    new_hash: str | None = None
    touch: bool = False


class AuthRepository(Repository):
    """API tokens of the scope's tenant (all tenants on the unscoped store)."""

    def create(
        self,
        session: Session,
        name: str,
        role: TokenRole | str,
        expires_in: timedelta | None,
    ) -> tuple[str, ApiToken]:
        name = check_identifier("name", name)
        role = check_enum("role", TokenRole, role)
        lifetime = None if expires_in is None else check_timedelta("expires_in", expires_in)
        tenant_id = self.context.scope.tenant_id or "default"
        require_active_tenant(session, tenant_id)
        now = self.context.now()
        token_id = uuid.uuid4()
        secret = secrets.token_urlsafe(SECRET_BYTES)
        row = session.execute(
            insert(ApiTokenRow)
            .values(
                id=token_id,
                tenant_id=tenant_id,
                name=name,
                role=role.value,
                secret_hash=TOKEN_HASHES.hash(secret),
                created_at=now,
                expires_at=None if lifetime is None else now + lifetime,
                last_used_at=None,
                revoked_at=None,
            )
            .returning(*row_columns(ApiTokenRow))
        ).one()
        return f"{TOKEN_PREFIX}_{token_id.hex}_{secret}", token_from_row(row)

    def check(self, session: Session, token: object) -> Validation:
        """The read step of validation: verify the secret and decide whether to record use."""
        parsed = parse_token(token)
        if parsed is None:
            TOKEN_HASHES.dummy_verify()
            return Validation(None)
        token_id, secret = parsed
        row = queries.select_token(session, token_id, STAND_IN)
        valid, new_hash = TOKEN_HASHES.verify_and_update(secret, row.secret_hash)
        if not (valid and row.found):
            return Validation(None)
        now = self.context.now()
        if row.revoked_at is not None:
            return Validation(None)
        if row.expires_at is not None and row.expires_at <= now:
            return Validation(None)
        if not row.tenant_active:
            return Validation(None)
        stale = row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION
        return Validation(token_from_row(row), new_hash=new_hash, touch=stale)

    @single_statement
    def record_use(self, session: Session, token_id: uuid.UUID, new_hash: str | None) -> datetime:
        """Write ``last_used_at`` (and a re-hashed secret when the policy changed)."""
        now = self.context.now()
        values: dict[str, object] = {"last_used_at": now}
        if new_hash is not None:
            values["secret_hash"] = new_hash
        update_rows(session, ApiTokenRow, ApiTokenRow.id == token_id, **values)
        return now

    def revoke(self, session: Session, token_id: uuid.UUID | str) -> None:
        token_id = check_uuid("token_id", token_id)
        unrevoked = (ApiTokenRow.id == token_id, ApiTokenRow.revoked_at.is_(None))
        if update_rows(session, ApiTokenRow, *unrevoked, revoked_at=self.context.now()):
            return
        # Nothing changed: revoked already (a no-op), or missing in this scope.
        if select_row(session, ApiTokenRow, ApiTokenRow.id == token_id) is None:
            raise NotFoundError(f"token {token_id} not found")

    def list(self, session: Session) -> list[ApiToken]:
        rows = session.execute(
            select(*row_columns(ApiTokenRow)).order_by(ApiTokenRow.created_at, ApiTokenRow.id)
        )
        return [token_from_row(row) for row in rows]
