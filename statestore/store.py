"""The :class:`StateStore` facade: opening, migrating, scoping, and the flat methods.

The facade holds no logic. Each flat method hands one repository operation to the store's
runner (one call = one operation = one transaction) and awaits it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, aclosing
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from statestore import feed, procedures
from statestore.db.backend import Backend, open_backend
from statestore.db.engine import Durability, parse_database_url
from statestore.db.runner import Call
from statestore.db.tenancy import ALL_TENANTS, Scope
from statestore.errors import ConfigurationError, TenantError
from statestore.event_kinds import BaseEventKind
from statestore.models import (
    ApiToken,
    ArtifactRef,
    DeadLetter,
    Event,
    MaterializedState,
    ReclaimResult,
    Snapshot,
    Tenant,
    TokenRole,
    TurnResult,
    WorkflowDefinition,
    WorkflowExecution,
    WorkflowStatus,
    WorkItem,
    WorkItemStatus,
    utc_now,
)
from statestore.options import StoreOptions
from statestore.repositories.artifacts import ArtifactRepository
from statestore.repositories.auth import AuthRepository
from statestore.repositories.base import StoreContext
from statestore.repositories.effects import EffectRepository
from statestore.repositories.events import EventRepository
from statestore.repositories.executions import ExecutionRepository
from statestore.repositories.queue import QueueRepository
from statestore.repositories.snapshots import SnapshotRepository
from statestore.repositories.tenants import TenantRepository
from statestore.repositories.turns import TurnRepository
from statestore.repositories.workflows import WorkflowRepository
from statestore.validation import DEFAULT_MAX_JSON_BYTES, check_tenant_id

T = TypeVar("T")
JsonValue = Any


class _Shared:
    """What a store and all its tenant-scoped views share."""

    def __init__(self, backend: Backend, options: StoreOptions) -> None:
        self.backend = backend
        self.runner = backend.runner
        self.options = options


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
        self._backend = shared.backend
        context = StoreContext(
            scope=scope,
            clock=shared.options.clock,
            max_json_bytes=shared.options.max_json_bytes,
            lease_duration=shared.options.lease_duration,
            max_artifact_bytes=shared.options.max_artifact_bytes,
        )
        self.workflows = WorkflowRepository(context)
        self.executions = ExecutionRepository(context)
        self.events = EventRepository(context)
        self.snapshots = SnapshotRepository(context)
        self.tenants = TenantRepository(context)
        self.queue = QueueRepository(context)
        self.tokens = AuthRepository(context)
        self.effects = EffectRepository(context)
        self.artifacts = ArtifactRepository(context)
        self.turns = TurnRepository(
            context,
            executions=self.executions,
            events=self.events,
            queue=self.queue,
            snapshots=self.snapshots,
            effects=self.effects,
        )

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
        max_artifact_bytes: int = 64 * 1024 * 1024,
        direct_url: str | None = None,
        **engine_options: Any,
    ) -> Self:
        """Connect to a database without migrating it.

        ``url``: ``sqlite:///path``, ``sqlite:///:memory:``, ``postgresql://…`` (or
        ``postgres://…``, or an explicit async SQLAlchemy URL); ``None`` reads
        ``$STATESTORE_DATABASE_URL``, else ``sqlite:///./statestore.db``. ``clock`` gives
        every timestamp the store sets (default: system UTC time). SQLite only:
        ``durability`` ("NORMAL" or "FULL" for ``synchronous``), ``busy_timeout`` seconds,
        ``readers`` reader threads. ``max_artifact_bytes``: the largest artifact
        ``put_artifact`` takes (default 64 MiB). PostgreSQL behind PgBouncer in transaction
        pooling mode: add ``?pgbouncer=true`` to ``url`` and give ``direct_url``, the
        database without the pooler, for the store's session connections (the LISTEN that
        wakes waiting claims, the maintenance leader's lock). Other keyword arguments go
        to SQLAlchemy's ``create_async_engine``.
        """
        options = StoreOptions(
            clock or utc_now,
            lease_duration,
            max_json_bytes,
            durability,
            busy_timeout,
            readers,
            max_artifact_bytes,
        )
        config = parse_database_url(url, direct_url)
        if cls._only_dialect is not None and config.dialect != cls._only_dialect:
            raise ConfigurationError(
                f"{cls.__name__} accepts only {cls._only_dialect} URLs, got {config.dialect}"
            )
        backend = open_backend(
            config, options.sqlite, readers=readers, engine_options=engine_options
        )
        shared = _Shared(backend, options)
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
        await self._backend.migrate(revision)

    async def downgrade(self, revision: str) -> None:
        """Downgrade the database to ``revision`` (``"base"`` removes every table)."""
        await self._backend.downgrade(revision)

    async def current_revision(self) -> str | None:
        """The database's schema revision (``None`` for an empty database)."""
        return await self._backend.current_revision()

    @staticmethod
    def head_revision() -> str:
        """The schema revision this package needs."""
        return Backend.head_revision()

    async def schema_drift(self) -> list[str]:
        """Differences between the database schema and this package's models (empty: none)."""
        return await self._backend.schema_drift()

    async def close(self) -> None:
        """Stop the store's threads and dispose of the engine. Idempotent; closes every
        view sharing this store."""
        await self._backend.close()

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
        return self._backend.engine

    @property
    def url(self) -> str:
        """The database URL (password hidden)."""
        return self._backend.config.redacted()

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._backend.config.dialect

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

    async def _write(self, method: Callable[..., T], *args: Any) -> T:
        return await self._backend.write(Call(method, args), self._scope)

    async def _read(self, method: Callable[..., T], *args: Any) -> T:
        return await self._backend.read(Call(method, args), self._scope)

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
        backend = self._backend
        return await (backend.write if write else backend.read)(op, self._scope)

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
        return await self._write(self.events.append, event, expected_sequence)

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
        async for event in procedures.iter_events(
            self._backend, self._scope, self.events, execution_id, since, batch
        ):
            yield event

    async def latest_sequence(self, execution_id: uuid.UUID | str) -> int:
        """The latest sequence of an execution (0 if none or unknown)."""
        return await self._read(self.events.latest_sequence, execution_id)

    # ------------------------------------------------------------------ the feed

    async def read_feed(self, after: int = 0, limit: int = 100) -> list[Event]:
        """Committed events with a position after ``after``, in feed order (database-wide;
        a scoped store reads only its tenant's), at most ``limit`` (1..10000). Never skips:
        once a reader has seen position p, no event at or below p appears later."""
        return await self._read(self.events.feed, after, limit)

    async def iter_feed(
        self, after: int = 0, *, follow: bool = False, batch: int = 500
    ) -> AsyncIterator[Event]:
        """Stream the feed after ``after``, ``batch`` (1..10000) per read. With ``follow``
        it waits for new events instead of ending: woken by the store's commits and (on
        PostgreSQL) work notifications, with a bounded poll for the rest."""
        # Closed with this generator, not when the collector finds it: a follower's waiter
        # must not outlive the loop that left it.
        async with aclosing(
            feed.iter_feed(self._backend, self._scope, self.events, after, follow, batch)
        ) as events:
            async for event in events:
                yield event

    async def save_checkpoint(self, consumer: str, position: int) -> None:
        """Save a feed consumer's position (per tenant; the unscoped store's is the
        ``default`` tenant's)."""
        await self._write(self.events.save_checkpoint, consumer, position)

    async def get_checkpoint(self, consumer: str) -> int:
        """A feed consumer's saved position (0 if never saved)."""
        return await self._read(self.events.get_checkpoint, consumer)

    # ------------------------------------------------------------------ snapshots

    async def write_snapshot(self, snapshot: Snapshot) -> None:
        """Store a snapshot; the same (execution, at_sequence) again replaces it."""
        await self._write(self.snapshots.write, snapshot)

    async def latest_snapshot(self, execution_id: uuid.UUID | str) -> Snapshot | None:
        """The snapshot with the highest ``at_sequence``, or ``None``."""
        return await self._read(self.snapshots.latest, execution_id)

    # ------------------------------------------------------------------ queue

    async def enqueue_work_item(self, item: WorkItem) -> uuid.UUID:
        """Add a work item (pending; delayed until ``available_at`` if set); returns its id.
        Unknown execution (or another tenant's): ``NotFoundError``; a finished execution:
        ``InvalidTransitionError``; a suspended or archived tenant: ``TenantSuspendedError``;
        a duplicate id: ``ConflictError``."""
        return await self._write(self.queue.enqueue, item)

    async def claim_work_item(
        self,
        worker_id: str,
        queue_types: Sequence[str],
        *,
        wait: timedelta | float | None = None,
    ) -> WorkItem | None:
        """Atomically lease the next due pending item of these queue types (highest
        priority, then oldest), or ``None``. Never hands one item to two workers. With
        ``wait`` (a timedelta or seconds) and nothing eligible, wait up to that long for an
        item, woken by the database, not by polling (see docs/operations.md)."""
        items = await procedures.claim_waiting(
            self._backend, self._scope, self.queue, worker_id, queue_types, 1, wait
        )
        return items[0] if items else None

    async def claim_work_items(
        self,
        worker_id: str,
        queue_types: Sequence[str],
        limit: int,
        *,
        wait: timedelta | float | None = None,
    ) -> list[WorkItem]:
        """Lease up to ``limit`` (1..1000) items in one transaction, in claim order; with
        ``wait``, wait up to that long for at least one (like :meth:`claim_work_item`)."""
        return await procedures.claim_waiting(
            self._backend, self._scope, self.queue, worker_id, queue_types, limit, wait
        )

    async def renew_lease(
        self, item_id: uuid.UUID | str, worker_id: str, *, lease_fence: int | None = None
    ) -> datetime:
        """Extend an unexpired lease held by ``worker_id``; returns the new expiry.
        Otherwise ``LeaseLostError``: stop working on the item."""
        return await self._write(self.queue.renew, item_id, worker_id, lease_fence)

    def heartbeat(
        self, item: WorkItem, *, worker_id: str, every: timedelta | None = None
    ) -> AbstractAsyncContextManager[None]:
        """``async with store.heartbeat(item, worker_id=w):`` renews the item's lease every
        ``every`` (default a third of the lease) while the block runs; if a renewal finds
        the lease lost, the block is cancelled and ``LeaseLostError`` raised out of it."""
        if every is None:
            every = self._shared.options.lease_duration / 3
        return procedures.heartbeat(
            lambda: self.renew_lease(item.id, worker_id, lease_fence=item.lease_fence), every
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
        await self._write(self.queue.complete, item_id, worker_id, lease_fence)

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
        return await procedures.reclaim_expired_leases(self._backend, self._scope, self.queue)

    async def run_reclaimer(self, every: float | timedelta = 5.0) -> None:
        """Call :meth:`reclaim_expired_leases` every ``every`` seconds until cancelled.
        Run it beside your workers: ``asyncio.create_task(store.run_reclaimer())``.
        A failing round is logged and retried on the next tick."""
        await procedures.run_reclaimer(self._backend, self._scope, self.queue, every)

    async def run_maintenance(
        self, *, every: timedelta | float = timedelta(seconds=5), retention: timedelta | None = None
    ) -> None:
        """Maintain the store every ``every`` until cancelled: reclaim expired leases; with
        ``retention``, delete completed and failed items settled longer ago than that; on
        SQLite checkpoint the WAL. On PostgreSQL one process at a time does it (an advisory
        lock), so every process may run it. See docs/operations.md."""
        await procedures.run_maintenance(self._backend, self._scope, self.queue, every, retention)

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

    # ------------------------------------------------------------------ atomic turns

    async def commit_turn(
        self,
        item_id: uuid.UUID | str,
        *,
        worker_id: str,
        lease_fence: int,
        events: Sequence[BaseEventKind | dict[str, Any]] = (),
        state_patch: JsonValue | None = None,
        enqueue: Sequence[WorkItem] = (),
        fail: str | None = None,
        retry_in: timedelta | None = None,
        status: WorkflowStatus | str | None = None,
        snapshot: bool = False,
        effect_key: str | None = None,
        effect: JsonValue = None,
    ) -> TurnResult:
        """One workflow step in ONE transaction, all or nothing: settle the item (fenced:
        ``LeaseLostError`` unless ``worker_id`` holds it with ``lease_fence``, also when
        this lease already committed a turn), append ``events``, merge-patch the state
        (RFC 7396), enqueue successors, move the status, write the materialized snapshot,
        record the effect (first writer wins)."""
        turn = self.turns.check(
            item_id,
            worker_id,
            lease_fence,
            events,
            state_patch,
            enqueue,
            fail,
            retry_in,
            status,
            snapshot,
            effect_key,
            effect,
        )
        return await self._write(self.turns.commit, turn)

    async def continue_as_new(
        self,
        item_id: uuid.UUID | str,
        *,
        worker_id: str,
        lease_fence: int,
        state: JsonValue,
        enqueue: Sequence[WorkItem] = (),
    ) -> WorkflowExecution:
        """In one transaction: complete the item (fenced), mark its execution completed and
        start the next segment — ``parent_execution_id`` the old one, ``segment`` + 1,
        ``initial_input`` and ``current_state`` = ``state``, a WorkflowStarted event — with
        ``enqueue`` moved into it. The new id is derived from the parent and the segment,
        so a retry after an unknown outcome returns the same segment, creating nothing."""
        return await self._write(
            self.turns.continue_as_new, item_id, worker_id, lease_fence, state, enqueue
        )

    async def segment_chain(self, execution_id: uuid.UUID | str) -> list[WorkflowExecution]:
        """An execution's segments up to it, root first ([] if unknown)."""
        return await self._read(self.turns.segment_chain, execution_id)

    async def put_artifact(self, data: bytes, media_type: str | None = None) -> ArtifactRef:
        """Store ``data`` once per tenant under its SHA-256 (hex): the same bytes again store
        nothing and keep the first ``media_type``. Beyond ``max_artifact_bytes``:
        ``ValidationError``. Whole values in memory, not streamed."""
        return await self._write(self.artifacts.put, data, media_type)

    async def get_artifact(self, hash: str) -> bytes | None:
        """The bytes stored under ``hash`` for this tenant, or ``None``."""
        return await self._read(self.artifacts.get, hash)

    async def get_effect(self, key: str) -> JsonValue | None:
        """The effect recorded under ``key`` for this view's tenant (``"default"`` on the
        unscoped store), or ``None``."""
        return await self._read(self.effects.get, key)

    async def start_execution(
        self,
        execution: WorkflowExecution,
        *,
        events: Sequence[BaseEventKind | dict[str, Any]] = (),
        enqueue: Sequence[WorkItem] = (),
        idempotency_key: str | None = None,
    ) -> tuple[WorkflowExecution, bool]:
        """Create the execution, append ``events`` (sequences 1..n) and enqueue ``enqueue``
        in one transaction. With ``idempotency_key`` (unique per tenant, forever) an
        execution already started with it is returned with ``False`` and nothing is
        written; concurrent starts with one key create one."""
        return await procedures.start_execution(
            self._backend, self._scope, self.turns, execution, events, enqueue, idempotency_key
        )

    async def park_work_item(
        self,
        item_id: uuid.UUID | str,
        *,
        worker_id: str,
        lease_fence: int,
        until: datetime | None = None,
        retry_in: timedelta | None = None,
    ) -> None:
        """Hand a claimed item back without using up an attempt: pending again, available
        at ``until`` (or after ``retry_in``, or now). Stale holder: ``LeaseLostError``."""
        await self._write(self.queue.park, item_id, worker_id, lease_fence, until, retry_in)

    async def materialize(self, execution_id: uuid.UUID | str) -> MaterializedState:
        """The latest snapshot (or the initial input) with every later event folded in."""
        return await self._read(self.turns.materialize, execution_id)

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
        return await procedures.validate_token(self._backend, self._scope, self.tokens, token)

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
