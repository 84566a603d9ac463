"""Tenant isolation.

1. A hypothesis state machine drives random operations of every kind from two tenants'
   scoped stores and from the unscoped store, aimed at ids of both tenants (and at ids that
   do not exist). After every step it reads the ground truth straight from the tables (Core
   statements on a plain connection, which the tenant filter never sees) and checks that:
   a tenant's rows changed only in a step that was allowed to change them; every row belongs
   to the tenant the model says (events, snapshots and work items to their execution's);
   every scoped ``list_*`` / ``queue_stats`` returns exactly that tenant's objects. Each
   scoped call on a foreign id must behave exactly like the same call on an id that does not
   exist (same error class and message, or the same empty result) and change nothing. The
   Part 2 layer is driven too: turns, starts with idempotency keys, park, heartbeat,
   materialize, continue-as-new and segment chains on both tenants' work; effects, feed
   checkpoints and artifacts under the same keys in both tenants (each sees only its own);
   the feed (``read_feed``, ``iter_feed``) of a tenant holds exactly its events; a tenant's
   ``run_maintenance`` reclaims and deletes only its items.
2. Explicit tests: the filter fails closed; every method on another tenant's ids is
   "missing"; unknown and suspended tenants; the tenant limits under concurrent creates.
3. A static check that repositories do not use SQL the filter cannot see.

Volume: ``STATESTORE_PROPERTY_EXAMPLES`` / ``STATESTORE_PROPERTY_STEPS`` set the default run
(25 sequences of up to 25 steps per backend); the ``slow`` variant (``make test-slow``) runs
``STATESTORE_PROPERTY_SLOW_EXAMPLES`` (default 1,000) sequences of up to
``STATESTORE_PROPERTY_SLOW_STEPS`` (default 30) steps.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import os
import re
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest import Clock, reset_pg
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Connection, create_engine, delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

import statestore
from statestore import (
    ConflictError,
    Event,
    InvalidTransitionError,
    LeaseLostError,
    NodeCompleted,
    NotFoundError,
    SequenceConflictError,
    Snapshot,
    StateStore,
    StateStoreError,
    Tenant,
    TenantError,
    TenantLimitExceededError,
    TenantLimits,
    TenantStatus,
    TenantSuspendedError,
    TokenRole,
    ValidationError,
    WorkflowDefinition,
    WorkflowExecution,
    WorkflowFailed,
    WorkflowStatus,
    WorkItem,
    WorkItemStatus,
)
from statestore.db.schema import (
    ApiTokenRow,
    ArtifactRow,
    EffectRow,
    EventRow,
    ExecutionRow,
    FeedCheckpointRow,
    SnapshotRow,
    TenantRow,
    WorkflowDefinitionRow,
    WorkItemRow,
)
from statestore.db.tenancy import SCOPE_KEY, Scope, TenantSession

StoreFactory = Callable[..., Awaitable[StateStore]]

EXAMPLES = int(os.environ.get("STATESTORE_PROPERTY_EXAMPLES", "25"))
STEPS = int(os.environ.get("STATESTORE_PROPERTY_STEPS", "25"))
SLOW_EXAMPLES = int(os.environ.get("STATESTORE_PROPERTY_SLOW_EXAMPLES", "1000"))
SLOW_STEPS = int(os.environ.get("STATESTORE_PROPERTY_SLOW_STEPS", "30"))

T0 = datetime(2031, 1, 1, tzinfo=UTC)
"""Where the store's clock (``Clock(T0)``) starts. It only moves forward in a run, so the
examples sharing a database keep their timestamps ordered (the current one's are newest)."""
LEASE = timedelta(seconds=30)
OK = "ok"
ACTIVE_STATUSES = {s.value for s in WorkflowStatus if s.is_active}
TERMINAL_STATUSES = {s.value for s in WorkflowStatus if s.is_terminal}
Row = dict[str, Any]


# ---------------------------------------------------------------- ground truth


@dataclass
class Truth:
    """Every row of the watched tenants, read with Core statements (no tenant filter)."""

    workflows: dict[tuple[str, str, str], Row]
    executions: dict[uuid.UUID, Row]
    events: dict[uuid.UUID, Row]
    snapshots: dict[tuple[uuid.UUID, int], Row]
    items: dict[uuid.UUID, Row]
    tokens: dict[uuid.UUID, Row]
    effects: dict[tuple[str, str], Row]
    checkpoints: dict[tuple[str, str], Row]
    artifacts: dict[tuple[str, str], Row]
    tenants: dict[str, Row]
    others: tuple[int, ...]

    def of_tenant(self, tenant_id: str) -> dict[str, Any]:
        """Everything one tenant owns (compared before/after a step)."""
        view: dict[str, Any] = {
            name: {k: r for k, r in getattr(self, name).items() if r["tenant_id"] == tenant_id}
            for name in _OWNED
        }
        view["tenant"] = self.tenants.get(tenant_id)
        return view


_OWNED = {
    "workflows": WorkflowDefinitionRow,
    "executions": ExecutionRow,
    "events": EventRow,
    "snapshots": SnapshotRow,
    "items": WorkItemRow,
    "tokens": ApiTokenRow,
    "effects": EffectRow,
    "checkpoints": FeedCheckpointRow,
    "artifacts": ArtifactRow,
}
# How the rows of each table are keyed in Truth (by their id unless named here).
_KEYS: dict[str, Callable[[Row], Any]] = {
    "workflows": lambda r: (r["tenant_id"], r["workflow_id"], r["version"]),
    "snapshots": lambda r: (r["execution_id"], r["at_sequence"]),
    "effects": lambda r: (r["tenant_id"], r["key"]),
    "checkpoints": lambda r: (r["tenant_id"], r["consumer"]),
    "artifacts": lambda r: (r["tenant_id"], r["hash"]),
}


def truth_from(
    conn: Connection, tenant_ids: list[str], token_ids: Iterable[uuid.UUID] = ()
) -> Truth:
    """Rows of ``tenant_ids`` in every tenant-owned table (plus the tokens ``token_ids`` of
    any tenant), the tenants' rows, and the row counts of every other tenant."""
    token_ids = list(token_ids)
    found: dict[str, list[Row]] = {}
    for name, model in _OWNED.items():
        table = model.__table__
        condition = table.c.tenant_id.in_(tenant_ids)
        if name == "tokens" and token_ids:
            condition = condition | table.c.id.in_(token_ids)
        found[name] = [dict(r) for r in conn.execute(select(table).where(condition)).mappings()]
    tenants_table = TenantRow.__table__
    result = conn.execute(
        select(tenants_table).where(tenants_table.c.id.in_([*tenant_ids, "default"]))
    )
    found["tenants"] = [dict(r) for r in result.mappings()]
    counts = [
        select(func.count())
        .select_from(model.__table__)
        .where(model.__table__.c.tenant_id.not_in(tenant_ids))
        .scalar_subquery()
        for model in _OWNED.values()
    ]
    counts.append(select(func.count()).select_from(tenants_table).scalar_subquery())
    others = tuple(conn.execute(select(*counts)).one())
    keys = {name: _KEYS.get(name, itemgetter("id")) for name in found}
    return Truth(**{n: {keys[n](r): r for r in rows} for n, rows in found.items()}, others=others)


async def read_truth(
    engine: AsyncEngine, tenant_ids: list[str], token_ids: Iterable[uuid.UUID] = ()
) -> Truth:
    async with engine.connect() as conn:
        return await conn.run_sync(truth_from, tenant_ids, list(token_ids))


# ---------------------------------------------------------------- outcomes


@dataclass
class Outcome:
    """What a store call did: returned ``value`` or raised ``error``."""

    value: Any = None
    error: StateStoreError | None = None

    @property
    def kind(self) -> Any:
        return OK if self.error is None else type(self.error)

    @property
    def ok(self) -> bool:
        return self.error is None

    def masked(self, ids: dict[str, str]) -> tuple[Any, Any]:
        """Comparable form with the given ids replaced by placeholders."""
        if self.error is None:
            return OK, self.value
        message = str(self.error)
        for real, placeholder in ids.items():
            message = message.replace(real, placeholder)
        return type(self.error), message

    def __repr__(self) -> str:
        if self.error is None:
            return f"ok({self.value!r})"
        return f"{type(self.error).__name__}({self.error})"


async def attempt(awaitable: Awaitable[Any]) -> Outcome:
    """Await a store call; public methods may raise only StateStoreError subclasses."""
    try:
        return Outcome(value=await awaitable)
    except StateStoreError as exc:
        return Outcome(error=exc)


ArgsOf = Callable[[uuid.UUID], tuple[tuple[Any, ...], dict[str, Any]]]
"""The arguments of a call aimed at an id, for that id (a foreign one or a ghost)."""


def on(*rest: Any, **kwargs: Any) -> ArgsOf:
    """The arguments of a call whose first argument is the id: the id, ``rest``, ``kwargs``."""
    return lambda i: ((i, *rest), kwargs)


def model(make: Callable[[uuid.UUID], Any], **kwargs: Any) -> ArgsOf:
    """The arguments of a call taking one model, ``make(id)``, and ``kwargs``."""
    return lambda i: ((make(i),), kwargs)


def assert_like_missing(
    what: str, got: Outcome, foreign: object, baseline: Outcome, ghost: object
) -> None:
    """``got``, a call on another tenant's ``foreign`` id, is indistinguishable from
    ``baseline``, the same call on ``ghost``, an id that never existed: the same error class
    and message (ids masked), or the same result."""
    assert got.masked({str(foreign): "<id>"}) == baseline.masked({str(ghost): "<id>"}), (
        f"{what} on a foreign id is distinguishable from a missing one: {got!r} vs {baseline!r}"
    )


def names(kinds: Iterable[Any]) -> str:
    return ", ".join(sorted(k if isinstance(k, str) else k.__name__ for k in kinds))


def other(role: str) -> str:
    return "B" if role == "A" else "A"


# ---------------------------------------------------------------- the state machine


@dataclass
class Env:
    loop: asyncio.AbstractEventLoop
    store: StateStore
    clock: Clock
    read_truth: Callable[[list[str], list[uuid.UUID]], Awaitable[Truth]]


ACTOR = st.sampled_from(["A", "B", "U"])  # tenant A's store, tenant B's, the unscoped one
ROLE = st.sampled_from(["A", "B"])
# Whose object a rule aims at (the same actor's, the other tenant's, or an unknown id).
WHOSE = st.sampled_from(["A", "B", "A", "B", "missing"])
PICK = st.integers(min_value=0, max_value=63)
EXPLICIT = st.sampled_from(["unset", "unset", "own", "other"])  # the model's tenant_id field
WORKER = st.sampled_from(["holder", "other", "none"])
FENCE = st.sampled_from(["none", "right", "wrong"])
STATES: list[Any] = [{}, {"k": [1]}, {"k": 3}, [1, 2], {"x": "y"}]
LIMIT = st.sampled_from([None, None, 2, 3, 4])


class TenantIsolationMachine(RuleBasedStateMachine):
    """Two tenants (``A``, ``B``, fresh random ids per example) plus the unscoped store
    (``U``). The model is the set of ids each tenant owns; the expected outcome of every
    call is derived from the ground truth read before it."""

    env: ClassVar[Env]

    def __init__(self) -> None:
        super().__init__()
        self.loop = self.env.loop
        self.clock = self.env.clock
        root = self.env.store
        suffix = uuid.uuid4().hex[:8]
        self.tenant = {"A": f"a-{suffix}", "B": f"b-{suffix}", "D": "default"}
        self.role_of = {tenant: role for role, tenant in self.tenant.items()}
        self.stores: dict[str, StateStore] = {
            "A": root.for_tenant(self.tenant["A"]),
            "B": root.for_tenant(self.tenant["B"]),
            "U": root,
        }
        self.status = {"A": TenantStatus.ACTIVE, "B": TenantStatus.ACTIVE}
        self.limits: dict[str, TenantLimits] = {}
        self.workflow_ids = [f"wf{i}-{suffix}" for i in range(3)]
        self.queue_types = [f"q{i}-{suffix}" for i in range(2)]
        # Part 2's keys, the same in both tenants (each tenant's are its own).
        self.idempotency_keys = [f"k{i}-{suffix}" for i in range(2)]
        self.effect_keys = [f"e{i}-{suffix}" for i in range(2)]
        self.consumers = [f"c{i}-{suffix}" for i in range(2)]
        self.blobs = [f"blob {i} {suffix}".encode() for i in range(2)]
        self.checkpoints: dict[tuple[str, str], int] = {}  # (role or "D", consumer)
        self.artifacts: set[tuple[str, str]] = set()  # (role or "D", hash)
        # The model: what each tenant owns, in creation order (deterministic picks).
        self.workflows: set[tuple[str, str, str]] = set()
        self.executions: dict[str, list[uuid.UUID]] = {"A": [], "B": []}
        self.items: dict[str, list[uuid.UUID]] = {"A": [], "B": []}
        self.tokens: dict[str, list[uuid.UUID]] = {"A": [], "B": [], "D": []}
        self.secrets: dict[uuid.UUID, str] = {}
        self.event_ids: list[uuid.UUID] = []
        self.truth: Truth | None = None
        self.touched: set[str] = set()
        self.post: list[Callable[[Truth], None]] = []
        self.counter = 0
        self.lists_checked = False

    # ------------------------------------------------------------ plumbing

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coro)

    def call(self, actor: str, method: str, *args: Any, **kwargs: Any) -> Outcome:
        return self.run(attempt(getattr(self.stores[actor], method)(*args, **kwargs)))

    def fetch(self) -> Truth:
        return self.run(self.env.read_truth([self.tenant["A"], self.tenant["B"]], self.tokens["D"]))

    @property
    def gt(self) -> Truth:
        assert self.truth is not None
        return self.truth

    def begin(self) -> None:
        """Start a step: time moves on (unique timestamps per step); nothing may change
        unless the step says so."""
        self.clock.advance(milliseconds=1)
        self.touched = set()
        self.post = []
        self.counter += 1

    def allow(self, *roles: str) -> None:
        self.touched.update(roles)

    @staticmethod
    def visible(actor: str, owner: str | None) -> bool:
        return owner is not None and (actor == "U" or actor == owner)

    def pick(
        self, pools: dict[str, list[uuid.UUID]], whose: str, pick: int
    ) -> tuple[uuid.UUID, str | None]:
        pool = pools.get(whose, [])
        if not pool:
            return uuid.uuid4(), None
        return pool[pick % len(pool)], whose

    def expect(self, got: Outcome, acceptable: set[Any], what: str) -> None:
        event(f"{what} -> {names([got.kind])}")  # --hypothesis-show-statistics
        assert got.kind in acceptable, f"{what}: expected {names(acceptable)}, got {got!r}"

    def hidden(
        self,
        actor: str,
        owner: str | None,
        method: str,
        target: uuid.UUID,
        make_args: ArgsOf,
        allowed: Iterable[Any] = (NotFoundError,),
    ) -> bool:
        """Whether ``owner``'s ``target`` is hidden from ``actor`` (another tenant's, or
        missing: ``owner`` is None). If it is, the call was made and checked: it behaves
        exactly as on an id that never existed, raises one of ``allowed`` and changes
        nothing; the rule has nothing more to do."""
        if self.visible(actor, owner):
            return False
        args, kwargs = make_args(target)
        got = self.call(actor, method, *args, **kwargs)
        ghost = uuid.uuid4()
        args, kwargs = make_args(ghost)
        baseline = self.call(actor, method, *args, **kwargs)
        assert_like_missing(f"{actor}.{method}", got, target, baseline, ghost)
        aimed = "a missing" if owner is None else "a foreign"
        self.expect(got, set(allowed), f"{actor}.{method} on {aimed} id")
        self.touched = set()
        return True

    def model_tenant(
        self, actor: str, owner: str | None, explicit: str, *, child: bool = False
    ) -> dict[str, str]:
        """The ``tenant_id`` keyword of a model ``actor`` writes for ``owner`` (None: the
        execution is missing). ``explicit`` is "unset" (none), "own" or "other": relative
        to a scoped store's tenant, or on the unscoped store to the owner. The unscoped
        store writes a workflow or execution under the tenant its model names, so it always
        names it; a child (event, snapshot, work item) may name the wrong tenant, which
        must be ignored: children take their execution's tenant."""
        if actor == "U":
            relative_to, explicit = owner or "A", explicit if child else "own"
        else:
            relative_to = actor
        if explicit == "own":
            return {"tenant_id": self.tenant[relative_to]}
        if explicit == "other":
            return {"tenant_id": self.tenant[other(relative_to)]}
        return {}

    @staticmethod
    def misnamed(actor: str, explicit: str) -> set[Any]:
        """A scoped store refuses a model naming another tenant; the unscoped store does not."""
        return {TenantError} if actor != "U" and explicit == "other" else set()

    # ------------------------------------------------------------ set-up

    @initialize(limits_a=st.tuples(LIMIT, LIMIT), limits_b=st.tuples(LIMIT, LIMIT))
    def create_tenants(
        self, limits_a: tuple[int | None, int | None], limits_b: tuple[int | None, int | None]
    ) -> None:
        for role in ("A", "B"):
            tenant = Tenant(id=self.tenant[role], name=f"Tenant {role}")
            assert self.call("U", "create_tenant", tenant).ok
        for role in ("A", "B"):
            self.seed(role)
        # Limits come after seed()'s objects (they may already be reached: creates are then
        # refused).
        for role, (executions, workflows) in (("A", limits_a), ("B", limits_b)):
            limits = TenantLimits(max_concurrent_executions=executions, max_workflows=workflows)
            self.limits[role] = limits
            tenant = Tenant(id=self.tenant[role], name=f"Tenant {role}", limits=limits)
            assert self.call("U", "update_tenant", tenant).ok
        self.truth = self.fetch()
        self.check_ownership(self.truth)

    def seed(self, role: str) -> None:
        """One of everything for ``role``, half through its scoped store and half through
        the unscoped one (whose models name the wrong tenant where it must be ignored), so
        every rule has own and foreign targets from the first step."""
        scoped, tenant_id, wrong = role, self.tenant[role], self.tenant[other(role)]

        def ok(actor: str, method: str, *args: Any, **kwargs: Any) -> Any:
            got = self.call(actor, method, *args, **kwargs)
            assert got.ok, f"seed {actor}.{method}: {got!r}"
            return got.value

        self.clock.advance(milliseconds=1)
        ok(
            scoped,
            "store_workflow",
            WorkflowDefinition(workflow_id=self.workflow_ids[0], version="1", ir={"v": 0}),
        )
        self.workflows.add((tenant_id, self.workflow_ids[0], "1"))
        running = WorkflowExecution(
            workflow_id=self.workflow_ids[0], workflow_version="1", status=WorkflowStatus.RUNNING
        )
        pending = WorkflowExecution(
            workflow_id=self.workflow_ids[1], workflow_version="1", tenant_id=tenant_id
        )
        self.clock.advance(milliseconds=1)
        ok(scoped, "create_execution", running)
        self.clock.advance(milliseconds=1)
        ok("U", "create_execution", pending)
        self.executions[role] += [running.execution_id, pending.execution_id]
        first = Event(execution_id=running.execution_id, kind={"type": "probe"})
        ok(scoped, "append_event", first)
        self.event_ids.append(first.id)
        second = Event(execution_id=pending.execution_id, kind={"type": "probe"}, tenant_id=wrong)
        ok("U", "append_event", second)
        self.event_ids.append(second.id)
        ok("U", "append_events", running.execution_id, [WorkflowFailed(error="seed")])
        ok(
            "U",
            "write_snapshot",
            Snapshot(execution_id=running.execution_id, at_sequence=1, state={}, tenant_id=wrong),
        )
        for n, (execution, actor, priority) in enumerate(
            [(running, scoped, 0), (pending, "U", 0), (running, scoped, 1)]
        ):
            self.clock.advance(milliseconds=1)
            item = WorkItem(
                execution_id=execution.execution_id,
                node_id=f"seed{n}",
                queue_type=self.queue_types[n % 2],
                priority=priority,
                tenant_id=wrong if actor == "U" else tenant_id,
            )
            ok(actor, "enqueue_work_item", item)
            self.items[role].append(item.id)
        claimed = ok(scoped, "claim_work_item", "w1", [self.queue_types[0]])
        assert claimed is not None and claimed.node_id == "seed2"
        self.clock.advance(milliseconds=1)
        plaintext, token = ok(scoped, "create_token", "seed", TokenRole.VIEWER)
        self.tokens[role].append(token.id)
        self.secrets[token.id] = plaintext

    # ------------------------------------------------------------ workflows

    @rule(
        actor=ACTOR,
        role=ROLE,
        wf=st.integers(0, 2),
        version=st.sampled_from(["1", "2"]),
        ir=st.integers(0, 1),
        replace=st.booleans(),
        explicit=EXPLICIT,
    )
    def store_workflow(
        self, actor: str, role: str, wf: int, version: str, ir: int, replace: bool, explicit: str
    ) -> None:
        self.begin()
        owner = role if actor == "U" else actor
        kw = self.model_tenant(actor, owner, explicit)
        tenant_id = self.tenant[owner]
        workflow_id = self.workflow_ids[wf]
        definition = WorkflowDefinition(
            workflow_id=workflow_id, version=version, ir={"v": ir}, **kw
        )
        errors = self.misnamed(actor, explicit)
        existing = self.gt.workflows.get((tenant_id, workflow_id, version))
        if existing is not None:
            if existing["ir"] != {"v": ir} and not replace:
                errors.add(ConflictError)
        else:
            limit = self.limits[owner].max_workflows
            ids = {key[1] for key in self.gt.workflows if key[0] == tenant_id}
            if limit is not None and workflow_id not in ids and len(ids) >= limit:
                errors.add(TenantLimitExceededError)
        acceptable = errors or {OK}
        if self.status[owner] is not TenantStatus.ACTIVE:
            # The contract refuses new executions, enqueues and tokens of a suspended
            # tenant; it says nothing of workflows, so refusing them is accepted too.
            acceptable = acceptable | {TenantSuspendedError}
        got = self.call(actor, "store_workflow", definition, replace=replace)
        self.expect(got, acceptable, f"{actor}.store_workflow for {owner}")
        if got.ok:
            self.allow(owner)
            key = (tenant_id, workflow_id, version)
            self.workflows.add(key)

            def check(truth: Truth) -> None:
                assert truth.workflows[key]["ir"] == (
                    {"v": ir} if existing is None or replace else existing["ir"]
                )

            self.post.append(check)

    @rule(actor=ACTOR, wf=st.integers(0, 2))
    def read_workflows(self, actor: str, wf: int) -> None:
        """get_workflow of every version of one workflow id, and list_workflows of it."""
        self.begin()
        workflow_id = self.workflow_ids[wf]
        scope = ["A", "B"] if actor == "U" else [actor]
        for version in ("1", "2"):
            candidates = sorted(
                (self.tenant[r], workflow_id, version)
                for r in scope
                if (self.tenant[r], workflow_id, version) in self.gt.workflows
            )
            got = self.call(actor, "get_workflow", workflow_id, version)
            assert got.ok, got
            if not candidates:
                assert got.value is None, f"{actor}.get_workflow sees {got.value!r}"
                continue
            # Unscoped: the default tenant's wins (it has none here), then the first by id.
            row = self.gt.workflows[candidates[0]]
            assert got.value is not None
            assert (got.value.tenant_id, got.value.ir) == (row["tenant_id"], row["ir"]), (
                f"{actor}.get_workflow({workflow_id!r}, {version!r}) -> {got.value!r}"
            )
        listed = self.call(actor, "list_workflows", workflow_id)
        assert listed.ok, listed
        expected = sorted(
            (key[1], key[2], key[0])
            for key in self.gt.workflows
            if key[1] == workflow_id and self.role_of[key[0]] in scope
        )
        assert [(d.workflow_id, d.version, d.tenant_id) for d in listed.value] == expected

    # ------------------------------------------------------------ executions

    @rule(
        actor=ACTOR,
        role=ROLE,
        wf=st.integers(0, 2),
        status=st.sampled_from(
            [WorkflowStatus.PENDING, WorkflowStatus.RUNNING, WorkflowStatus.COMPLETED]
        ),
        explicit=EXPLICIT,
        dup=st.sampled_from(["new", "new", "new", "A", "B"]),
        pick=PICK,
    )
    def create_execution(
        self,
        actor: str,
        role: str,
        wf: int,
        status: WorkflowStatus,
        explicit: str,
        dup: str,
        pick: int,
    ) -> None:
        self.begin()
        owner = role if actor == "U" else actor
        kw = self.model_tenant(actor, owner, explicit)
        tenant_id = self.tenant[owner]
        execution_id, dup_owner = self.pick(self.executions, dup, pick)
        execution = WorkflowExecution(
            execution_id=execution_id,
            workflow_id=self.workflow_ids[wf],
            workflow_version="1",
            status=status,
            **kw,
        )
        errors = self.misnamed(actor, explicit)
        if self.status[owner] is not TenantStatus.ACTIVE:
            errors.add(TenantSuspendedError)
        limit = self.limits[owner].max_concurrent_executions
        active = sum(
            1
            for row in self.gt.executions.values()
            if row["tenant_id"] == tenant_id and row["status"] in ACTIVE_STATUSES
        )
        if limit is not None and status.is_active and active >= limit:
            errors.add(TenantLimitExceededError)
        if dup_owner is not None:
            errors.add(ConflictError)  # ids are global: another tenant's id is taken
        got = self.call(actor, "create_execution", execution)
        self.expect(got, errors or {OK}, f"{actor}.create_execution for {owner}")
        if got.ok:
            self.allow(owner)
            self.executions[owner].append(execution_id)

            def check(truth: Truth) -> None:
                row = truth.executions[execution_id]
                assert (row["tenant_id"], row["status"]) == (tenant_id, status.value)

            self.post.append(check)

    @rule(
        actor=ACTOR,
        whose=WHOSE,
        pick=PICK,
        status=st.sampled_from([*WorkflowStatus, WorkflowStatus.RUNNING, WorkflowStatus.PAUSED]),
        expected=st.sampled_from(["none", "current", "pending"]),
    )
    def update_execution_status(
        self, actor: str, whose: str, pick: int, status: WorkflowStatus, expected: str
    ) -> None:
        self.begin()
        target, owner = self.pick(self.executions, whose, pick)
        row = self.gt.executions.get(target)
        current = None if row is None else row["status"]
        wanted = {"none": None, "current": current, "pending": "pending"}[expected]
        kwargs = {} if wanted is None else {"expected": wanted}
        if self.hidden(actor, owner, "update_execution_status", target, on(status, **kwargs)):
            return
        assert row is not None
        if wanted is not None and current != wanted:
            acceptable: set[Any] = {InvalidTransitionError}
        elif current == status.value:
            acceptable = {OK}
        elif current in TERMINAL_STATUSES:
            acceptable = {InvalidTransitionError}
        else:
            acceptable = {OK}
        got = self.call(actor, "update_execution_status", target, status, **kwargs)
        self.expect(got, acceptable, f"{actor}.update_execution_status on {owner}'s")
        if got.ok:
            self.allow(owner)
            open_items = [
                item_id
                for item_id, item in self.gt.items.items()
                if item["execution_id"] == target and item["status"] in ("pending", "claimed")
            ]

            def check(truth: Truth) -> None:
                assert truth.executions[target]["status"] == status.value
                if status.is_terminal:
                    for item_id in open_items:
                        assert truth.items[item_id]["status"] == "failed"

            self.post.append(check)

    @rule(actor=ACTOR, whose=WHOSE, pick=PICK, state=st.integers(0, len(STATES) - 1))
    def update_execution_current_state(self, actor: str, whose: str, pick: int, state: int) -> None:
        self.begin()
        target, owner = self.pick(self.executions, whose, pick)
        value = STATES[state]
        if self.hidden(actor, owner, "update_execution_current_state", target, on(value)):
            return
        got = self.call(actor, "update_execution_current_state", target, value)
        self.expect(got, {OK}, f"{actor}.update_execution_current_state on {owner}'s")
        self.allow(owner)
        self.post.append(
            lambda truth: self._assert_equal(truth.executions[target]["current_state"], value)
        )

    @staticmethod
    def _assert_equal(found: Any, expected: Any) -> None:
        assert found == expected, f"{found!r} != {expected!r}"

    @rule(
        actor=ACTOR,
        whose=WHOSE,
        pick=PICK,
        key=st.sampled_from(["k", "m"]),
        value=st.integers(0, 9),
    )
    def patch_append_array(self, actor: str, whose: str, pick: int, key: str, value: int) -> None:
        self.begin()
        target, owner = self.pick(self.executions, whose, pick)
        if self.hidden(actor, owner, "patch_append_array", target, on(key, value)):
            return
        state = self.gt.executions[target]["current_state"]
        valid = isinstance(state, dict) and isinstance(state.get(key, []), list)
        got = self.call(actor, "patch_append_array", target, key, value)
        self.expect(got, {OK} if valid else {ValidationError}, f"{actor}.patch_append_array")
        if got.ok:
            self.allow(owner)
            expected = [*state.get(key, []), value]
            self.post.append(
                lambda truth: self._assert_equal(
                    truth.executions[target]["current_state"][key], expected
                )
            )

    # ------------------------------------------------------------ events and snapshots

    @rule(
        actor=ACTOR,
        whose=WHOSE,
        pick=PICK,
        expected=st.sampled_from(["none", "right", "wrong"]),
        explicit=EXPLICIT,
        dup=st.booleans(),
        dup_pick=PICK,
    )
    def append_event(
        self,
        actor: str,
        whose: str,
        pick: int,
        expected: str,
        explicit: str,
        dup: bool,
        dup_pick: int,
    ) -> None:
        self.begin()
        target, owner = self.pick(self.executions, whose, pick)
        row = self.gt.executions.get(target)
        latest = 0 if row is None else row["last_sequence"]
        kw = self.model_tenant(actor, owner, explicit, child=True)
        event_id = uuid.uuid4()
        if dup and self.event_ids:
            event_id = self.event_ids[dup_pick % len(self.event_ids)]
        wanted = {"none": None, "right": latest, "wrong": latest + 1}[expected]
        kind = {"type": "probe", "n": self.counter}

        def args(i: uuid.UUID) -> tuple[tuple[Any, ...], dict[str, Any]]:
            event = Event(id=event_id, execution_id=i, kind=kind, **kw)
            return (event,), {"expected_sequence": wanted}

        # A reused event id may be reported before the execution is looked up.
        dup_refusal = (ConflictError,) if event_id in self.event_ids else ()
        if self.hidden(actor, owner, "append_event", target, args, (NotFoundError, *dup_refusal)):
            return
        errors = self.misnamed(actor, explicit)
        if expected == "wrong":
            errors.add(SequenceConflictError)
        if event_id in self.event_ids:
            errors.add(ConflictError)
        (event,), kwargs = args(target)
        got = self.call(actor, "append_event", event, **kwargs)
        self.expect(got, errors or {OK}, f"{actor}.append_event on {owner}'s")
        if got.ok:
            assert got.value == latest + 1, got
            self.allow(owner)
            self.event_ids.append(event_id)
            tenant_id = self.tenant[owner]

            def check(truth: Truth) -> None:
                stored = truth.events[event_id]
                assert (stored["tenant_id"], stored["sequence"]) == (tenant_id, latest + 1), (
                    f"event written by {actor} with {kw} stored as {stored['tenant_id']!r}, "
                    f"execution belongs to {tenant_id!r}"
                )

            self.post.append(check)

    @rule(
        actor=ACTOR,
        whose=WHOSE,
        pick=PICK,
        count=st.integers(0, 3),
        expected=st.sampled_from(["none", "right", "wrong"]),
    )
    def append_events(self, actor: str, whose: str, pick: int, count: int, expected: str) -> None:
        self.begin()
        target, owner = self.pick(self.executions, whose, pick)
        row = self.gt.executions.get(target)
        latest = 0 if row is None else row["last_sequence"]
        wanted = {"none": None, "right": latest, "wrong": latest + 3}[expected]
        kinds = [WorkflowFailed(error=f"probe-{self.counter}-{n}") for n in range(count)]
        if self.hidden(actor, owner, "append_events", target, on(kinds, expected_sequence=wanted)):
            return
        got = self.call(actor, "append_events", target, kinds, expected_sequence=wanted)
        acceptable = {SequenceConflictError} if expected == "wrong" else {OK}
        self.expect(got, acceptable, f"{actor}.append_events on {owner}'s")
        if got.ok:
            assert got.value == list(range(latest + 1, latest + 1 + count)), got
            self.allow(owner)
            tenant_id = self.tenant[owner]

            def check(truth: Truth) -> None:
                stored = [e for e in truth.events.values() if e["execution_id"] == target]
                assert {e["tenant_id"] for e in stored} <= {tenant_id}
                assert truth.executions[target]["last_sequence"] == latest + count

            self.post.append(check)

    @rule(
        actor=ACTOR,
        whose=WHOSE,
        pick=PICK,
        at_sequence=st.integers(0, 3),
        state=st.integers(0, len(STATES) - 1),
        explicit=EXPLICIT,
    )
    def write_snapshot(
        self, actor: str, whose: str, pick: int, at_sequence: int, state: int, explicit: str
    ) -> None:
        self.begin()
        target, owner = self.pick(self.executions, whose, pick)
        kw = self.model_tenant(actor, owner, explicit, child=True)
        value = STATES[state]

        def args(i: uuid.UUID) -> tuple[tuple[Any, ...], dict[str, Any]]:
            return (Snapshot(execution_id=i, at_sequence=at_sequence, state=value, **kw),), {}

        if self.hidden(actor, owner, "write_snapshot", target, args):
            return
        got = self.call(actor, "write_snapshot", *args(target)[0])
        self.expect(got, self.misnamed(actor, explicit) or {OK}, f"{actor}.write_snapshot")
        if got.ok:
            self.allow(owner)
            tenant_id = self.tenant[owner]

            def check(truth: Truth) -> None:
                stored = truth.snapshots[(target, at_sequence)]
                assert (stored["tenant_id"], stored["state"]) == (tenant_id, value), stored

            self.post.append(check)

    @rule(actor=ACTOR, whose=WHOSE, pick=PICK)
    def read_execution(self, actor: str, whose: str, pick: int) -> None:
        """Every per-execution read: the owner's view equals the ground truth; anyone
        else's equals that of an execution that does not exist."""
        self.begin()
        target, owner = self.pick(self.executions, whose, pick)
        truth = self.gt
        seen = self.visible(actor, owner)

        def call(method: str, *args: Any, **kwargs: Any) -> Any:
            got = self.call(actor, method, *args, **kwargs)
            assert got.ok, f"{actor}.{method}: {got!r}"
            return got.value

        execution = call("get_execution", target)
        events = call("get_events", target)
        since = call("get_events_since", target, 1, limit=2)
        latest = call("latest_sequence", target)
        snapshot = call("latest_snapshot", target)
        items = call("list_work_items", target)
        event(f"{actor}.read_execution of {'own' if seen else whose} execution")
        if not seen:
            found = (execution, events, since, latest, snapshot, items)
            assert found == (None, [], [], 0, None, []), (
                f"{actor} reads {whose}'s execution: {found!r}"
            )
            return
        row = truth.executions[target]
        assert execution is not None
        assert (
            execution.tenant_id,
            execution.status.value,
            execution.current_state,
            execution.updated_at,
        ) == (row["tenant_id"], row["status"], row["current_state"], row["updated_at"])
        stored = sorted(
            (e for e in truth.events.values() if e["execution_id"] == target),
            key=lambda e: e["sequence"],
        )
        expected_events = [(e["id"], e["sequence"], e["tenant_id"]) for e in stored]
        assert [(e.id, e.sequence, e.tenant_id) for e in events] == expected_events
        assert [(e.id, e.sequence, e.tenant_id) for e in since] == [
            e for e in expected_events if e[1] > 1
        ][:2]
        assert latest == row["last_sequence"]
        snapshots = [s for s in truth.snapshots.values() if s["execution_id"] == target]
        if not snapshots:
            assert snapshot is None
        else:
            best = max(snapshots, key=lambda s: s["at_sequence"])
            assert snapshot is not None
            assert (snapshot.at_sequence, snapshot.state, snapshot.tenant_id) == (
                best["at_sequence"],
                best["state"],
                best["tenant_id"],
            )
        own_items = sorted(
            (i for i in truth.items.values() if i["execution_id"] == target),
            key=lambda i: (i["created_at"], i["id"]),
        )
        assert [(i.id, i.tenant_id) for i in items] == [
            (i["id"], i["tenant_id"]) for i in own_items
        ]

    # ------------------------------------------------------------ queue

    @rule(
        actor=ACTOR,
        whose=WHOSE,
        pick=PICK,
        queue=st.integers(0, 1),
        priority=st.integers(0, 2),
        max_attempts=st.integers(1, 3),
        delayed=st.booleans(),
        explicit=EXPLICIT,
        dup=st.sampled_from(["new", "new", "new", "A", "B"]),
        dup_pick=PICK,
    )
    def enqueue_work_item(
        self,
        actor: str,
        whose: str,
        pick: int,
        queue: int,
        priority: int,
        max_attempts: int,
        delayed: bool,
        explicit: str,
        dup: str,
        dup_pick: int,
    ) -> None:
        self.begin()
        target, owner = self.pick(self.executions, whose, pick)
        kw = self.model_tenant(actor, owner, explicit, child=True)
        item_id, dup_owner = self.pick(self.items, dup, dup_pick)
        available_at = self.clock.now + timedelta(seconds=5) if delayed else None

        def args(i: uuid.UUID) -> tuple[tuple[Any, ...], dict[str, Any]]:
            item = WorkItem(
                id=item_id,
                execution_id=i,
                node_id="node",
                queue_type=self.queue_types[queue],
                payload={"n": self.counter},
                priority=priority,
                max_attempts=max_attempts,
                available_at=available_at,
                **kw,
            )
            return (item,), {}

        dup_refusal = (ConflictError,) if dup_owner is not None else ()
        allowed = (NotFoundError, *dup_refusal)
        if self.hidden(actor, owner, "enqueue_work_item", target, args, allowed):
            return
        errors = self.misnamed(actor, explicit)
        if self.status[owner] is not TenantStatus.ACTIVE:
            errors.add(TenantSuspendedError)
        if self.gt.executions[target]["status"] in TERMINAL_STATUSES:
            errors.add(InvalidTransitionError)
        if dup_owner is not None:
            errors.add(ConflictError)
        got = self.call(actor, "enqueue_work_item", *args(target)[0])
        self.expect(got, errors or {OK}, f"{actor}.enqueue_work_item on {owner}'s execution")
        if got.ok:
            assert got.value == item_id
            self.allow(owner)
            self.items[owner].append(item_id)
            tenant_id = self.tenant[owner]

            def check(truth: Truth) -> None:
                stored = truth.items[item_id]
                assert (stored["tenant_id"], stored["status"]) == (tenant_id, "pending"), (
                    f"work item enqueued by {actor} with {kw} stored as "
                    f"{stored['tenant_id']!r}/{stored['status']}; execution's tenant is "
                    f"{tenant_id!r}"
                )

            self.post.append(check)

    @rule(
        actor=ACTOR,
        worker=st.sampled_from(["w1", "w2"]),
        queues=st.sampled_from([(0,), (1,), (0, 1)]),
        limit=st.integers(1, 3),
        single=st.booleans(),
    )
    def claim(
        self, actor: str, worker: str, queues: tuple[int, ...], limit: int, single: bool
    ) -> None:
        """Exactly the best eligible items of the scope are claimed: another tenant's
        items are neither handed out nor allowed to take the scope's places."""
        self.begin()
        types = [self.queue_types[q] for q in queues]
        scope = {self.tenant[r] for r in (["A", "B"] if actor == "U" else [actor])}
        now = self.clock.now
        eligible = sorted(
            (
                row
                for row in self.gt.items.values()
                if row["tenant_id"] in scope
                and row["status"] == "pending"
                and row["queue_type"] in types
                and row["available_at"] <= now
                # A suspended tenant's items wait until it is active again.
                and self.status[self.role_of[row["tenant_id"]]] is TenantStatus.ACTIVE
            ),
            key=lambda row: (-row["priority"], row["created_at"]),
        )
        if single:
            got = self.call(actor, "claim_work_item", worker, types)
            assert got.ok, got
            claimed = [] if got.value is None else [got.value]
            expected = eligible[:1]
        else:
            got = self.call(actor, "claim_work_items", worker, types, limit)
            assert got.ok, got
            claimed = got.value
            expected = eligible[:limit]
        event(f"{actor}.claim -> {len(claimed)} of {len(eligible)} eligible")
        assert [i.id for i in claimed] == [r["id"] for r in expected], (
            f"{actor} claimed {[(i.id, i.tenant_id) for i in claimed]}, expected "
            f"{[(r['id'], r['tenant_id']) for r in expected]}"
        )
        for item, row in zip(claimed, expected, strict=True):
            assert item.tenant_id == row["tenant_id"]
            assert (item.status, item.worker_id) == (WorkItemStatus.CLAIMED, worker)
            assert (item.attempt, item.lease_fence) == (row["attempt"] + 1, row["lease_fence"] + 1)
            assert item.lease_expires_at == now + LEASE
            self.allow(self.role_of[row["tenant_id"]])

    def _holder_args(self, target: uuid.UUID, worker: str, fence: str) -> dict[str, Any]:
        row = self.gt.items.get(target)
        holder = None if row is None else row["worker_id"]
        current = 1 if row is None else row["lease_fence"]
        kwargs: dict[str, Any] = {}
        if worker == "holder":
            kwargs["worker_id"] = holder or "w1"
        elif worker == "other":
            kwargs["worker_id"] = "w-stranger"
        if fence == "right":
            kwargs["lease_fence"] = current
        elif fence == "wrong":
            kwargs["lease_fence"] = current + 7
        return kwargs

    def _matches(self, row: Row, kwargs: dict[str, Any]) -> bool:
        worker = kwargs.get("worker_id")
        fence = kwargs.get("lease_fence")
        return (worker is None or worker == row["worker_id"]) and (
            fence is None or fence == row["lease_fence"]
        )

    @rule(
        actor=ACTOR,
        whose=WHOSE,
        pick=PICK,
        worker=st.sampled_from(["holder", "other"]),
        fence=FENCE,
    )
    def renew_lease(self, actor: str, whose: str, pick: int, worker: str, fence: str) -> None:
        self.begin()
        target, owner = self.pick(self.items, whose, pick)
        kwargs = self._holder_args(target, worker, fence)
        worker_id = kwargs.pop("worker_id")
        lost = (NotFoundError, LeaseLostError)
        if self.hidden(actor, owner, "renew_lease", target, on(worker_id, **kwargs), lost):
            return
        row = self.gt.items[target]
        now = self.clock.now
        valid = (
            row["status"] == "claimed"
            and row["worker_id"] == worker_id
            and row["lease_expires_at"] is not None
            and row["lease_expires_at"] > now
            and self._matches(row, kwargs)
        )
        got = self.call(actor, "renew_lease", target, worker_id, **kwargs)
        self.expect(got, {OK} if valid else {LeaseLostError}, f"{actor}.renew_lease")
        if got.ok:
            assert got.value == now + LEASE
            self.allow(owner)

    @rule(actor=ACTOR, whose=WHOSE, pick=PICK, worker=WORKER, fence=FENCE)
    def complete_work_item(
        self, actor: str, whose: str, pick: int, worker: str, fence: str
    ) -> None:
        self.begin()
        target, owner = self.pick(self.items, whose, pick)
        kwargs = self._holder_args(target, worker, fence)
        if self.hidden(actor, owner, "complete_work_item", target, on(**kwargs)):
            return
        row = self.gt.items[target]
        match = self._matches(row, kwargs)
        if row["status"] == "completed":
            # A repeat is a no-op; a repeat by someone else may be refused.
            acceptable: set[Any] = {OK} if match else {OK, LeaseLostError}
        elif row["status"] == "claimed" and match:
            acceptable = {OK}
        else:
            acceptable = {LeaseLostError}
        got = self.call(actor, "complete_work_item", target, **kwargs)
        self.expect(got, acceptable, f"{actor}.complete_work_item ({row['status']})")
        if got.ok:
            self.allow(owner)
            self.post.append(
                lambda truth: self._assert_equal(truth.items[target]["status"], "completed")
            )

    @rule(
        actor=ACTOR,
        aims=st.lists(st.tuples(WHOSE, PICK), min_size=1, max_size=3),
        stale=st.booleans(),
    )
    def complete_work_items(self, actor: str, aims: list[tuple[str, int]], stale: bool) -> None:
        self.begin()
        models: list[WorkItem] = []
        expected: list[bool] = []
        owners: list[str | None] = []
        for whose, pick in aims:
            target, owner = self.pick(self.items, whose, pick)
            if any(m.id == target for m in models):
                continue
            row = self.gt.items.get(target)
            if row is None:
                model = WorkItem(
                    id=target,
                    execution_id=uuid.uuid4(),
                    node_id="node",
                    queue_type=self.queue_types[0],
                    worker_id="w1",
                    lease_fence=1,
                )
            else:
                model = WorkItem(
                    id=target,
                    execution_id=row["execution_id"],
                    node_id=row["node_id"],
                    queue_type=row["queue_type"],
                    worker_id=row["worker_id"],
                    lease_fence=row["lease_fence"] + (1 if stale else 0),
                )
            models.append(model)
            owners.append(owner)
            expected.append(
                self.visible(actor, owner)
                and row is not None
                and row["status"] in ("claimed", "completed")
                and not stale
            )
        got = self.call(actor, "complete_work_items", models)
        assert got.ok, got
        event(f"{actor}.complete_work_items -> {sum(got.value)} of {len(models)}")
        aimed = [(m.id, o) for m, o in zip(models, owners, strict=True)]
        assert got.value == expected, (
            f"{actor}.complete_work_items on {aimed}: {got.value} != {expected}"
        )
        for owner, done in zip(owners, expected, strict=True):
            if done and owner is not None:
                self.allow(owner)

    @rule(
        actor=ACTOR,
        whose=WHOSE,
        pick=PICK,
        retry=st.sampled_from([None, 0, 10]),
        worker=WORKER,
        fence=FENCE,
    )
    def fail_work_item(
        self, actor: str, whose: str, pick: int, retry: int | None, worker: str, fence: str
    ) -> None:
        self.begin()
        target, owner = self.pick(self.items, whose, pick)
        kwargs = self._holder_args(target, worker, fence)
        if retry is not None:
            kwargs["retry_in"] = timedelta(seconds=retry)
        if self.hidden(actor, owner, "fail_work_item", target, on("boom", **kwargs)):
            return
        row = self.gt.items[target]
        got = self.call(actor, "fail_work_item", target, "boom", **kwargs)
        if row["status"] != "claimed" or not self._matches(row, kwargs):
            self.expect(got, {LeaseLostError}, f"{actor}.fail_work_item ({row['status']})")
            return
        self.expect(got, {OK}, f"{actor}.fail_work_item")
        if retry is None:
            status = WorkItemStatus.FAILED
        elif row["attempt"] < row["max_attempts"]:
            status = WorkItemStatus.PENDING
        else:
            status = WorkItemStatus.DEAD_LETTERED
        assert got.value == status
        self.allow(owner)

    @rule(actor=ACTOR, whose=WHOSE, pick=PICK)
    def move_to_dead_letter(self, actor: str, whose: str, pick: int) -> None:
        self.begin()
        target, owner = self.pick(self.items, whose, pick)
        if self.hidden(actor, owner, "move_to_dead_letter", target, on("dead")):
            return
        completed = self.gt.items[target]["status"] == "completed"
        got = self.call(actor, "move_to_dead_letter", target, "dead")
        self.expect(got, {InvalidTransitionError} if completed else {OK}, "move_to_dead_letter")
        if got.ok:
            self.allow(owner)

    @rule(actor=ACTOR, whose=WHOSE, pick=PICK)
    def requeue_dead_letter(self, actor: str, whose: str, pick: int) -> None:
        self.begin()
        target, owner = self.pick(self.items, whose, pick)
        if self.hidden(actor, owner, "requeue_dead_letter", target, on()):
            return
        row = self.gt.items[target]
        execution_status = self.gt.executions[row["execution_id"]]["status"]
        valid = row["status"] == "dead_lettered" and execution_status not in TERMINAL_STATUSES
        got = self.call(actor, "requeue_dead_letter", target)
        self.expect(got, {OK} if valid else {InvalidTransitionError}, "requeue_dead_letter")
        if got.ok:
            self.allow(owner)

    @rule(actor=ACTOR)
    def reclaim_expired_leases(self, actor: str) -> None:
        self.begin()
        scope = {self.tenant[r] for r in (["A", "B"] if actor == "U" else [actor])}
        now = self.clock.now
        expired = [
            row
            for row in self.gt.items.values()
            if row["tenant_id"] in scope
            and row["status"] == "claimed"
            and row["lease_expires_at"] <= now
        ]
        got = self.call(actor, "reclaim_expired_leases")
        assert got.ok, got
        result = got.value
        if actor != "U":
            leaked = [
                (i.id, i.tenant_id)
                for i in result.retryable + result.exhausted
                if i.tenant_id not in scope
            ]
            assert not leaked, f"{actor}.reclaim_expired_leases reclaimed {leaked}"
        # The unscoped store also reclaims earlier examples' items; keep this example's.
        retryable = {i.id for i in result.retryable if i.id in self.gt.items}
        exhausted = {i.id for i in result.exhausted if i.id in self.gt.items}
        assert retryable == {r["id"] for r in expired if r["attempt"] < r["max_attempts"]}
        assert exhausted == {r["id"] for r in expired if r["attempt"] >= r["max_attempts"]}
        self.allow(*{self.role_of[r["tenant_id"]] for r in expired})

    @rule(actor=ACTOR, whose=WHOSE, pick=PICK)
    def read_work_item(self, actor: str, whose: str, pick: int) -> None:
        self.begin()
        target, owner = self.pick(self.items, whose, pick)
        got = self.call(actor, "get_work_item", target)
        assert got.ok, got
        if not self.visible(actor, owner):
            assert got.value is None, f"{actor} reads {whose}'s work item: {got.value!r}"
            return
        row = self.gt.items[target]
        item = got.value
        assert item is not None
        assert (item.tenant_id, item.status.value, item.worker_id, item.lease_fence) == (
            row["tenant_id"],
            row["status"],
            row["worker_id"],
            row["lease_fence"],
        )

    # ------------------------------------------------------------ tokens

    @rule(
        actor=ACTOR,
        role=st.sampled_from(list(TokenRole)),
        expires=st.sampled_from([None, 20]),
    )
    def create_token(self, actor: str, role: TokenRole, expires: int | None) -> None:
        self.begin()
        owner = "D" if actor == "U" else actor  # the unscoped store creates default's
        expires_in = None if expires is None else timedelta(seconds=expires)
        got = self.call(actor, "create_token", f"tok{self.counter}", role, expires_in=expires_in)
        suspended = owner != "D" and self.status[owner] is not TenantStatus.ACTIVE
        self.expect(got, {TenantSuspendedError} if suspended else {OK}, f"{actor}.create_token")
        if got.ok:
            plaintext, token = got.value
            assert token.tenant_id == self.tenant[owner]
            self.tokens[owner].append(token.id)
            self.secrets[token.id] = plaintext
            self.allow(owner)

    @rule(
        actor=ACTOR,
        whose=st.sampled_from(["A", "B", "D", "missing"]),
        pick=PICK,
        variant=st.sampled_from(["real", "real", "wrong_secret", "garbage"]),
    )
    def validate_token(self, actor: str, whose: str, pick: int, variant: str) -> None:
        self.begin()
        token_id, owner = self.pick(self.tokens, whose, pick)
        if variant == "garbage" or owner is None:
            token = f"sst_{token_id.hex}_{'x' * 43}" if variant != "garbage" else "sst_nope"
        elif variant == "wrong_secret":
            token = f"sst_{token_id.hex}_{'A' * 43}"
        else:
            token = self.secrets[token_id]
        got = self.call(actor, "validate_token", token)
        assert got.ok, got
        event(f"{actor}.validate_token of {owner}'s ({variant}) -> {got.value is not None}")
        valid = False
        if variant == "real" and owner is not None and (actor == "U" or actor == owner):
            row = self.gt.tokens[token_id]
            active = owner == "D" or self.status[owner] is TenantStatus.ACTIVE
            valid = (
                row["revoked_at"] is None
                and (row["expires_at"] is None or row["expires_at"] > self.clock.now)
                and active
            )
        if not valid:
            assert got.value is None, f"{actor}.validate_token({whose}'s) -> {got.value!r}"
            return
        assert owner is not None
        assert got.value is not None
        assert (got.value.id, got.value.tenant_id) == (token_id, self.tenant[owner])
        self.allow(owner)  # last_used_at

    @rule(actor=ACTOR, whose=st.sampled_from(["A", "B", "D", "missing"]), pick=PICK)
    def revoke_token(self, actor: str, whose: str, pick: int) -> None:
        self.begin()
        token_id, owner = self.pick(self.tokens, whose, pick)
        if self.hidden(actor, owner, "revoke_token", token_id, on()):
            return
        got = self.call(actor, "revoke_token", token_id)
        self.expect(got, {OK}, f"{actor}.revoke_token")
        self.allow(owner)

    # ------------------------------------------------------------ tenants and time

    @rule(role=ROLE, status=st.sampled_from([TenantStatus.ACTIVE, TenantStatus.SUSPENDED]))
    def set_tenant_status(self, role: str, status: TenantStatus) -> None:
        self.begin()
        tenant = Tenant(
            id=self.tenant[role], name=f"Tenant {role}", status=status, limits=self.limits[role]
        )
        got = self.call("U", "update_tenant", tenant)
        assert got.ok, got
        self.status[role] = status
        self.allow(role)

    @rule(actor=ROLE, whose=st.sampled_from(["own", "other", "missing"]))
    def scoped_tenant_admin(self, actor: str, whose: str) -> None:
        """Tenant management is the operator's: a scoped store reads only its own tenant;
        another tenant is refused exactly like one that does not exist."""
        self.begin()
        target = {
            "own": self.tenant[actor],
            "other": self.tenant[other(actor)],
            "missing": f"x-{uuid.uuid4().hex[:8]}",
        }[whose]
        got = self.call(actor, "get_tenant", target)
        if whose == "own":
            assert got.ok and got.value is not None and got.value.id == target, got
            assert got.value.status is self.status[actor]
        else:
            ghost = f"y-{uuid.uuid4().hex[:8]}"
            baseline = self.call(actor, "get_tenant", ghost)
            assert_like_missing(f"{actor}.get_tenant", got, target, baseline, ghost)
            self.expect(got, {TenantError}, f"{actor}.get_tenant of another tenant")
        self.expect(self.call(actor, "list_tenants"), {TenantError}, f"{actor}.list_tenants")
        renamed = Tenant(id=target, name="hijacked", status=TenantStatus.SUSPENDED)
        got = self.call(actor, "update_tenant", renamed)
        self.expect(got, {TenantError}, f"{actor}.update_tenant of {whose}")
        got = self.call(actor, "create_tenant", Tenant(id=f"z-{uuid.uuid4().hex[:8]}", name="z"))
        self.expect(got, {TenantError}, f"{actor}.create_tenant")

    @rule(seconds=st.sampled_from([1, 10, 31, 70]))
    def advance_clock(self, seconds: int) -> None:
        self.begin()
        self.clock.advance(seconds=seconds)

    # ------------------------------------------------------------ Part 2: turns and keys

    def _turn_target(self, actor: str, whose: str, pick: int, worker: str, fence: str) -> Any:
        """A work item to act on as its holder (or not): (id, owner, worker_id, fence,
        whether the call is the holder's with the current fence on a claimed item)."""
        target, owner = self.pick(self.items, whose, pick)
        kwargs = self._holder_args(target, worker, fence if fence != "none" else "right")
        row = self.gt.items.get(target)
        valid = row is not None and row["status"] == "claimed" and self._matches(row, kwargs)
        return target, owner, kwargs["worker_id"], kwargs["lease_fence"], valid

    @rule(
        actor=ACTOR,
        whose=WHOSE,
        pick=PICK,
        worker=st.sampled_from(["holder", "holder", "other"]),
        fence=FENCE,
        effect=st.integers(0, 1),
        successor=st.booleans(),
    )
    def commit_turn(
        self,
        actor: str,
        whose: str,
        pick: int,
        worker: str,
        fence: str,
        effect: int,
        successor: bool,
    ) -> None:
        """A turn on another tenant's item looks missing and writes nothing; on a visible
        one its events, successor and effect are the item's tenant's."""
        self.begin()
        target, owner, worker_id, lease_fence, valid = self._turn_target(
            actor, whose, pick, worker, fence
        )
        row = self.gt.items.get(target)
        execution_id = uuid.uuid4() if row is None else row["execution_id"]
        successor_id = uuid.uuid4()
        key = self.effect_keys[effect]

        def args(i: uuid.UUID) -> tuple[tuple[Any, ...], dict[str, Any]]:
            enqueue = [
                WorkItem(
                    id=successor_id,
                    execution_id=execution_id,
                    node_id="next",
                    queue_type=self.queue_types[0],
                )
            ]
            return (i,), {
                "worker_id": worker_id,
                "lease_fence": lease_fence,
                "events": [{"type": "turn", "n": self.counter}],
                "state_patch": {"turn": self.counter},
                "enqueue": enqueue if successor else [],
                "effect_key": key,
                "effect": {"n": self.counter},
            }

        lost = (NotFoundError, LeaseLostError)
        if self.hidden(actor, owner, "commit_turn", target, args, lost):
            return
        assert row is not None
        acceptable: set[Any] = {OK} if valid else {LeaseLostError}
        if valid and successor and self.status[owner] is not TenantStatus.ACTIVE:
            acceptable = {TenantSuspendedError}
        got = self.call(actor, "commit_turn", *args(target)[0], **args(target)[1])
        self.expect(got, acceptable, f"{actor}.commit_turn ({row['status']})")
        if not got.ok:
            return
        self.allow(owner)
        tenant_id = self.tenant[owner]
        existing = self.gt.effects.get((tenant_id, key))
        if successor:
            self.items[owner].append(successor_id)

        def check(truth: Truth) -> None:
            assert truth.items[target]["status"] == "completed"
            recorded = truth.effects[(tenant_id, key)]  # first writer wins, per tenant
            assert recorded["value"] == (existing or {"value": {"n": self.counter}})["value"]
            assert truth.executions[recorded["execution_id"]]["tenant_id"] == tenant_id

        self.post.append(check)

    @rule(actor=ACTOR, key=st.integers(0, 1))
    def get_effect(self, actor: str, key: int) -> None:
        """A view reads its own tenant's effect under a key, never another's."""
        self.begin()
        tenant_id = self.tenant[actor] if actor != "U" else "default"
        row = self.gt.effects.get((tenant_id, self.effect_keys[key]))
        got = self.call(actor, "get_effect", self.effect_keys[key])
        assert got.ok, got
        assert got.value == (None if row is None else row["value"]), (
            f"{actor}.get_effect -> {got.value!r}, its tenant's row is {row!r}"
        )

    @rule(
        actor=ACTOR,
        role=ROLE,
        key=st.sampled_from([0, 1, None]),
        successor=st.booleans(),
        dup=st.sampled_from(["new", "new", "new", "A", "B"]),
        pick=PICK,
    )
    def start_execution(
        self, actor: str, role: str, key: int | None, successor: bool, dup: str, pick: int
    ) -> None:
        """An idempotency key finds only its own tenant's execution: the same key in the
        other tenant starts a new one."""
        self.begin()
        owner = role if actor == "U" else actor
        tenant_id = self.tenant[owner]
        idempotency_key = None if key is None else self.idempotency_keys[key]
        execution_id, dup_owner = self.pick(self.executions, dup, pick)
        execution = WorkflowExecution(
            execution_id=execution_id,
            workflow_id=self.workflow_ids[0],
            workflow_version="1",
            status=WorkflowStatus.RUNNING,
            **self.model_tenant(actor, owner, "own"),
        )
        item = WorkItem(execution_id=execution_id, node_id="first", queue_type=self.queue_types[1])
        started = [
            row
            for row in self.gt.executions.values()
            if row["tenant_id"] == tenant_id and row["idempotency_key"] == idempotency_key
        ]
        errors: set[Any] = set()
        if self.status[owner] is not TenantStatus.ACTIVE:
            errors.add(TenantSuspendedError)
        limit = self.limits[owner].max_concurrent_executions
        active = sum(
            1
            for row in self.gt.executions.values()
            if row["tenant_id"] == tenant_id and row["status"] in ACTIVE_STATUSES
        )
        if limit is not None and active >= limit:
            errors.add(TenantLimitExceededError)
        if dup_owner is not None:
            errors.add(ConflictError)
        acceptable = ({OK} | errors) if idempotency_key is not None and started else errors
        got = self.call(
            actor,
            "start_execution",
            execution,
            events=[{"type": "started"}],
            enqueue=[item] if successor else [],
            idempotency_key=idempotency_key,
        )
        self.expect(got, acceptable or {OK}, f"{actor}.start_execution for {owner}")
        if not got.ok:
            return
        found, created = got.value
        assert found.tenant_id == tenant_id, f"{actor}.start_execution -> {found!r}"
        if started and idempotency_key is not None:
            assert not created and found.execution_id == started[0]["id"], got
            return
        assert created, got
        self.allow(owner)
        self.executions[owner].append(execution_id)
        if successor:
            self.items[owner].append(item.id)

    @rule(
        actor=ACTOR,
        whose=WHOSE,
        pick=PICK,
        worker=st.sampled_from(["holder", "holder", "other"]),
        fence=FENCE,
        later=st.booleans(),
    )
    def park_work_item(
        self, actor: str, whose: str, pick: int, worker: str, fence: str, later: bool
    ) -> None:
        self.begin()
        target, owner, worker_id, lease_fence, valid = self._turn_target(
            actor, whose, pick, worker, fence
        )
        kwargs: dict[str, Any] = {"worker_id": worker_id, "lease_fence": lease_fence}
        if later:
            kwargs["retry_in"] = timedelta(seconds=5)
        lost = (NotFoundError, LeaseLostError)
        if self.hidden(actor, owner, "park_work_item", target, on(**kwargs), lost):
            return
        got = self.call(actor, "park_work_item", target, **kwargs)
        self.expect(got, {OK} if valid else {LeaseLostError}, f"{actor}.park_work_item")
        if got.ok:
            self.allow(owner)
            self.post.append(
                lambda truth: self._assert_equal(truth.items[target]["status"], "pending")
            )

    def beat(self, actor: str, item_id: uuid.UUID, worker_id: str, fence: int, hold: float) -> Any:
        """``heartbeat`` on ``item_id`` renewing every 5 ms while its block runs ``hold``
        seconds (cut short by a lost lease)."""
        item = WorkItem(
            id=item_id,
            execution_id=uuid.uuid4(),
            node_id="n",
            queue_type=self.queue_types[0],
            lease_fence=fence,
        )

        async def beating() -> None:
            every = timedelta(milliseconds=5)
            async with self.stores[actor].heartbeat(item, worker_id=worker_id, every=every):
                await asyncio.sleep(hold)

        return self.run(attempt(beating()))

    @rule(
        actor=ACTOR,
        whose=WHOSE,
        pick=PICK,
        worker=st.sampled_from(["holder", "holder", "other"]),
        fence=FENCE,
    )
    def heartbeat(self, actor: str, whose: str, pick: int, worker: str, fence: str) -> None:
        """Renewals of another tenant's lease fail as for a missing item (the block is
        cut short with the same error) and renew nothing."""
        self.begin()
        target, owner, worker_id, lease_fence, valid = self._turn_target(
            actor, whose, pick, worker, fence
        )
        if not self.visible(actor, owner):
            # A renewal that finds no item is logged and retried (the block runs on): the
            # same for another tenant's item, which must renew nothing.
            got = self.beat(actor, target, worker_id, lease_fence, hold=0.02)
            ghost = uuid.uuid4()
            baseline = self.beat(actor, ghost, worker_id, lease_fence, hold=0.02)
            assert_like_missing(f"{actor}.heartbeat", got, target, baseline, ghost)
            self.expect(got, {OK, NotFoundError, LeaseLostError}, f"{actor}.heartbeat, hidden")
            return
        row = self.gt.items[target]
        valid = valid and row["lease_expires_at"] > self.clock.now
        got = self.beat(actor, target, worker_id, lease_fence, hold=0.012 if valid else 0.5)
        self.expect(got, {OK} if valid else {LeaseLostError}, f"{actor}.heartbeat")
        if got.ok:
            self.allow(owner)

    @rule(actor=ACTOR, whose=WHOSE, pick=PICK)
    def materialize(self, actor: str, whose: str, pick: int) -> None:
        self.begin()
        target, owner = self.pick(self.executions, whose, pick)
        if self.hidden(actor, owner, "materialize", target, on()):
            return
        got = self.call(actor, "materialize", target)
        assert got.ok, got
        assert got.value.last_sequence == self.gt.executions[target]["last_sequence"]

    @rule(
        actor=ACTOR,
        whose=WHOSE,
        pick=PICK,
        worker=st.sampled_from(["holder", "holder", "other"]),
        fence=FENCE,
    )
    def continue_as_new(self, actor: str, whose: str, pick: int, worker: str, fence: str) -> None:
        """The next segment of another tenant's execution cannot be started through its
        item; a visible one's next segment is its tenant's."""
        self.begin()
        target, owner, worker_id, lease_fence, valid = self._turn_target(
            actor, whose, pick, worker, fence
        )
        kwargs = {"worker_id": worker_id, "lease_fence": lease_fence, "state": {"n": 1}}
        lost = (NotFoundError, LeaseLostError)
        if self.hidden(actor, owner, "continue_as_new", target, on(**kwargs), lost):
            return
        row = self.gt.items[target]
        execution = self.gt.executions[row["execution_id"]]
        acceptable: set[Any] = {LeaseLostError}
        # A retry after the segment was started returns it (whoever asks, on a visible item).
        segments = [
            r["id"]
            for r in self.gt.executions.values()
            if r["parent_execution_id"] == row["execution_id"]
        ]
        if segments and row["status"] == "completed":
            acceptable.add(OK)
        if valid:
            # A segment completes its execution: refused like that transition would be.
            acceptable = {OK, InvalidTransitionError, TenantSuspendedError}
            acceptable |= {TenantLimitExceededError} if self.limits[owner] else set()
        got = self.call(actor, "continue_as_new", target, **kwargs)
        self.expect(got, acceptable, f"{actor}.continue_as_new ({execution['status']})")
        if not got.ok:
            return
        self.allow(owner)
        new = got.value
        assert new.tenant_id == self.tenant[owner], f"{actor}.continue_as_new -> {new!r}"
        assert not segments or new.execution_id == segments[0], (new, segments)
        if new.execution_id not in self.executions[owner]:
            self.executions[owner].append(new.execution_id)

    @rule(actor=ACTOR, whose=WHOSE, pick=PICK)
    def segment_chain(self, actor: str, whose: str, pick: int) -> None:
        self.begin()
        target, owner = self.pick(self.executions, whose, pick)
        if self.hidden(actor, owner, "segment_chain", target, on(), allowed={OK}):
            return
        got = self.call(actor, "segment_chain", target)
        assert got.ok, got
        chain = got.value
        assert chain and chain[-1].execution_id == target, chain
        assert {e.tenant_id for e in chain} == {self.tenant[owner]}, chain

    # ------------------------------------------------------------ Part 2: feed, artifacts

    @rule(actor=ACTOR, streamed=st.booleans(), batch=st.sampled_from([1, 3, 100]))
    def read_feed(self, actor: str, streamed: bool, batch: int) -> None:
        """A scoped feed holds exactly its tenant's events, in position order; the unscoped
        one holds both tenants' (from this example's first position on)."""
        self.begin()
        roles = ["A", "B"] if actor == "U" else [actor]
        tenants = {self.tenant[r] for r in roles}
        mine = sorted(
            (r for r in self.gt.events.values() if r["position"] is not None),
            key=itemgetter("position"),
        )
        # The unscoped feed reads from this example's first event on (earlier examples' come
        # before it: examples run one after the other).
        after = mine[0]["position"] - 1 if actor == "U" and mine else 0
        if streamed:

            async def stream() -> list[Event]:
                return [e async for e in self.stores[actor].iter_feed(after, batch=batch)]

            got = self.run(attempt(stream()))
        else:
            got = self.call(actor, "read_feed", after, limit=10_000)
        assert got.ok, got
        events = got.value
        if actor != "U":
            assert {e.tenant_id for e in events} <= tenants, f"{actor}'s feed leaks {events}"
        ids = [e.id for e in events if e.tenant_id in tenants]
        assert ids == [r["id"] for r in mine if r["tenant_id"] in tenants], (
            f"{actor}'s feed: {len(ids)} events, expected its tenant's"
        )

    @rule(actor=ACTOR, consumer=st.integers(0, 1), position=st.integers(0, 50))
    def checkpoint(self, actor: str, consumer: int, position: int) -> None:
        """A consumer name is per tenant: saving A's position moves neither B's nor the
        default tenant's under the same name."""
        self.begin()
        name = self.consumers[consumer]
        owner = "D" if actor == "U" else actor
        got = self.call(actor, "save_checkpoint", name, position)
        assert got.ok, got
        self.allow(owner)
        self.checkpoints[(owner, name)] = position
        for reader in ("A", "B", "U"):
            got = self.call(reader, "get_checkpoint", name)
            assert got.ok, got
            expected = self.checkpoints.get(("D" if reader == "U" else reader, name), 0)
            assert got.value == expected, f"{reader}.get_checkpoint({name!r}) -> {got.value}"

    @rule(actor=ACTOR, blob=st.integers(0, 1), put=st.booleans())
    def artifact(self, actor: str, blob: int, put: bool) -> None:
        """Artifacts are per tenant: the same bytes stored by B are not A's to read."""
        self.begin()
        data = self.blobs[blob]
        digest = hashlib.sha256(data).hexdigest()
        owner = "D" if actor == "U" else actor
        if put:
            got = self.call(actor, "put_artifact", data, "text/plain")
            assert got.ok and got.value.hash == digest, got
            if (owner, digest) not in self.artifacts:
                self.allow(owner)
                self.artifacts.add((owner, digest))
        for reader in ("A", "B", "U"):
            got = self.call(reader, "get_artifact", digest)
            assert got.ok, got
            held = ("D" if reader == "U" else reader, digest) in self.artifacts
            assert got.value == (data if held else None), f"{reader}.get_artifact -> {got!r}"

    @rule(actor=ACTOR, retention=st.sampled_from([None, 30]))
    def run_maintenance(self, actor: str, retention: int | None) -> None:
        """A tenant's maintenance reclaims and deletes only that tenant's items (one round:
        run until its expected changes show, then cancelled)."""
        self.begin()
        roles = ["A", "B"] if actor == "U" else [actor]
        scope = {self.tenant[r] for r in roles}
        now = self.clock.now
        expired = {
            i
            for i, row in self.gt.items.items()
            if row["tenant_id"] in scope
            and row["status"] == "claimed"
            and row["lease_expires_at"] <= now
        }
        settled = {
            i
            for i, row in self.gt.items.items()
            if retention is not None
            and row["tenant_id"] in scope
            and row["status"] in ("completed", "failed")
            and row["updated_at"] < now - timedelta(seconds=retention)
        }

        def round_done(truth: Truth) -> bool:
            return not settled & set(truth.items) and all(
                truth.items[i]["status"] != "claimed" for i in expired
            )

        async def one_round() -> None:
            kwargs = {} if retention is None else {"retention": timedelta(seconds=retention)}
            task = asyncio.create_task(self.stores[actor].run_maintenance(every=3600, **kwargs))
            try:
                tenants, tokens = [self.tenant["A"], self.tenant["B"]], self.tokens["D"]
                for waited in range(250):
                    await asyncio.sleep(0.02)
                    if not (expired or settled):
                        if waited >= 5:
                            break  # nothing to wait for: a round had the time to run
                    elif round_done(await self.env.read_truth(tenants, tokens)):
                        break
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        self.run(one_round())
        touched = {self.role_of[self.gt.items[i]["tenant_id"]] for i in expired | settled}
        self.allow(*touched, *(["D"] if actor == "U" else []))
        for role in roles:
            self.items[role] = [i for i in self.items[role] if i not in settled]
        self.post.append(lambda truth: self._assert_equal(round_done(truth), True))

    # ------------------------------------------------------------ the unscoped view

    @rule()
    def unscoped_lists(self) -> None:
        """The unscoped store sees both tenants (restricted to this example's objects)."""
        self.begin()
        truth = self.gt
        mine = {self.tenant["A"], self.tenant["B"]}
        for workflow_id in self.workflow_ids:
            got = self.call("U", "list_executions", limit=1000, workflow_id=workflow_id)
            assert got.ok, got
            rows = [r for r in truth.executions.values() if r["workflow_id"] == workflow_id]
            assert [e.execution_id for e in got.value] == execution_order(rows)
        got = self.call("U", "list_tokens")
        assert got.ok, got
        known = {*self.tokens["A"], *self.tokens["B"], *self.tokens["D"]}
        listed = [t.id for t in got.value if t.id in known or t.tenant_id in mine]
        assert listed == token_order(truth.tokens.values())
        got = self.call("U", "list_dead_letters", limit=1000)
        assert got.ok, got
        listed = [d.item.id for d in got.value if d.item.tenant_id in mine]
        assert listed == dead_letter_order(truth.items.values())
        got = self.call("U", "queue_stats")
        assert got.ok, got
        mine_stats = {q: s for q, s in got.value.items() if q in self.queue_types}
        assert mine_stats == queue_stats(truth.items.values())

    # ------------------------------------------------------------ after every step

    @invariant()
    def nothing_crosses(self) -> None:
        if self.truth is None:
            return
        new = self.fetch()
        old = self.truth
        for role in ("A", "B"):
            if role not in self.touched:
                before = old.of_tenant(self.tenant[role])
                after = new.of_tenant(self.tenant[role])
                changed = {k for k in before if before[k] != after[k]}
                assert not changed, (
                    f"tenant {role}'s {sorted(changed)} changed in a step that may not change "
                    f"them: {describe_change(before, after, changed)}"
                )
        if "D" not in self.touched:
            assert new.others == old.others, f"other tenants' rows: {old.others} -> {new.others}"
            default_tokens = {i: new.tokens.get(i) for i in self.tokens["D"]}
            assert default_tokens == {i: old.tokens.get(i) for i in self.tokens["D"]}
            assert new.tenants.get("default") == old.tenants.get("default")
        self.check_ownership(new)
        for check in self.post:
            check(new)
        # The lists depend only on the rows (not on time): re-check them whenever the rows
        # changed, which is every step that wrote anything.
        if new != old or not self.lists_checked:
            self.check_scoped_lists(new)
            self.lists_checked = True
        self.truth = new

    def check_ownership(self, truth: Truth) -> None:
        """Every row belongs to the tenant the model says; nothing is lost."""
        model_executions = {(i, self.tenant[r]) for r in ("A", "B") for i in self.executions[r]}
        assert {(i, r["tenant_id"]) for i, r in truth.executions.items()} == model_executions
        model_items = {(i, self.tenant[r]) for r in ("A", "B") for i in self.items[r]}
        assert {(i, r["tenant_id"]) for i, r in truth.items.items()} == model_items
        model_tokens = {(i, self.tenant[r]) for r in ("A", "B", "D") for i in self.tokens[r]}
        assert {(i, r["tenant_id"]) for i, r in truth.tokens.items()} == model_tokens
        assert set(truth.workflows) == self.workflows
        children = [*truth.events.values(), *truth.snapshots.values(), *truth.items.values()]
        for row in children:
            execution = truth.executions.get(row["execution_id"], {"tenant_id": None})
            assert row["tenant_id"] == execution["tenant_id"], (
                f"row {row['id']} of tenant {row['tenant_id']!r} belongs to execution "
                f"{row['execution_id']} of tenant {execution['tenant_id']!r}"
            )

    def check_scoped_lists(self, truth: Truth) -> None:
        """Each scoped list_* returns exactly its tenant's objects."""
        for role in ("A", "B"):
            tenant_id = self.tenant[role]

            def listed(method: str, *args: Any, _role: str = role, **kwargs: Any) -> Any:
                got = self.call(_role, method, *args, **kwargs)
                assert got.ok, f"{_role}.{method}: {got!r}"
                return got.value

            own = truth.of_tenant(tenant_id)
            workflows = listed("list_workflows")
            assert [(d.tenant_id, d.workflow_id, d.version) for d in workflows] == sorted(
                own["workflows"]
            ), f"{role}.list_workflows"
            executions = listed("list_executions", limit=1000)
            assert [e.execution_id for e in executions] == execution_order(
                own["executions"].values()
            ), f"{role}.list_executions"
            assert {e.tenant_id for e in executions} <= {tenant_id}
            tokens = listed("list_tokens")
            assert [t.id for t in tokens] == token_order(own["tokens"].values()), (
                f"{role}.list_tokens"
            )
            dead = listed("list_dead_letters", limit=1000)
            assert [d.item.id for d in dead] == dead_letter_order(own["items"].values()), (
                f"{role}.list_dead_letters"
            )
            assert listed("queue_stats") == queue_stats(own["items"].values()), (
                f"{role}.queue_stats"
            )


