"""Snapshots: one per (execution, at_sequence), replace on rewrite, latest by at_sequence."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest
from conftest import T0, Clock
from sqlalchemy import text

from statestore import NotFoundError, Snapshot, StateStore, Tenant, WorkflowExecution

pytestmark = pytest.mark.memory  # also on sqlite:///:memory: (conftest)

StoreFactory = Callable[..., Awaitable[StateStore]]


async def count_snapshots(store: StateStore) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM snapshots"))).scalar_one())


async def new_execution(store: StateStore, tenant_id: str = "default") -> uuid.UUID:
    execution = WorkflowExecution(workflow_id="wf", workflow_version="1", tenant_id=tenant_id)
    await store.create_execution(execution)
    return execution.execution_id


async def test_write_and_latest(make_store: StoreFactory) -> None:
    store = await make_store(clock=Clock())
    execution_id = await new_execution(store)
    snapshot = Snapshot(execution_id=execution_id, at_sequence=3, state={"a": [1, 2], "b": None})
    await store.write_snapshot(snapshot)
    latest = await store.latest_snapshot(execution_id)
    assert isinstance(latest, Snapshot)
    assert latest.id == snapshot.id
    assert latest.execution_id == execution_id
    assert latest.at_sequence == 3
    assert latest.state == {"a": [1, 2], "b": None}
    assert latest.tenant_id == "default"
    assert latest.created_at == T0
    by_str = await store.latest_snapshot(str(execution_id))
    assert by_str is not None and by_str.id == snapshot.id


async def test_same_pair_again_replaces(make_store: StoreFactory) -> None:
    clock = Clock()
    store = await make_store(clock=clock)
    execution_id = await new_execution(store)
    await store.write_snapshot(Snapshot(execution_id=execution_id, at_sequence=4, state={"v": 1}))
    clock.now = T0 + timedelta(seconds=9)
    second = Snapshot(execution_id=execution_id, at_sequence=4, state={"v": 2})
    await store.write_snapshot(second)
    latest = await store.latest_snapshot(execution_id)
    assert latest is not None
    assert latest.at_sequence == 4 and latest.state == {"v": 2}
    assert latest.id == second.id
    assert latest.created_at == T0 + timedelta(seconds=9)
    assert await count_snapshots(store) == 1


async def test_latest_picks_highest_at_sequence(store: StateStore) -> None:
    execution_id = await new_execution(store)
    for at_sequence in (5, 2, 9, 7, 0):
        await store.write_snapshot(
            Snapshot(execution_id=execution_id, at_sequence=at_sequence, state={"at": at_sequence})
        )
    latest = await store.latest_snapshot(execution_id)
    assert latest is not None
    assert latest.at_sequence == 9 and latest.state == {"at": 9}
    assert await count_snapshots(store) == 5


async def test_snapshots_are_per_execution(store: StateStore) -> None:
    first = await new_execution(store)
    second = await new_execution(store)
    await store.write_snapshot(Snapshot(execution_id=first, at_sequence=10, state={"e": 1}))
    await store.write_snapshot(Snapshot(execution_id=second, at_sequence=1, state={"e": 2}))
    latest_second = await store.latest_snapshot(second)
    assert latest_second is not None and latest_second.state == {"e": 2}
    latest_first = await store.latest_snapshot(first)
    assert latest_first is not None and latest_first.state == {"e": 1}


async def test_missing_execution_is_not_found(store: StateStore) -> None:
    with pytest.raises(NotFoundError):
        await store.write_snapshot(Snapshot(execution_id=uuid.uuid4(), at_sequence=1, state={}))
    assert await count_snapshots(store) == 0


async def test_none_when_no_snapshot(store: StateStore) -> None:
    execution_id = await new_execution(store)
    assert await store.latest_snapshot(execution_id) is None
    assert await store.latest_snapshot(uuid.uuid4()) is None


async def test_snapshot_belongs_to_its_executions_tenant(store: StateStore) -> None:
    await store.create_tenant(Tenant(id="acme", name="Acme"))
    execution_id = await new_execution(store, tenant_id="acme")
    await store.write_snapshot(Snapshot(execution_id=execution_id, at_sequence=1, state={}))
    latest = await store.latest_snapshot(execution_id)
    assert latest is not None and latest.tenant_id == "acme"
    scoped = await store.for_tenant("acme").latest_snapshot(execution_id)
    assert scoped is not None and scoped.tenant_id == "acme"
    assert await store.for_tenant("default").latest_snapshot(execution_id) is None
