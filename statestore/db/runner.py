"""How an operation reaches the database: the :class:`Runner` interface and what every
runner shares.

An *operation* is a synchronous function ``op(session) -> result`` built from a repository
method and its arguments (a :class:`Call`). One public call is one operation is one
transaction. A runner decides where it runs:

- :class:`~statestore.db.sqlite_runner.SqliteRunner`: one writer thread with group commit
  and a pool of reader threads; one hop between the event loop and a thread per call.
- :class:`~statestore.db.postgres_runner.PostgresRunner`: ``AsyncConnection.run_sync`` over
  asyncpg, many connections in parallel, READ COMMITTED.

:func:`statestore.db.backend.open_backend` picks and builds one. Both translate every failure
into :mod:`statestore.errors` (see :mod:`statestore.db.errors`).

A store belongs to the event loop it is first used on (its futures, tasks and PostgreSQL
connections are bound to that loop); a call from another loop raises
:class:`~statestore.errors.ConfigurationError`.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from statestore.db.errors import translate
from statestore.db.tenancy import SCOPE_KEY, Scope, TenantSession
from statestore.errors import ConfigurationError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
Operation = Callable[[Session], T]
"""A unit of repository work: runs inside one transaction, on one session."""
IfAbandoned = Callable[[Any, BaseException | None], Operation[Any] | None]
"""``if_abandoned(result, error)`` of :meth:`Runner.write`: called once a write whose
caller stopped waiting (was cancelled) has ended, with its result (``error`` is ``None``:
it committed) or its error; returns a follow-up write to run, or ``None``."""

_log = logging.getLogger("statestore")

_SINGLE_STATEMENT = "statestore_single_statement"


def single_statement(method: F) -> F:
    """Mark a repository operation that changes the database in at most one statement (it
    may read before or after): a runner may then run it without a transaction around it
    (on PostgreSQL, in autocommit: no BEGIN and COMMIT round trips)."""
    setattr(method, _SINGLE_STATEMENT, True)
    return method


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """A repository operation with its arguments: ``call(session)`` runs
    ``method(session, *args)``."""

    method: Callable[..., T]
    args: tuple[Any, ...] = ()

    def __call__(self, session: Session) -> T:
        return self.method(session, *self.args)


def is_single_statement(op: Operation[Any]) -> bool:
    """Whether ``op`` (a :class:`Call` of a marked method) writes in at most one statement."""
    method = op.method if isinstance(op, Call) else op
    return bool(getattr(method, _SINGLE_STATEMENT, False))


class Runner(ABC):
    """Where operations run. One per store; scoped views share it."""

    @abstractmethod
    async def write(
        self, op: Operation[T], scope: Scope, *, if_abandoned: IfAbandoned | None = None
    ) -> T:
        """Run ``op`` in a write transaction and commit it (see :func:`single_statement`).

        ``if_abandoned``: if the caller stops waiting (is cancelled) while ``op`` runs, ``op``
        still runs to its end; then ``if_abandoned(result, error)`` is called on the event
        loop and the write it returns, if any, runs in the same scope as a transaction of
        its own, before :meth:`close` returns (a failure of either is logged, never raised:
        :func:`follow_up`)."""

    @abstractmethod
    async def read(self, op: Operation[T], scope: Scope) -> T:
        """Run ``op``, which only reads: in a read transaction on a reader (SQLite), or in
        autocommit, retried once if its connection turned out dead (PostgreSQL)."""

    @abstractmethod
    async def with_connection(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` with a sync connection and no transaction opened (migrations, schema
        checks). On SQLite no write of this store runs beside it."""

    @abstractmethod
    async def close(self) -> None:
        """Release threads and connections. Idempotent."""


def new_session(bind: Connection | None = None) -> TenantSession:
    """A session for operations. ``rollback_only``: the runner, not the session, owns the
    transaction on the connection."""
    return TenantSession(
        bind=bind,
        expire_on_commit=False,
        autoflush=False,
        join_transaction_mode="rollback_only",
    )


def _used(session: Session) -> bool:
    return bool(session.in_transaction() or session.identity_map or session.new or session.deleted)


def run_in_session(
    connection: Connection, op: Operation[T], scope: Scope, session: TenantSession | None = None
) -> T:
    """Run ``op`` on a scoped session bound to ``connection``'s open transaction: a fresh
    one, or ``session`` re-bound to ``connection`` (runners reuse theirs: most
    operations, the Core hot paths, never begin a session transaction, so building and
    closing a Session for each would cost more than their own Python). Either way the
    session is clean when ``op`` starts and left clean, its scope removed."""
    # A runner keeps its connections for many calls; SQLAlchemy decides whether a
    # connection logs its statements when it is created. Follow the engine's logger as it
    # is now, so that ``echo`` or the ``sqlalchemy.engine`` logger switched on later logs
    # every statement, as it would on a connection taken from the pool for this call.
    connection._echo = connection.engine._should_log_info()
    if session is None:
        session = new_session(connection)
    else:
        session.bind = connection
    session.info[SCOPE_KEY] = scope
    try:
        result = op(session)
        if _used(session):
            session.flush()
    finally:
        if _used(session):
            session.close()
        session.info.pop(SCOPE_KEY, None)  # fail closed if it were ever used outside a call
    return result


def follow_up(
    if_abandoned: IfAbandoned, result: Any, error: BaseException | None
) -> Operation[Any] | None:
    """The follow-up write of an abandoned call: ``if_abandoned(result, error)``, or
    ``None`` (nothing to write, or it failed: logged, see :func:`follow_up_failed`)."""
    try:
        return if_abandoned(result, error)
    except Exception as exc:
        follow_up_failed(exc)
        return None


def follow_up_failed(error: BaseException) -> None:
    """Nobody waits for a follow-up write: its failure is logged (WARNING), never raised."""
    _log.warning("the follow-up write of an abandoned call failed", exc_info=error)


def bind_loop(bound: asyncio.AbstractEventLoop | None) -> asyncio.AbstractEventLoop:
    """The running loop, which must be the one the store was first used on: futures,
    tasks and asyncpg connections cannot move between loops (on another loop they fail
    with "another operation is in progress" or hang)."""
    loop = asyncio.get_running_loop()
    if bound is not None and loop is not bound:
        raise ConfigurationError(
            "this store is bound to the event loop it was first used on; "
            "open a separate store for each event loop"
        )
    return loop


def translated(exc: BaseException) -> BaseException:
    """The store's error for ``exc``, with ``exc`` as its cause (unless it already is the
    store's own error, which keeps its own cause)."""
    error = translate(exc)
    if error is not exc:
        error.__cause__ = exc
    return error