def execution_order(rows: Iterable[Row]) -> list[uuid.UUID]:
    ordered = sorted(rows, key=lambda r: r["id"])
    ordered.sort(key=lambda r: r["updated_at"], reverse=True)
    return [r["id"] for r in ordered]


def token_order(rows: Iterable[Row]) -> list[uuid.UUID]:
    return [r["id"] for r in sorted(rows, key=lambda r: (r["created_at"], r["id"]))]


def dead_letter_order(rows: Iterable[Row]) -> list[uuid.UUID]:
    dead = sorted((r for r in rows if r["status"] == "dead_lettered"), key=lambda r: r["id"])
    dead.sort(key=lambda r: r["dead_lettered_at"] or r["updated_at"], reverse=True)
    return [r["id"] for r in dead]


def queue_stats(rows: Iterable[Row]) -> dict[str, dict[WorkItemStatus, int]]:
    stats: dict[str, dict[WorkItemStatus, int]] = {}
    for row in rows:
        per_status = stats.setdefault(row["queue_type"], dict.fromkeys(WorkItemStatus, 0))
        per_status[WorkItemStatus(row["status"])] += 1
    return dict(sorted(stats.items()))


def describe_change(before: dict[str, Any], after: dict[str, Any], keys: set[str]) -> str:
    parts = []
    for key in sorted(keys):
        old, new = before[key], after[key]
        if isinstance(old, dict) and isinstance(new, dict) and key != "tenant":
            for k in sorted(set(old) | set(new), key=str):
                if old.get(k) != new.get(k):
                    parts.append(f"{key}[{k}]: {old.get(k)!r} -> {new.get(k)!r}")
        else:
            parts.append(f"{key}: {old!r} -> {new!r}")
    return "; ".join(parts[:5])


