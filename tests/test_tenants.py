"""Tenants: operator CRUD, id rules, scoped stores and their confinement, and the checks
made before new work (suspended, unknown, limits)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest
from conftest import T0, Clock
from sqlalchemy import text

from statestore import (
    Event,
    NotFoundError,
    Snapshot,
    StateStore,
    Tenant,
    TenantError,
    TenantLimitExceededError,
    TenantLimits,
    TenantStatus,
    TenantSuspendedError,
    ValidationError,
    WorkflowDefinition,
    WorkflowExecution,
    WorkflowFailed,
    WorkflowStatus,
    WorkItem,
    WorkItemStatus,
)
from statestore.errors import ConflictError

StoreFactory = Callable[..., Awaitable[StateStore]]
BAD_IDS = ["", "a" * 65, "has space", "a/b", "tenänt", "t\x00", "tab\t", "emoji😀"]
BAD_ID_NAMES = ["empty", "65-chars", "space", "slash", "non-ascii", "nul", "tab", "emoji"]


async def count(store: StateStore, table: str) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


def execution(tenant_id: str | None = None, **kw: object) -> WorkflowExecution:
    if tenant_id is not None:
        kw["tenant_id"] = tenant_id
    return WorkflowExecution(workflow_id="wf", workflow_version="1", **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------- operator CRUD


@pytest.mark.memory
async def test_default_tenant_exists_after_migration(store: StateStore) -> None:
    default = await store.get_tenant("default")
    assert isinstance(default, Tenant)
    assert default.id == "default"
    assert default.status is TenantStatus.ACTIVE
    assert [t.id for t in await store.list_tenants()] == ["default"]


@pytest.mark.memory
async def test_create_and_get(make_store: StoreFactory) -> None:
    store = await make_store(clock=Clock())
    tenant = Tenant(
        id="acme.corp_1-x",
        name="Acme Corp",
        policy={"allow": ["a", "b"], "max": 3},
        limits=TenantLimits(max_concurrent_executions=5, max_cost_per_month_usd=12.5),
    )
    await store.create_tenant(tenant)
    found = await store.get_tenant("acme.corp_1-x")
    assert found is not None
    assert found.id == "acme.corp_1-x" and found.name == "Acme Corp"
    assert found.status is TenantStatus.ACTIVE
    assert found.policy == {"allow": ["a", "b"], "max": 3}
    assert found.limits == TenantLimits(max_concurrent_executions=5, max_cost_per_month_usd=12.5)
    assert found.created_at == T0 and found.updated_at == T0


async def test_create_minimal_tenant(store: StateStore) -> None:
    await store.create_tenant(Tenant(id="t", name="T"))
    found = await store.get_tenant("t")
    assert found is not None
    assert found.policy is None and found.limits is None
    assert found.status is TenantStatus.ACTIVE


async def test_create_duplicate_is_a_conflict(store: StateStore) -> None:
    await store.create_tenant(Tenant(id="acme", name="First"))
    with pytest.raises(ConflictError):
        await store.create_tenant(Tenant(id="acme", name="Second"))
    with pytest.raises(ConflictError):
        await store.create_tenant(Tenant(id="default", name="Again"))
    found = await store.get_tenant("acme")
    assert found is not None and found.name == "First"
    assert await count(store, "tenants") == 2


async def test_get_missing_is_none(store: StateStore) -> None:
    assert await store.get_tenant("nobody") is None


async def test_list_by_id(store: StateStore) -> None:
    for tenant_id in ("zeta", "alpha", "mid", "beta"):
        await store.create_tenant(Tenant(id=tenant_id, name=tenant_id.upper()))
    tenants = await store.list_tenants()
    assert all(isinstance(t, Tenant) for t in tenants)
    assert [t.id for t in tenants] == ["alpha", "beta", "default", "mid", "zeta"]
    assert [t.name for t in tenants if t.id != "default"] == ["ALPHA", "BETA", "MID", "ZETA"]


@pytest.mark.memory
async def test_update(make_store: StoreFactory) -> None:
    clock = Clock()
    store = await make_store(clock=clock)
    await store.create_tenant(Tenant(id="acme", name="Acme"))
    clock.now = T0 + timedelta(hours=1)
    await store.update_tenant(
        Tenant(
            id="acme",
            name="Acme Renamed",
            status=TenantStatus.SUSPENDED,
            policy={"p": True},
            limits=TenantLimits(max_workflows=3, max_tokens_per_month=1000),
        )
    )
    found = await store.get_tenant("acme")
    assert found is not None
    assert found.name == "Acme Renamed"
    assert found.status is TenantStatus.SUSPENDED
    assert found.policy == {"p": True}
    assert found.limits == TenantLimits(max_workflows=3, max_tokens_per_month=1000)
    assert found.created_at == T0
    assert found.updated_at == T0 + timedelta(hours=1)
    # And back: limits and policy cleared.
    await store.update_tenant(Tenant(id="acme", name="Acme", status="active"))
    found = await store.get_tenant("acme")
    assert found is not None
    assert found.status is TenantStatus.ACTIVE and found.policy is None and found.limits is None


async def test_update_missing_is_not_found(store: StateStore) -> None:
    with pytest.raises(NotFoundError):
        await store.update_tenant(Tenant(id="ghost", name="Ghost"))
    assert await store.get_tenant("ghost") is None


@pytest.mark.parametrize("bad_id", BAD_IDS, ids=BAD_ID_NAMES)
async def test_invalid_tenant_ids(store: StateStore, bad_id: str) -> None:
    with pytest.raises(ValidationError):
        await store.create_tenant(Tenant(id=bad_id, name="x"))
    with pytest.raises(ValidationError):
        await store.get_tenant(bad_id)
    with pytest.raises(ValidationError):
        await store.update_tenant(Tenant(id=bad_id, name="x"))
    with pytest.raises(ValidationError):
        store.for_tenant(bad_id)
    assert await count(store, "tenants") == 1


async def test_longest_valid_tenant_id(store: StateStore) -> None:
    tenant_id = "A9._-" + "z" * 59
    assert len(tenant_id) == 64
    await store.create_tenant(Tenant(id=tenant_id, name="long"))
    found = await store.get_tenant(tenant_id)
    assert found is not None and found.id == tenant_id


# ---------------------------------------------------------------- scoped stores


async def test_tenant_id_property(store: StateStore) -> None:
    assert store.tenant_id is None
    assert store.for_tenant("t").tenant_id == "t"


async def test_scoped_store_cannot_manage_tenants(store: StateStore) -> None:
    await store.create_tenant(Tenant(id="t", name="T"))
    before = await store.list_tenants()
    scoped = store.for_tenant("t")
    with pytest.raises(TenantError):
        await scoped.create_tenant(Tenant(id="new", name="New"))
    with pytest.raises(TenantError):
        await scoped.list_tenants()
    with pytest.raises(TenantError):
        await scoped.update_tenant(Tenant(id="t", name="Renamed"))
    with pytest.raises(TenantError):
        await scoped.update_tenant(Tenant(id="default", name="Renamed"))
    own = await scoped.get_tenant("t")
    assert own is not None and own.id == "t" and own.name == "T"
    with pytest.raises(TenantError):
        await scoped.get_tenant("default")
    with pytest.raises(TenantError):
        await scoped.get_tenant("nonexistent")
    assert await store.list_tenants() == before
    assert [t.id for t in before] == ["default", "t"]


async def test_for_tenant_on_scoped_store(store: StateStore) -> None:
    scoped = store.for_tenant("t")
    assert scoped.for_tenant("t") is scoped
    with pytest.raises(TenantError):
        scoped.for_tenant("u")
    with pytest.raises(TenantError):
        scoped.for_tenant("default")
    assert scoped.tenant_id == "t"


@pytest.mark.memory
async def test_scoped_store_stamps_its_tenant(store: StateStore) -> None:
    await store.create_tenant(Tenant(id="t", name="T"))
    scoped = store.for_tenant("t")
    created = execution()
    await scoped.create_execution(created)
    await scoped.store_workflow(WorkflowDefinition(workflow_id="wf", version="1", ir={"a": 1}))
    found = await store.get_execution(created.execution_id)
    assert found is not None and found.tenant_id == "t"
    workflow = await store.get_workflow("wf", "1")
    assert workflow is not None and workflow.tenant_id == "t"
    # Events and snapshots belong to the execution's tenant.
    await scoped.append_event(
        Event(execution_id=created.execution_id, kind=WorkflowFailed(error="e"))
    )
    [event] = await store.get_events(created.execution_id)
    assert event.tenant_id == "t"
    await scoped.write_snapshot(
        Snapshot(execution_id=created.execution_id, at_sequence=1, state={})
    )
    snapshot = await store.latest_snapshot(created.execution_id)
    assert snapshot is not None and snapshot.tenant_id == "t"
    # Explicitly naming the scope's own tenant is fine.
    await scoped.create_execution(execution(tenant_id="t"))
    assert {e.tenant_id for e in await store.list_executions()} == {"t"}


async def test_unscoped_events_belong_to_the_executions_tenant(store: StateStore) -> None:
    await store.create_tenant(Tenant(id="acme", name="Acme"))
    created = execution(tenant_id="acme")
    await store.create_execution(created)
    await store.append_event(
        Event(execution_id=created.execution_id, kind=WorkflowFailed(error="e"))
    )
    await store.append_events(created.execution_id, [WorkflowFailed(error="f")])
    events = await store.get_events(created.execution_id)
    assert [e.tenant_id for e in events] == ["acme", "acme"]


@pytest.mark.memory
async def test_scoped_store_cannot_see_other_tenants_execution(store: StateStore) -> None:
    await store.create_tenant(Tenant(id="t", name="T"))
    other = execution(current_state={"items": []})
    await store.create_execution(other)
    await store.append_event(Event(execution_id=other.execution_id, kind=WorkflowFailed(error="e")))
    await store.write_snapshot(Snapshot(execution_id=other.execution_id, at_sequence=1, state={}))
    scoped = store.for_tenant("t")
    execution_id = other.execution_id

    assert await scoped.get_execution(execution_id) is None
    assert await scoped.get_events(execution_id) == []
    assert await scoped.get_events_since(execution_id, 0) == []
    assert await scoped.latest_sequence(execution_id) == 0
    assert await scoped.latest_snapshot(execution_id) is None
    assert await scoped.list_executions() == []
    with pytest.raises(NotFoundError):
        await scoped.append_event(Event(execution_id=execution_id, kind=WorkflowFailed(error="x")))
    with pytest.raises(NotFoundError):
        await scoped.append_events(execution_id, [WorkflowFailed(error="x")])
    with pytest.raises(NotFoundError):
        await scoped.update_execution_status(execution_id, WorkflowStatus.CANCELLED)
    with pytest.raises(NotFoundError):
        await scoped.update_execution_current_state(execution_id, {"hijacked": True})
    with pytest.raises(NotFoundError):
        await scoped.patch_append_array(execution_id, "items", 1)
    with pytest.raises(NotFoundError):
        await scoped.write_snapshot(Snapshot(execution_id=execution_id, at_sequence=2, state={}))

    # Nothing of the default tenant's execution changed.
    found = await store.get_execution(execution_id)
    assert found is not None
    assert found.status is WorkflowStatus.PENDING and found.current_state == {"items": []}
    assert await store.latest_sequence(execution_id) == 1
    assert await count(store, "events") == 1
    latest = await store.latest_snapshot(execution_id)
    assert latest is not None and latest.at_sequence == 1


async def test_scoped_store_cannot_see_other_tenants_workflow(store: StateStore) -> None:
    await store.create_tenant(Tenant(id="t", name="T"))
    await store.store_workflow(WorkflowDefinition(workflow_id="wf", version="1", ir={"d": 1}))
    scoped = store.for_tenant("t")
    assert await scoped.get_workflow("wf", "1") is None
    assert await scoped.list_workflows() == []


async def test_model_for_another_tenant_is_refused_on_scoped_store(store: StateStore) -> None:
    await store.create_tenant(Tenant(id="t", name="T"))
    await store.create_tenant(Tenant(id="u", name="U"))
    scoped = store.for_tenant("t")
    with pytest.raises(TenantError):
        await scoped.create_execution(execution(tenant_id="default"))
    with pytest.raises(TenantError):
        await scoped.create_execution(execution(tenant_id="u"))
    with pytest.raises(TenantError):
        await scoped.store_workflow(
            WorkflowDefinition(workflow_id="wf", version="1", ir={}, tenant_id="u")
        )
    own = execution()
    await scoped.create_execution(own)
    with pytest.raises(TenantError):
        await scoped.append_event(
            Event(execution_id=own.execution_id, kind=WorkflowFailed(error="e"), tenant_id="u")
        )
    with pytest.raises(TenantError):
        await scoped.write_snapshot(
            Snapshot(execution_id=own.execution_id, at_sequence=1, state={}, tenant_id="u")
        )
    assert await count(store, "workflow_executions") == 1
    assert await count(store, "workflow_definitions") == 0
    assert await count(store, "events") == 0
    assert await count(store, "snapshots") == 0


# ---------------------------------------------------------------- checks before new work


@pytest.mark.parametrize("status", [TenantStatus.SUSPENDED, TenantStatus.ARCHIVED])
async def test_inactive_tenant_refuses_new_executions(
    store: StateStore, status: TenantStatus
) -> None:
    await store.create_tenant(Tenant(id="t", name="T"))
    existing = execution(tenant_id="t")
    await store.create_execution(existing)
    await store.update_tenant(Tenant(id="t", name="T", status=status))
    with pytest.raises(TenantSuspendedError):
        await store.create_execution(execution(tenant_id="t"))
    with pytest.raises(TenantSuspendedError):
        await store.for_tenant("t").create_execution(execution())
    # Still readable.
    tenant = await store.for_tenant("t").get_tenant("t")
    assert tenant is not None and tenant.status is status
    found = await store.for_tenant("t").get_execution(existing.execution_id)
    assert found is not None
    assert await count(store, "workflow_executions") == 1


async def set_status(store: StateStore, tenant_id: str, status: TenantStatus) -> None:
    await store.update_tenant(Tenant(id=tenant_id, name=tenant_id.upper(), status=status))


async def enqueued(store: StateStore, tenant_id: str, node_id: str, **kw: object) -> WorkItem:
    run = execution(tenant_id=tenant_id)
    await store.create_execution(run)
    item = WorkItem(execution_id=run.execution_id, node_id=node_id, queue_type="q", **kw)  # type: ignore[arg-type]
    await store.enqueue_work_item(item)
    return item


@pytest.mark.parametrize("status", [TenantStatus.SUSPENDED, TenantStatus.ARCHIVED])
async def test_inactive_tenant_dead_letters_are_not_requeued(
    store: StateStore, status: TenantStatus
) -> None:
    """A requeue is new work (an enqueue): refused, nothing written, until reactivated."""
    await store.create_tenant(Tenant(id="t", name="T"))
    item = await enqueued(store, "t", "n")
    await store.move_to_dead_letter(item.id, "poison")
    letter = await store.get_work_item(item.id)
    await set_status(store, "t", status)
    for view in (store, store.for_tenant("t")):
        with pytest.raises(TenantSuspendedError):
            await view.requeue_dead_letter(item.id)
    assert await store.get_work_item(item.id) == letter
    await set_status(store, "t", TenantStatus.ACTIVE)
    await store.requeue_dead_letter(item.id)
    requeued = await store.get_work_item(item.id)
    assert requeued is not None and requeued.status is WorkItemStatus.PENDING


@pytest.mark.memory
@pytest.mark.parametrize("status", [TenantStatus.SUSPENDED, TenantStatus.ARCHIVED])
async def test_inactive_tenant_pending_items_wait_until_reactivated(
    store: StateStore, status: TenantStatus
) -> None:
    """Claims skip an inactive tenant's pending items (they stay pending, untouched) and
    take the next eligible item; after reactivation they are claimed as usual."""
    await store.create_tenant(Tenant(id="t", name="T"))
    first = await enqueued(store, "t", "first", priority=10)
    other = await enqueued(store, "default", "other", priority=0)
    await set_status(store, "t", status)
    before = await store.get_work_item(first.id)
    claimed = await store.claim_work_items("w", ["q"], 10)
    assert [i.id for i in claimed] == [other.id]
    assert await store.claim_work_item("w", ["q"]) is None
    assert await store.for_tenant("t").claim_work_item("w", ["q"]) is None
    assert await store.get_work_item(first.id) == before
    await set_status(store, "t", TenantStatus.ACTIVE)
    again = await store.claim_work_item("w", ["q"])
    assert again is not None and again.id == first.id


async def test_suspended_tenant_claimed_work_can_be_drained(
    make_store: StoreFactory, clock: Clock
) -> None:
    """Work claimed before the suspension is finished as usual: renew, complete, fail,
    dead-letter and reclaim all work; an item sent back to pending waits for reactivation."""
    store = await make_store(clock=clock)
    await store.create_tenant(Tenant(id="t", name="T"))
    items = [await enqueued(store, "t", f"n{n}", max_attempts=5) for n in range(5)]
    claimed = {i.id: i for i in await store.claim_work_items("w", ["q"], 10)}
    assert set(claimed) == {i.id for i in items}
    await set_status(store, "t", TenantStatus.SUSPENDED)
    done, retried, failed, dead, expired = (claimed[i.id] for i in items)
    scoped = store.for_tenant("t")
    await scoped.renew_lease(done.id, "w", lease_fence=done.lease_fence)
    await scoped.complete_work_item(done.id, worker_id="w", lease_fence=done.lease_fence)
    status = await scoped.fail_work_item(
        retried.id, "again", retry_in=timedelta(0), worker_id="w", lease_fence=retried.lease_fence
    )
    assert status is WorkItemStatus.PENDING
    assert await store.fail_work_item(failed.id, "no", worker_id="w") is WorkItemStatus.FAILED
    await store.move_to_dead_letter(dead.id, "poison")
    clock.advance(seconds=31)
    result = await store.reclaim_expired_leases()
    assert [i.id for i in result.retryable] == [expired.id]
    stored = [await scoped.get_work_item(i.id) for i in items]
    statuses = {i.node_id: i.status for i in stored if i is not None}
    assert statuses == {
        "n0": WorkItemStatus.COMPLETED,
        "n1": WorkItemStatus.PENDING,
        "n2": WorkItemStatus.FAILED,
        "n3": WorkItemStatus.DEAD_LETTERED,
        "n4": WorkItemStatus.PENDING,
    }
    clock.advance(seconds=3600)
    assert await store.claim_work_item("w", ["q"]) is None  # pending, but not new work yet
    await set_status(store, "t", TenantStatus.ACTIVE)
    assert len(await store.claim_work_items("w", ["q"], 10)) == 2


async def test_unknown_tenant_refuses_new_executions(store: StateStore) -> None:
    with pytest.raises(TenantError) as info:
        await store.create_execution(execution(tenant_id="ghost"))
    assert type(info.value) is TenantError
    with pytest.raises(TenantError) as info:
        await store.for_tenant("ghost").create_execution(execution())
    assert type(info.value) is TenantError
    assert await count(store, "workflow_executions") == 0


@pytest.mark.memory
async def test_max_concurrent_executions(store: StateStore) -> None:
    limits = TenantLimits(max_concurrent_executions=2)
    await store.create_tenant(Tenant(id="t", name="T", limits=limits))
    first = execution(tenant_id="t")
    await store.create_execution(first)
    await store.create_execution(execution(tenant_id="t", status=WorkflowStatus.RUNNING))
    with pytest.raises(TenantLimitExceededError):
        await store.create_execution(execution(tenant_id="t"))
    with pytest.raises(TenantLimitExceededError):
        await store.for_tenant("t").create_execution(execution())
    assert await count(store, "workflow_executions") == 2
    # Other tenants are not affected.
    await store.create_execution(execution())
    # Finishing one frees a slot.
    await store.update_execution_status(first.execution_id, WorkflowStatus.COMPLETED)
    await store.for_tenant("t").create_execution(execution())
    with pytest.raises(TenantLimitExceededError):
        await store.create_execution(execution(tenant_id="t"))
    assert len(await store.for_tenant("t").list_executions()) == 3
