"""The session-level tenant filter.

Every operation runs in a :class:`TenantSession` that knows its :class:`Scope`. A
``do_orm_execute`` listener confines every ORM SELECT, UPDATE and DELETE of a scoped session
with :func:`confine`, the one definition of the tenant predicate (``db/queries.py`` confines
the scoped form of its prebuilt statements with the same function), so no code writes the
predicate by hand. The filter fails closed: a session that was not given a scope refuses to
execute anything.

The filter does not see ``text()`` SQL, Core ``Table`` statements or objects already in the
identity map; repositories use ORM-enabled constructs for tenant-owned tables.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import BindParameter, Executable, bindparam, event
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria

from statestore.db.schema import TenantOwned
from statestore.errors import TenantError

SCOPE_KEY = "statestore.scope"

S = TypeVar("S", bound=Executable)


@dataclass(frozen=True)
class Scope:
    """Which tenant an operation may touch. ``tenant_id=None`` is the operator's view of
    all tenants (the unscoped store)."""

    tenant_id: str | None

    @property
    def all_tenants(self) -> bool:
        return self.tenant_id is None


ALL_TENANTS = Scope(None)


class TenantSession(Session):
    """A Session whose ORM statements are confined to the scope in ``info``."""


def session_scope(session: Session) -> Scope:
    """The scope of a session; raises :class:`TenantError` if it has none (fail closed)."""
    scope = session.info.get(SCOPE_KEY)
    if not isinstance(scope, Scope):
        raise TenantError("session has no tenant scope; refusing to run (fail closed)")
    return scope


def confine(statement: S, tenant: BindParameter[str]) -> S:
    """The one definition of the tenant predicate: ``statement`` with ``tenant_id = tenant``
    on every tenant-owned entity it reads, updates or deletes, in its subqueries, CTEs and
    joins too (an outer join's ``ON``). Only ORM-enabled statements (on the mapped classes)
    are confined; for an ``INSERT … SELECT`` confine the ``INSERT``, not the inner ``SELECT``.

    ``tenant`` is always a bound parameter: SQLAlchemy analyses the criteria's lambda once
    per code location, so its closure must hold the same kind of value on every call."""
    return statement.options(
        with_loader_criteria(TenantOwned, lambda cls: cls.tenant_id == tenant, include_aliases=True)
    )


@event.listens_for(TenantSession, "do_orm_execute")
def _apply_tenant_filter(state: ORMExecuteState) -> None:
    scope = session_scope(state.session)
    if scope.all_tenants:
        return
    if state.is_select or state.is_update or state.is_delete:
        tenant: BindParameter[str] = bindparam("tenant_id", scope.tenant_id, unique=True)
        state.statement = confine(state.statement, tenant)


@event.listens_for(TenantSession, "before_flush")
def _stamp_tenant(session: Session, _context: Any, _instances: Any) -> None:
    scope = session_scope(session)
    if scope.all_tenants:
        return
    for obj in session.new:
        if isinstance(obj, TenantOwned):
            if obj.tenant_id is None:
                obj.tenant_id = scope.tenant_id
            elif obj.tenant_id != scope.tenant_id:
                raise TenantError(
                    f"cannot write a row of tenant {obj.tenant_id!r} in scope {scope.tenant_id!r}"
                )


@contextmanager
def narrowed_to(session: Session, tenant_id: str) -> Iterator[None]:
    """Run the enclosed statements confined to ``tenant_id`` (e.g. counting one tenant's
    rows from the unscoped store). A scope can only be narrowed, never widened or moved."""
    scope = session_scope(session)
    if scope.tenant_id not in (None, tenant_id):
        raise TenantError(f"scope {scope.tenant_id!r} cannot act for tenant {tenant_id!r}")
    session.info[SCOPE_KEY] = Scope(tenant_id)
    try:
        yield
    finally:
        session.info[SCOPE_KEY] = scope