# ---------------------------------------------------------------- running the machine


@pytest.fixture
def sync_database_url(pg_url: str | None, sqlite_url: str | None) -> str:
    """A migrated database for the sync property tests (``database_url`` is async)."""
    if pg_url is None:
        assert sqlite_url is not None
        return sqlite_url
    asyncio.run(reset_pg(pg_url))
    return pg_url


def run_machine(url: str, examples: int, steps: int) -> None:
    """Run the state machine on one event loop that lives for the whole test (the asyncpg
    engine is bound to the loop it was created on)."""
    loop = asyncio.new_event_loop()
    # SQLite: read the ground truth on a plain sync connection (aiosqlite's thread hops
    # would double the run time); PostgreSQL: on the store's own engine.
    sync_engine = create_engine(url) if url.startswith("sqlite") else None
    try:
        clock = Clock(T0)
        store = loop.run_until_complete(StateStore.connect(url, clock=clock))

        async def read(tenant_ids: list[str], token_ids: list[uuid.UUID]) -> Truth:
            if sync_engine is None:
                return await read_truth(store.engine, tenant_ids, token_ids)
            with sync_engine.connect() as conn:
                return truth_from(conn, tenant_ids, token_ids)

        try:
            machine = type(
                "TenantIsolation",
                (TenantIsolationMachine,),
                {"env": Env(loop=loop, store=store, clock=clock, read_truth=read)},
            )
            run_state_machine_as_test(
                machine,
                settings=settings(
                    max_examples=examples,
                    stateful_step_count=steps,
                    deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                    print_blob=True,
                ),
            )
        finally:
            loop.run_until_complete(store.close())
    finally:
        loop.close()
        if sync_engine is not None:
            sync_engine.dispose()


