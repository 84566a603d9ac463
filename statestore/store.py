"""The :class:`StateStore` facade: opening, migrating, scoping, and the flat methods.

The facade holds no logic. Each flat method hands one repository operation to the store's
runner (one call = one operation = one transaction) and awaits it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from statestore.db import migrations
from statestore.db.engine import (
    DatabaseConfig,
    Durability,
    SqliteSettings,
    create_sqlite_engine,
    create_user_engine,
    ensure_sqlite_folder,
    parse_database_url,
)
from statestore.db.runner import PostgresRunner, Runner, SqliteRunner
from statestore.db.tenancy import ALL_TENANTS, Scope
from statestore.errors import (
    ConfigurationError,
    DatabaseError,
    StateStoreError,
    TenantError,
    ValidationError,
)
from statestore.event_kinds import BaseEventKind
from statestore.models import (
    ApiToken,
    DeadLetter,
    Event,
    ReclaimResult,
    Snapshot,
    Tenant,
    TokenRole,
    WorkflowDefinition,
    WorkflowExecution,
    WorkflowStatus,
    WorkItem,
    WorkItemStatus,
    utc_now,
)
from statestore.repositories.auth import AuthRepository
from statestore.repositories.base import StoreContext
from statestore.repositories.events import EventRepository
from statestore.repositories.executions import ExecutionRepository
from statestore.repositories.queue import RECLAIM_BATCH, QueueRepository
from statestore.repositories.snapshots import SnapshotRepository
from statestore.repositories.tenants import TenantRepository
from statestore.repositories.workflows import WorkflowRepository
from statestore.validation import DEFAULT_MAX_JSON_BYTES, check_int, check_tenant_id

T = TypeVar("T")
JsonValue = Any
_log = logging.getLogger("statestore")


class _Shared:
    """What a store and all its tenant-scoped views share: one engine, one runner."""

    def __init__(
        self,
        config: DatabaseConfig,
        engine: AsyncEngine,
        runner: Runner,
        clock: Callable[[], datetime],
        lease_duration: timedelta,
        max_json_bytes: int,
    ) -> None:
        self.config = config
        self.engine = engine
        self.runner = runner
        self.clock = clock
        self.lease_duration = lease_duration
        self.max_json_bytes = max_json_bytes
        self.schema_checked = False
        self.closed = False


class StateStore:
    """The durable state store of a workflow engine.

    Open one with :meth:`open` (connect and migrate) or :meth:`connect`; use it as an async
    context manager or call :meth:`close`. :meth:`for_tenant` gives a view confined to one
    tenant.
    """

    _only_dialect: ClassVar[str | None] = None

    def __init__(self, shared: _Shared, scope: Scope) -> None:
        """Internal: use :meth:`connect` or :meth:`open`."""
        self._shared = shared
        self._scope = scope
        context = StoreContext(
            scope=scope,
            clock=shared.clock,
            max_json_bytes=shared.max_json_bytes,
            lease_duration=shared.lease_duration,
        )
        self.workflows = WorkflowRepository(context)
        self.executions = ExecutionRepository(context)
        self.events = EventRepository(context)
        self.snapshots = SnapshotRepository(context)
        self.tenants = TenantRepository(context)
        self.queue = QueueRepository(context)
        self.tokens = AuthRepository(context)

    # ------------------------------------------------------------------ opening and closing

    @classmethod
    async def connect(
        cls,
        url: str | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
        lease_duration: timedelta = timedelta(seconds=30),
        max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
        durability: Durability = "NORMAL",
        busy_timeout: float = 30.0,
        readers: int = 2,
        **engine_options: Any,
    ) -> Self:
        """Connect to a database without migrating it.

        ``url``: ``sqlite:///path``, ``sqlite:///:memory:``, ``postgresql://…`` (or
        ``postgres://…``, or an explicit async SQLAlchemy URL); ``None`` reads
        ``$STATESTORE_DATABASE_URL``, else ``sqlite:///./statestore.db``. ``clock`` gives
        every timestamp the store sets (default: system UTC time). SQLite only:
        ``durability`` ("NORMAL" or "FULL" for ``synchronous``), ``busy_timeout`` seconds,
        ``readers`` reader threads. Other keyword arguments go to SQLAlchemy's
        ``create_async_engine``.
        """
        config = parse_database_url(url)
        if cls._only_dialect is not None and config.dialect != cls._only_dialect:
            raise ConfigurationError(
                f"{cls.__name__} accepts only {cls._only_dialect} URLs, got {config.dialect}"
            )
        if not isinstance(lease_duration, timedelta) or lease_duration <= timedelta(0):
            raise ConfigurationError("lease_duration must be a positive timedelta")
        if durability not in ("NORMAL", "FULL"):
            raise ConfigurationError('durability must be "NORMAL" or "FULL"')
        try:
            check_int("max_json_bytes", max_json_bytes, minimum=1)
            check_int("readers", readers, minimum=1, maximum=64)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        if clock is not None and not callable(clock):
            raise ConfigurationError("clock must be a callable returning an aware datetime")
        settings = SqliteSettings(durability=durability, busy_timeout_ms=int(busy_timeout * 1000))

        ensure_sqlite_folder(config)
        engine = create_user_engine(config, settings, engine_options)
        runner: Runner
        if config.dialect == "sqlite":
            writer = create_sqlite_engine(config, settings, begin="BEGIN IMMEDIATE", pool_size=1)
            reader = None
            if not config.is_memory:
                reader = create_sqlite_engine(config, settings, begin="BEGIN", pool_size=readers)
            runner = SqliteRunner(writer_engine=writer, reader_engine=reader, readers=readers)
        else:
            runner = PostgresRunner(engine)
        shared = _Shared(config, engine, runner, clock or utc_now, lease_duration, max_json_bytes)
        return cls(shared, ALL_TENANTS)

    @classmethod
    async def open(cls, url: str | None = None, **options: Any) -> Self:
        """:meth:`connect`, then :meth:`migrate`: a store that is ready to use."""
        store = await cls.connect(url, **options)
        try:
            await store.migrate()
        except BaseException:
            await store.close()
            raise
        return store

    async def migrate(self, revision: str = "head") -> None:
        """Upgrade the database to this package's head revision (Alembic), or to
        ``revision``. Idempotent and safe to call from several processes at once."""
        self._check_open()
        await self._shared.runner.with_connection(
            lambda connection: migrations.upgrade(connection, revision)
        )
        self._shared.schema_checked = revision == "head"

    async def downgrade(self, revision: str) -> None:
        """Downgrade the database to ``revision`` (``"base"`` removes every table)."""
        self._check_open()
        self._shared.schema_checked = False
        await self._shared.runner.with_connection(
            lambda connection: migrations.downgrade(connection, revision)
        )

    async def current_revision(self) -> str | None:
        """The database's schema revision (``None`` for an empty database)."""
        self._check_open()
        return await self._shared.runner.with_connection(migrations.current_revision)

    @staticmethod
    def head_revision() -> str:
        """The schema revision this package needs."""
        return migrations.head_revision()

    async def schema_drift(self) -> list[str]:
        """Differences between the database schema and this package's models (empty: none)."""
        self._check_open()
        drift = await self._shared.runner.with_connection(migrations.schema_drift)
        return [str(entry) for entry in drift]

    async def close(self) -> None:
        """Stop the store's threads and dispose of the engine. Idempotent; closes every
        view sharing this store."""
        shared = self._shared
        if shared.closed:
            return
        shared.closed = True
        await shared.runner.close()
        await shared.engine.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy ``AsyncEngine`` (aiosqlite / asyncpg), for your own queries."""
        return self._shared.engine

    @property
    def url(self) -> str:
        """The database URL (password hidden)."""
        return self._shared.config.redacted()

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._shared.config.dialect

    @property
    def tenant_id(self) -> str | None:
        """The tenant this view is confined to; ``None`` on the unscoped store."""
        return self._scope.tenant_id

    def for_tenant(self, tenant_id: str) -> Self:
        """A view sharing this store's engine in which every read and write is confined to
        ``tenant_id``. On a scoped store: itself for the same tenant, ``TenantError`` for
        another (a scope cannot be escaped)."""
        tenant_id = check_tenant_id(tenant_id)
        if self._scope.tenant_id is not None:
            if self._scope.tenant_id == tenant_id:
                return self
            raise TenantError(
                f"this store is scoped to tenant {self._scope.tenant_id!r}; "
                f"it cannot be re-scoped to {tenant_id!r}"
            )
        return type(self)(self._shared, Scope(tenant_id))

    # ------------------------------------------------------------------ running operations

    def _check_open(self) -> None:
        if self._shared.closed:
            raise DatabaseError("the store is closed")

    async def _ensure_schema(self) -> None:
        if self._shared.schema_checked:
            return

        def check(connection: Connection) -> None:
            with connection.begin():
                migrations.require_head(connection)

        await self._shared.runner.with_connection(check)
        self._shared.schema_checked = True

    async def _write(self, op: Callable[..., T], *args: Any, single_statement: bool = False) -> T:
        """Run ``op(session, *args)`` as a write; ``single_statement``: it changes the database
        in at most one statement (see :meth:`Runner.write`)."""
        self._check_open()
        await self._ensure_schema()
        return await self._shared.runner.write(
            lambda s: op(s, *args), self._scope, single_statement=single_statement
        )

    async def _read(self, op: Callable[..., T], *args: Any) -> T:
        self._check_open()
        await self._ensure_schema()
        return await self._shared.runner.read(lambda s: op(s, *args), self._scope)

    async def run(self, op: Callable[[Session], T], *, write: bool = True) -> T:
        """Run your own sync ``op(session)`` through the store's runner, with this view's
        tenant filter (advanced use: compose repository methods). ``write=True``: one
        transaction. ``write=False`` is for an ``op`` that only reads: it runs on a reader
        (SQLite) or without a transaction around it (PostgreSQL autocommit, each statement
        its own snapshot), and may be run again once if its connection turned out dead.

        An operator tool, not tenant-confined for Core or ``text()`` SQL: on a scoped view
        the tenant filter confines the repository operations, ORM SELECT, UPDATE and DELETE
        statements on the mapped classes, and objects added to the session; ORM INSERT
        statements, Core statements on tables and ``text()`` SQL reach every tenant's rows.
        Never run code a tenant supplies."""
        return await (self._write(op) if write else self._read(op))

    # ------------------------------------------------------------------ workflows

    async def store_workflow(
        self, definition: WorkflowDefinition, *, replace: bool = False
    ) -> None:
        """Publish a workflow version. Identical again: no-op; a different ``ir`` for the same
        version: ``ConflictError`` unless ``replace=True``."""
        await self._write(self.workflows.store, definition, replace)

    async def get_workflow(self, workflow_id: str, version: str) -> WorkflowDefinition | None:
        """A published version, or ``None``."""
        return await self._read(self.workflows.get, workflow_id, version)

    async def list_workflows(self, workflow_id: str | None = None) -> list[WorkflowDefinition]:
        """Published versions, by workflow id then version."""
        return await self._read(self.workflows.list, workflow_id)

    # ------------------------------------------------------------------ executions

    async def create_execution(self, execution: WorkflowExecution) -> None:
        """Store a new execution. Duplicate id: ``ConflictError``."""
        await self._write(self.executions.create, execution)

    async def get_execution(self, execution_id: uuid.UUID | str) -> WorkflowExecution | None:
        """An execution, or ``None``."""
        return await self._read(self.executions.get, execution_id)

    async def update_execution_status(
        self,
        execution_id: uuid.UUID | str,
        status: WorkflowStatus | str,
        *,
        expected: WorkflowStatus | str | None = None,
    ) -> None:
        """Move an execution to ``status`` (compare-and-set with ``expected``). Terminal
        statuses are final; reaching one settles the execution's open work items."""
        await self._write(self.executions.update_status, execution_id, status, expected)

    async def update_execution_current_state(
        self, execution_id: uuid.UUID | str, state: JsonValue
    ) -> None:
        """Replace an execution's current state."""
        await self._write(self.executions.update_current_state, execution_id, state)

    async def patch_append_array(
        self, execution_id: uuid.UUID | str, key: str, value: JsonValue
    ) -> None:
        """Atomically append ``value`` to the list at ``current_state[key]``."""
        await self._write(self.executions.patch_append_array, execution_id, key, value)

    async def list_executions(
        self,
        status: WorkflowStatus | str | None = None,
        limit: int = 50,
        offset: int = 0,
        *,
        workflow_id: str | None = None,
    ) -> list[WorkflowExecution]:
        """Executions, newest ``updated_at`` first (ties by id); ``limit`` 1..1000."""
        return await self._read(self.executions.list, status, limit, offset, workflow_id)

    # ------------------------------------------------------------------ events

    async def append_event(self, event: Event, *, expected_sequence: int | None = None) -> int:
        """Append an event; returns its store-assigned sequence (1, 2, 3 … gapless)."""
        return await self._write(
            self.events.append, event, expected_sequence, single_statement=True
        )

    async def append_events(
        self,
        execution_id: uuid.UUID | str,
        kinds: Sequence[BaseEventKind | dict[str, Any]],
        *,
        expected_sequence: int | None = None,
    ) -> list[int]:
        """Append several events in one transaction, all or nothing; returns their sequences."""
        return await self._write(self.events.append_many, execution_id, kinds, expected_sequence)

    async def get_events(self, execution_id: uuid.UUID | str) -> list[Event]:
        """An execution's events in sequence order (``[]`` if unknown)."""
        return await self._read(self.events.get, execution_id)

    async def get_events_since(
        self, execution_id: uuid.UUID | str, since: int, *, limit: int | None = None
    ) -> list[Event]:
        """Events with sequence greater than ``since``, ascending, at most ``limit``."""
        return await self._read(self.events.since, execution_id, since, limit)

    async def iter_events(
        self, execution_id: uuid.UUID | str, since: int = 0, *, batch: int = 1000
    ) -> AsyncIterator[Event]:
        """Stream the events with sequence greater than ``since``, ascending, reading ``batch``
        (1..10000) at a time by sequence, so memory stays flat however long the history.
        Events appended while iterating are included."""
        check_int("batch", batch, minimum=1, maximum=10_000)
        cursor = since
        while True:
            page = await self.get_events_since(execution_id, cursor, limit=batch)
            for event in page:
                yield event
            if len(page) < batch:
                return
            cursor = page[-1].sequence

    async def latest_sequence(self, execution_id: uuid.UUID | str) -> int:
        """The latest sequence of an execution (0 if none or unknown)."""
        return await self._read(self.events.latest_sequence, execution_id)

    # ------------------------------------------------------------------ snapshots

    async def write_snapshot(self, snapshot: Snapshot) -> None:
        """Store a snapshot; the same (execution, at_sequence) again replaces it."""
        await self._write(self.snapshots.write, snapshot)

    async def latest_snapshot(self, execution_id: uuid.UUID | str) -> Snapshot | None:
        """The snapshot with the highest ``at_sequence``, or ``None``."""
        return await self._read(self.snapshots.latest, execution_id)

    # ------------------------------------------------------------------ queue

    async def enqueue_work_item(self, item: WorkItem) -> uuid.UUID:
        """Add a work item (pending; delayed until ``available_at`` if set); returns its id."""
        return await self._write(self.queue.enqueue, item, single_statement=True)

    async def claim_work_item(self, worker_id: str, queue_types: Sequence[str]) -> WorkItem | None:
        """Atomically lease the next due pending item of these queue types (highest
        priority, then oldest), or ``None``. Never hands one item to two workers."""
        items = await self._write(
            self.queue.claim, worker_id, queue_types, 1, single_statement=True
        )
        return items[0] if items else None

    async def claim_work_items(
        self, worker_id: str, queue_types: Sequence[str], limit: int
    ) -> list[WorkItem]:
        """Lease up to ``limit`` (1..1000) items in one transaction, in claim order."""
        return await self._write(
            self.queue.claim, worker_id, queue_types, limit, single_statement=True
        )

    async def renew_lease(
        self, item_id: uuid.UUID | str, worker_id: str, *, lease_fence: int | None = None
    ) -> datetime:
        """Extend an unexpired lease held by ``worker_id``; returns the new expiry.
        Otherwise ``LeaseLostError``: stop working on the item."""
        return await self._write(
            self.queue.renew, item_id, worker_id, lease_fence, single_statement=True
        )

    async def get_work_item(self, item_id: uuid.UUID | str) -> WorkItem | None:
        """A work item, or ``None``."""
        return await self._read(self.queue.get, item_id)

    async def list_work_items(self, execution_id: uuid.UUID | str) -> list[WorkItem]:
        """An execution's work items, oldest first."""
        return await self._read(self.queue.list_for_execution, execution_id)

    async def complete_work_item(
        self,
        item_id: uuid.UUID | str,
        *,
        worker_id: str | None = None,
        lease_fence: int | None = None,
    ) -> None:
        """Mark a claimed item completed (guarded by worker and fence); a repeat is a no-op."""
        await self._write(
            self.queue.complete, item_id, worker_id, lease_fence, single_statement=True
        )

    async def complete_work_items(self, items: Sequence[WorkItem]) -> list[bool]:
        """Complete many claimed items in one transaction, each guarded by its own worker
        and fence; ``False`` where the lease was lost."""
        return await self._write(self.queue.complete_many, items)

    async def fail_work_item(
        self,
        item_id: uuid.UUID | str,
        error: str,
        *,
        retry_in: timedelta | None = None,
        worker_id: str | None = None,
        lease_fence: int | None = None,
    ) -> WorkItemStatus:
        """Record a failure and release the lease: ``failed``, or with ``retry_in`` back to
        ``pending`` (dead-lettered once attempts are used up). Returns the new status."""
        return await self._write(self.queue.fail, item_id, error, retry_in, worker_id, lease_fence)

    async def reclaim_expired_leases(self) -> ReclaimResult:
        """Return every expired lease to the queue (with backoff) or to the dead-letter
        queue once its attempts are used up. Safe to run from many processes at once."""
        result = ReclaimResult()
        while True:
            retryable, exhausted = await self._write(self.queue.reclaim_batch, RECLAIM_BATCH)
            result.retryable += retryable
            result.exhausted += exhausted
            if len(retryable) + len(exhausted) < RECLAIM_BATCH:
                return result

    async def run_reclaimer(self, every: float | timedelta = 5.0) -> None:
        """Call :meth:`reclaim_expired_leases` every ``every`` seconds until cancelled.
        Run it beside your workers: ``asyncio.create_task(store.run_reclaimer())``.
        A failing round is logged and retried on the next tick."""
        interval = every.total_seconds() if isinstance(every, timedelta) else float(every)
        if not interval > 0:
            raise ValidationError("every must be a positive number of seconds")
        while True:
            try:
                await self.reclaim_expired_leases()
            except StateStoreError:
                _log.exception("reclaim_expired_leases failed; retrying in %.1f s", interval)
            await asyncio.sleep(interval)

    async def move_to_dead_letter(self, item_id: uuid.UUID | str, last_error: str) -> None:
        """Move an item to the dead-letter queue."""
        await self._write(self.queue.move_to_dead_letter, item_id, last_error)

    async def list_dead_letters(self, limit: int = 50, offset: int = 0) -> list[DeadLetter]:
        """Dead-lettered items, newest first."""
        return await self._read(self.queue.list_dead_letters, limit, offset)

    async def requeue_dead_letter(self, item_id: uuid.UUID | str) -> None:
        """Put a dead-lettered item back to ``pending`` with its attempts reset."""
        await self._write(self.queue.requeue_dead_letter, item_id)

    async def queue_stats(self) -> dict[str, dict[WorkItemStatus, int]]:
        """For every queue type with items, the count of each status (0 included)."""
        return await self._read(self.queue.stats)

    # ------------------------------------------------------------------ auth

    async def create_token(
        self, name: str, role: TokenRole | str, *, expires_in: timedelta | None = None
    ) -> tuple[str, ApiToken]:
        """Create an API token for this scope's tenant (``default`` on the unscoped store).
        Returns the plaintext token — shown only here — and its record."""
        return await self._write(self.tokens.create, name, role, expires_in)

    async def validate_token(self, token: str) -> ApiToken | None:
        """The token's record, or ``None`` for unknown, malformed, revoked or expired tokens
        and tokens of a suspended or archived tenant. Never raises for any input; records
        ``last_used_at`` at most once a minute."""
        found = await self._read(self.tokens.check, token)
        if found.token is None:
            return None
        if found.touch or found.new_hash is not None:
            found.token.last_used_at = await self._write(
                self.tokens.record_use, found.token.id, found.new_hash, single_statement=True
            )
        return found.token

    async def revoke_token(self, token_id: uuid.UUID | str) -> None:
        """Revoke a token; it stops validating at once."""
        await self._write(self.tokens.revoke, token_id)

    async def list_tokens(self) -> list[ApiToken]:
        """The scope's tokens (all tenants' on the unscoped store), oldest first."""
        return await self._read(self.tokens.list)

    # ------------------------------------------------------------------ tenants

    async def create_tenant(self, tenant: Tenant) -> None:
        """Create a tenant (operator action). Duplicate: ``ConflictError``."""
        await self._write(self.tenants.create, tenant)

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        """A tenant, or ``None``. A scoped store may read only its own."""
        return await self._read(self.tenants.get, tenant_id)

    async def list_tenants(self) -> list[Tenant]:
        """All tenants by id (operator action)."""
        return await self._read(self.tenants.list)

    async def update_tenant(self, tenant: Tenant) -> None:
        """Update a tenant's name, status, policy and limits (operator action)."""
        await self._write(self.tenants.update, tenant)


class SqliteBackend(StateStore):
    """A :class:`StateStore` that accepts only SQLite URLs."""

    _only_dialect = "sqlite"


class PostgresBackend(StateStore):
    """A :class:`StateStore` that accepts only PostgreSQL URLs."""

    _only_dialect = "postgresql"