@pytest.mark.timeout(900)  # a failure shrinks for up to 5 minutes before it is reported
def test_tenant_isolation_state_machine(sync_database_url: str) -> None:
    run_machine(sync_database_url, EXAMPLES, STEPS)


@pytest.mark.slow
@pytest.mark.timeout(6 * 3600)
def test_tenant_isolation_state_machine_volume(sync_database_url: str) -> None:
    run_machine(sync_database_url, max(SLOW_EXAMPLES, 1), SLOW_STEPS)


# ---------------------------------------------------------------- explicit tests


async def truth_of(store: StateStore, *tenant_ids: str) -> Truth:
    return await read_truth(store.engine, list(tenant_ids))


async def test_filter_fails_closed(store: StateStore) -> None:
    """A TenantSession that was given no scope runs nothing: ORM, Core, text, get, flush."""
    await store.create_tenant(Tenant(id="t", name="T"))
    existing = WorkflowExecution(workflow_id="wf", workflow_version="1", tenant_id="t")
    await store.create_execution(existing)
    before = await truth_of(store, "t", "default")
    statements: dict[str, Callable[[], Any]] = {
        "orm select": lambda: select(ExecutionRow),
        "orm select of columns": lambda: select(ExecutionRow.id, ExecutionRow.tenant_id),
        "core table select": lambda: select(ExecutionRow.__table__),
        "text": lambda: text("SELECT id FROM workflow_executions"),
        "orm update": lambda: update(ExecutionRow).values(status="failed"),
        "orm delete": lambda: delete(ExecutionRow),
        "core delete": lambda: delete(ExecutionRow.__table__),
        "orm insert": lambda: insert(TenantRow).values(
            id="sneaky", name="x", status="active", created_at=T0, updated_at=T0
        ),
        "non-tenant table select": lambda: select(TenantRow),
    }
    for info in ({}, {SCOPE_KEY: "t"}, {SCOPE_KEY: None}):
        for name, make in statements.items():
            async with AsyncSession(store.engine, sync_session_class=TenantSession) as session:
                session.info.update(info)
                with pytest.raises(TenantError):
                    await session.execute(make())
                    pytest.fail(f"{name} ran on a session without a scope ({info})")
        async with AsyncSession(store.engine, sync_session_class=TenantSession) as session:
            session.info.update(info)
            with pytest.raises(TenantError):
                await session.get(ExecutionRow, existing.execution_id)
            with pytest.raises(TenantError):
                await session.scalars(select(ExecutionRow))
        async with AsyncSession(store.engine, sync_session_class=TenantSession) as session:
            session.info.update(info)
            session.add(TenantRow(id="sneaky", name="x", status="active", created_at=T0))
            with pytest.raises(TenantError):
                await session.flush()
    # The sync API the runners use fails closed as well.
    async with AsyncSession(store.engine, sync_session_class=TenantSession) as session:
        with pytest.raises(TenantError):
            await session.run_sync(lambda s: s.execute(select(EventRow)).all())
    # Control: the same session with a scope runs, confined to it.
    async with AsyncSession(
        store.engine, sync_session_class=TenantSession, info={SCOPE_KEY: Scope("other")}
    ) as session:
        assert (await session.scalars(select(ExecutionRow))).all() == []
    async with AsyncSession(
        store.engine, sync_session_class=TenantSession, info={SCOPE_KEY: Scope("t")}
    ) as session:
        assert [r.id for r in (await session.scalars(select(ExecutionRow))).all()] == [
            existing.execution_id
        ]
    assert await truth_of(store, "t", "default") == before
    assert await store.get_tenant("sneaky") is None


async def _tenant_with_everything(
    store: StateStore, clock: Clock, tenant_id: str
) -> dict[str, Any]:
    """A tenant owning one of everything, work items in every status."""
    await store.create_tenant(Tenant(id=tenant_id, name=tenant_id))
    scoped = store.for_tenant(tenant_id)
    await scoped.store_workflow(WorkflowDefinition(workflow_id="wf", version="1", ir={"a": 1}))
    execution = WorkflowExecution(
        workflow_id="wf", workflow_version="1", current_state={"items": []}
    )
    await scoped.create_execution(execution)
    eid = execution.execution_id
    await scoped.append_event(Event(execution_id=eid, kind=WorkflowFailed(error="e")))
    await scoped.write_snapshot(Snapshot(execution_id=eid, at_sequence=1, state={"s": 1}))
    items: dict[str, WorkItem] = {}
    queue, worker = f"q-{tenant_id}", f"w-{tenant_id}"
    for name in ("completed", "failed", "dead", "expired", "claimed", "pending"):
        if name == "claimed":
            clock.advance(minutes=5)  # "expired" is now past its lease, "claimed" is not
        item = WorkItem(execution_id=eid, node_id=name, queue_type=queue)
        await scoped.enqueue_work_item(item)
        if name != "pending":
            claimed = await scoped.claim_work_item(worker, [queue])
            assert claimed is not None and claimed.id == item.id
            item = claimed
        clock.advance(seconds=1)
        items[name] = item
    await scoped.complete_work_item(items["completed"].id, worker_id=worker)
    await scoped.fail_work_item(items["failed"].id, "boom", worker_id=worker)
    await scoped.move_to_dead_letter(items["dead"].id, "dead")
    plaintext, token = await scoped.create_token("tok", TokenRole.OPERATOR)
    return {
        "execution": execution,
        "items": items,
        "token": token,
        "plaintext": plaintext,
        "queue": queue,
        "worker": worker,
    }


async def test_every_method_on_foreign_ids_is_missing(make_store: StoreFactory) -> None:
    """Tenant A's store, given tenant B's ids, behaves exactly as if they did not exist
    (same error and message, or the same empty result) and changes nothing of B."""
    clock = Clock(T0)
    store = await make_store(clock=clock)
    await store.create_tenant(Tenant(id="ta", name="A"))
    b = await _tenant_with_everything(store, clock, "tb")
    a = store.for_tenant("ta")
    eid: uuid.UUID = b["execution"].execution_id
    items: dict[str, WorkItem] = b["items"]
    claimed = items["claimed"]
    worker = b["worker"]
    before = (await truth_of(store, "tb")).of_tenant("tb")

    failed = WorkflowFailed(error="x")
    lost = (NotFoundError, LeaseLostError)
    cases: list[tuple[str, uuid.UUID, ArgsOf, Any]] = [
        ("get_execution", eid, on(), None),
        ("get_events", eid, on(), []),
        ("get_events_since", eid, on(0, limit=5), []),
        ("latest_sequence", eid, on(), 0),
        ("latest_snapshot", eid, on(), None),
        ("list_work_items", eid, on(), []),
        ("update_execution_status", eid, on("cancelled"), NotFoundError),
        ("update_execution_status", eid, on("cancelled", expected="pending"), NotFoundError),
        ("update_execution_current_state", eid, on({"x": 1}), NotFoundError),
        ("patch_append_array", eid, on("items", 1), NotFoundError),
        ("append_event", eid, model(lambda i: Event(execution_id=i, kind=failed)), NotFoundError),
        (
            "append_event",
            eid,
            model(lambda i: Event(execution_id=i, kind=failed), expected_sequence=1),
            NotFoundError,
        ),
        ("append_events", eid, on([failed]), NotFoundError),
        ("append_events", eid, on([]), NotFoundError),
        (
            "write_snapshot",
            eid,
            model(lambda i: Snapshot(execution_id=i, at_sequence=1, state={"x": 1})),
            NotFoundError,
        ),
        (
            "enqueue_work_item",
            eid,
            model(lambda i: WorkItem(execution_id=i, node_id="n", queue_type=b["queue"])),
            NotFoundError,
        ),
        ("revoke_token", b["token"].id, on(), NotFoundError),
    ]
    for item in items.values():
        fence = item.lease_fence
        cases += [
            ("get_work_item", item.id, on(), None),
            ("move_to_dead_letter", item.id, on("x"), NotFoundError),
            ("requeue_dead_letter", item.id, on(), NotFoundError),
            ("complete_work_item", item.id, on(), NotFoundError),
            ("complete_work_item", item.id, on(worker_id=worker, lease_fence=fence), NotFoundError),
            ("fail_work_item", item.id, on("x"), NotFoundError),
            (
                "fail_work_item",
                item.id,
                on("x", retry_in=timedelta(0), worker_id=worker),
                NotFoundError,
            ),
            ("renew_lease", item.id, on(worker), lost),
            ("renew_lease", item.id, on(worker, lease_fence=fence), lost),
        ]
    for method, foreign, args_of, expected in cases:
        args, kw = args_of(foreign)
        got = await attempt(getattr(a, method)(*args, **kw))
        ghost = uuid.uuid4()
        args, kw = args_of(ghost)
        baseline = await attempt(getattr(a, method)(*args, **kw))
        assert_like_missing(method, got, foreign, baseline, ghost)
        if isinstance(expected, type | tuple):
            assert got.error is not None and isinstance(got.error, expected), (method, got)
        else:
            assert got.ok and got.value == expected, (method, got)
    # Batch completion of B's claimed item: False, as for a missing one.
    assert await a.complete_work_items([claimed]) == [False]
    assert await a.complete_work_items([claimed.model_copy(update={"id": uuid.uuid4()})]) == [False]
    # Lists, claims, reclaim and tokens see nothing of B.
    assert await a.get_workflow("wf", "1") is None
    assert await a.list_workflows() == [] and await a.list_workflows("wf") == []
    assert await a.list_executions() == []
    assert await a.list_executions(workflow_id="wf") == []
    assert await a.list_dead_letters() == []
    assert await a.queue_stats() == {}
    assert await a.claim_work_item("wa", [b["queue"]]) is None
    assert await a.claim_work_items("wa", [b["queue"]], 10) == []
    reclaimed = await a.reclaim_expired_leases()
    assert reclaimed.retryable == [] and reclaimed.exhausted == []
    assert await a.list_tokens() == []
    assert await a.validate_token(b["plaintext"]) is None
    with pytest.raises(TenantError) as foreign_tenant:
        await a.get_tenant("tb")
    with pytest.raises(TenantError) as missing_tenant:
        await a.get_tenant("tz")
    assert str(foreign_tenant.value).replace("tb", "<t>") == str(missing_tenant.value).replace(
        "tz", "<t>"
    )
    with pytest.raises(TenantError):
        a.for_tenant("tb")
    # Ids are global, not per tenant: reusing B's execution id is a conflict, B unchanged.
    with pytest.raises(ConflictError):
        await a.create_execution(
            WorkflowExecution(execution_id=eid, workflow_id="wf", workflow_version="1")
        )
    # B's definition key is free in A: a separate row.
    await a.store_workflow(WorkflowDefinition(workflow_id="wf", version="1", ir={"a": 2}))
    assert (await truth_of(store, "tb")).of_tenant("tb") == before
    own = await a.get_workflow("wf", "1")
    assert own is not None and own.tenant_id == "ta" and own.ir == {"a": 2}
    theirs = await store.for_tenant("tb").get_workflow("wf", "1")
    assert theirs is not None and theirs.ir == {"a": 1}


async def test_unknown_tenant_store(store: StateStore) -> None:
    """A scoped store of a tenant that does not exist writes nothing and reads nothing."""
    existing = WorkflowExecution(workflow_id="wf", workflow_version="1")
    await store.create_execution(existing)
    item = WorkItem(execution_id=existing.execution_id, node_id="n", queue_type="q")
    await store.enqueue_work_item(item)
    plaintext, _ = await store.create_token("tok", "viewer")
    await store.store_workflow(WorkflowDefinition(workflow_id="wf", version="1", ir={}))
    before = await truth_of(store, "default", "ghost")
    ghost = store.for_tenant("ghost")

    with pytest.raises(TenantError) as info:
        await ghost.create_execution(WorkflowExecution(workflow_id="wf", workflow_version="1"))
    assert type(info.value) is TenantError
    with pytest.raises(TenantError) as info:
        await ghost.create_token("tok", "viewer")
    assert type(info.value) is TenantError
    with pytest.raises(TenantError) as info:
        await ghost.store_workflow(WorkflowDefinition(workflow_id="wf", version="2", ir={}))
    assert type(info.value) is TenantError
    # No execution can belong to a tenant that does not exist, so an enqueue names a missing
    # execution; either refusal (unknown tenant, missing execution) is a refusal.
    for execution_id in (existing.execution_id, uuid.uuid4()):
        with pytest.raises((TenantError, NotFoundError)) as refused:
            await ghost.enqueue_work_item(
                WorkItem(execution_id=execution_id, node_id="n", queue_type="q")
            )
        assert type(refused.value) in (TenantError, NotFoundError)

    assert await ghost.get_tenant("ghost") is None
    assert await ghost.get_execution(existing.execution_id) is None
    assert await ghost.list_executions() == []
    assert await ghost.list_workflows() == []
    assert await ghost.get_workflow("wf", "1") is None
    assert await ghost.get_events(existing.execution_id) == []
    assert await ghost.latest_sequence(existing.execution_id) == 0
    assert await ghost.get_work_item(item.id) is None
    assert await ghost.list_work_items(existing.execution_id) == []
    assert await ghost.list_dead_letters() == []
    assert await ghost.queue_stats() == {}
    assert await ghost.list_tokens() == []
    assert await ghost.validate_token(plaintext) is None
    assert await ghost.claim_work_item("w", ["q"]) is None
    assert await ghost.claim_work_items("w", ["q"], 5) == []
    assert await truth_of(store, "default", "ghost") == before
    assert await store.get_tenant("ghost") is None


@pytest.mark.parametrize("status", [TenantStatus.SUSPENDED, TenantStatus.ARCHIVED])
async def test_suspended_tenant(make_store: StoreFactory, status: TenantStatus) -> None:
    """New executions, enqueues and tokens are refused (scoped and unscoped); reads work;
    claimed work drains; other tenants carry on."""
    clock = Clock(T0)
    store = await make_store(clock=clock)
    await store.create_tenant(Tenant(id="t", name="T"))
    await store.create_tenant(Tenant(id="u", name="U"))
    scoped = store.for_tenant("t")
    execution = WorkflowExecution(
        workflow_id="wf", workflow_version="1", status=WorkflowStatus.RUNNING
    )
    await scoped.create_execution(execution)
    eid = execution.execution_id
    first = WorkItem(execution_id=eid, node_id="n1", queue_type="q")
    await scoped.enqueue_work_item(first)
    clock.advance(seconds=1)
    await scoped.enqueue_work_item(WorkItem(execution_id=eid, node_id="n2", queue_type="q"))
    claimed = await scoped.claim_work_item("w", ["q"])
    assert claimed is not None and claimed.id == first.id
    plaintext, token = await scoped.create_token("tok", "developer")
    assert await scoped.validate_token(plaintext) is not None

    await store.update_tenant(Tenant(id="t", name="T", status=status))
    clock.advance(seconds=1)
    before = await truth_of(store, "t")

    with pytest.raises(TenantSuspendedError):
        await scoped.create_execution(WorkflowExecution(workflow_id="wf", workflow_version="1"))
    with pytest.raises(TenantSuspendedError):
        await store.create_execution(
            WorkflowExecution(workflow_id="wf", workflow_version="1", tenant_id="t")
        )
    for writer in (scoped, store):
        with pytest.raises(TenantSuspendedError):
            await writer.enqueue_work_item(WorkItem(execution_id=eid, node_id="n", queue_type="q"))
    with pytest.raises(TenantSuspendedError):
        await scoped.create_token("tok2", "viewer")
    assert await scoped.validate_token(plaintext) is None
    assert await store.validate_token(plaintext) is None
    assert await truth_of(store, "t") == before

    # Reads keep working.
    tenant = await scoped.get_tenant("t")
    assert tenant is not None and tenant.status is status
    found = await scoped.get_execution(eid)
    assert found is not None and found.status is WorkflowStatus.RUNNING
    assert [e.execution_id for e in await scoped.list_executions()] == [eid]
    assert [i.node_id for i in await scoped.list_work_items(eid)] == ["n1", "n2"]
    got = await scoped.get_work_item(first.id)
    assert got is not None and got.status is WorkItemStatus.CLAIMED
    assert [t.id for t in await scoped.list_tokens()] == [token.id]
    assert await scoped.queue_stats() == {
        "q": {**dict.fromkeys(WorkItemStatus, 0), "pending": 1, "claimed": 1}
    }
    assert await scoped.get_events(eid) == []

    # Work already claimed drains: the worker renews, records its result and completes.
    await scoped.renew_lease(claimed.id, "w", lease_fence=claimed.lease_fence)
    await scoped.append_event(
        Event(
            execution_id=eid,
            kind=NodeCompleted(node_id="n1", output={}, state_patch={}, duration_ms=1),
        )
    )
    await scoped.complete_work_item(claimed.id, worker_id="w", lease_fence=claimed.lease_fence)
    done = await store.get_work_item(claimed.id)
    assert done is not None and done.status is WorkItemStatus.COMPLETED

    # Another tenant is not affected.
    other_store = store.for_tenant("u")
    other_execution = WorkflowExecution(workflow_id="wf", workflow_version="1")
    await other_store.create_execution(other_execution)
    await other_store.enqueue_work_item(
        WorkItem(execution_id=other_execution.execution_id, node_id="n", queue_type="q")
    )
    other_plaintext, _ = await other_store.create_token("tok", "viewer")
    assert await other_store.validate_token(other_plaintext) is not None
    assert await store.for_tenant("u").claim_work_item("w", ["q"]) is not None


@pytest.mark.parametrize("limit_kind", ["max_concurrent_executions", "max_workflows"])
async def test_limits_hold_under_concurrent_creates(
    make_store: StoreFactory, limit_kind: str
) -> None:
    """Two stores (two engines, two connections) create at the limit at the same time:
    exactly one succeeds, the other gets TenantLimitExceededError. Repeated."""
    first = await make_store()
    second = await make_store()
    for store in (first, second):  # warm up: schema check and a pooled connection
        await store.list_tenants()
    for round_number in range(10):
        tenant_id = f"race-{round_number}"
        limits = TenantLimits(**{limit_kind: 2})
        await first.create_tenant(Tenant(id=tenant_id, name=tenant_id, limits=limits))
        if limit_kind == "max_concurrent_executions":
            await first.create_execution(
                WorkflowExecution(workflow_id="wf", workflow_version="1", tenant_id=tenant_id)
            )
            attempts = [
                first.for_tenant(tenant_id).create_execution(
                    WorkflowExecution(workflow_id="wf", workflow_version="1")
                ),
                second.create_execution(
                    WorkflowExecution(workflow_id="wf", workflow_version="1", tenant_id=tenant_id)
                ),
            ]
        else:
            await first.store_workflow(
                WorkflowDefinition(workflow_id="wf0", version="1", ir={}, tenant_id=tenant_id)
            )
            attempts = [
                first.for_tenant(tenant_id).store_workflow(
                    WorkflowDefinition(workflow_id="wf1", version="1", ir={})
                ),
                second.store_workflow(
                    WorkflowDefinition(workflow_id="wf2", version="1", ir={}, tenant_id=tenant_id)
                ),
            ]
        results = await asyncio.gather(*attempts, return_exceptions=True)
        successes = [r for r in results if r is None]
        refusals = [r for r in results if isinstance(r, TenantLimitExceededError)]
        assert (len(successes), len(refusals)) == (1, 1), (
            f"round {round_number}: {limit_kind}=2 with one slot left, two concurrent "
            f"creates gave {results!r}"
        )
        scoped = first.for_tenant(tenant_id)
        if limit_kind == "max_concurrent_executions":
            assert len(await scoped.list_executions()) == 2
        else:
            assert len({d.workflow_id for d in await scoped.list_workflows()}) == 2


# ---------------------------------------------------------------- ids are unguessable


async def test_every_id_the_store_makes_is_a_random_uuid4(store: StateStore) -> None:
    """Ids are global, not per tenant, so a scoped store may learn that an id exists in
    another tenant (``ConflictError`` on create); that is safe only because no id can be
    guessed (and an id derived later must be derived from ids its own tenant owns).
    Every id the store and its models make (none given by the caller) is a random version 4
    UUID, in the API and in every table, and none repeats; no id is derived from another."""
    await store.create_tenant(Tenant(id="acme", name="Acme"))
    made: list[uuid.UUID] = []
    for view in (store, store.for_tenant("acme")):
        run = WorkflowExecution(workflow_id="wf", workflow_version="1")
        await view.create_execution(run)
        eid = run.execution_id
        await view.append_event(Event(execution_id=eid, kind=WorkflowFailed(error="e")))
        await view.append_events(eid, [{"type": "a"}, {"type": "b"}])
        await view.write_snapshot(Snapshot(execution_id=eid, at_sequence=3, state={}))
        await view.enqueue_work_item(WorkItem(execution_id=eid, node_id="n", queue_type="q"))
        token, record = await view.create_token("ci", TokenRole.VIEWER)
        assert uuid.UUID(token.split("_")[1]) == record.id
        snapshot = await view.latest_snapshot(eid)
        assert snapshot is not None
        made += [eid, record.id, snapshot.id]
        made += [e.id for e in await view.get_events(eid)]
        made += [i.id for i in await view.list_work_items(eid)]

    def stored_ids(session: Any) -> list[uuid.UUID]:
        rows = (ExecutionRow, EventRow, SnapshotRow, WorkItemRow, ApiTokenRow)
        return [i for row in rows for i in session.scalars(select(row.id))]

    stored = await store.run(stored_ids, write=False)
    assert sorted(map(str, stored)) == sorted(map(str, made)) and len(made) == 14
    assert len(set(made)) == len(made)
    not_random = [i for i in made if i.version != 4 or i.variant != uuid.RFC_4122]
    assert not_random == []
    # Ids are global: another tenant's id is a conflict, not a second row.
    with pytest.raises(ConflictError):
        await store.for_tenant("acme").create_execution(
            WorkflowExecution(execution_id=made[0], workflow_id="wf", workflow_version="1")
        )


# ---------------------------------------------------------------- static check

REPOSITORIES = Path(statestore.__file__).parent / "repositories"
_RAW_SQL = re.compile(r"(?<![\w])text\s*\(|\.__table__\b|\bexec_driver_sql\b|\.connection\(")


def _raw_sql_uses(path: Path) -> list[str]:
    """Uses in one module of SQL the tenant filter cannot see."""
    source = path.read_text()
    found = [
        f"{path.name}:{n}: {line.strip()}"
        for n, line in enumerate(source.splitlines(), 1)
        if _RAW_SQL.search(line)
    ]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
            for alias in node.names:
                if alias.name in ("text", "table", "Table", "TextClause"):
                    found.append(f"{path.name}:{node.lineno}: imports {alias.name}")
        elif isinstance(node, ast.Attribute) and node.attr in ("__table__", "tables"):
            found.append(f"{path.name}:{node.lineno}: .{node.attr}")
    return found


def test_repositories_use_no_sql_the_filter_cannot_see() -> None:
    """Raw and Core SQL on tenant-owned tables lives only in statestore/db/queries.py, whose
    statements each take the tenant scope as a required argument; repositories go through
    the session's tenant filter."""
    modules = sorted(REPOSITORIES.glob("*.py"))
    assert modules, REPOSITORIES
    found = [use for path in modules for use in _raw_sql_uses(path)]
    assert not found, "SQL the tenant filter does not see:\n" + "\n".join(found)


def test_static_check_catches_raw_sql(tmp_path: Path) -> None:
    """The static check itself finds what it looks for (and ignores check_text())."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from sqlalchemy import text\n"
        "def f(session):\n"
        "    session.execute(text('SELECT 1'))\n"
        "    session.execute(Row.__table__.select())\n"
    )
    assert len(_raw_sql_uses(bad)) >= 3
    good = tmp_path / "good.py"
    good.write_text("def f(x):\n    return check_text('key', x)\n")
    assert _raw_sql_uses(good) == []
