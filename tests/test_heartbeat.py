"""The heartbeat context manager: it keeps a lease alive while its block runs, and a lost
lease cancels the block with LeaseLostError."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from conftest import Clock

from statestore import (
    LeaseLostError,
    StateStore,
    Tenant,
    ValidationError,
    WorkflowExecution,
    WorkItem,
)


async def _claimed(store: StateStore) -> WorkItem:
    run = WorkflowExecution(workflow_id="wf", workflow_version="1")
    await store.create_execution(run)
    await store.enqueue_work_item(
        WorkItem(execution_id=run.execution_id, node_id="n", queue_type="q")
    )
    item = await store.claim_work_item("w1", ["q"])
    assert item is not None
    return item


async def test_heartbeat_keeps_the_lease_while_the_block_runs(make_store: Any) -> None:
    store: StateStore = await make_store(lease_duration=timedelta(milliseconds=600))
    item = await _claimed(store)
    async with store.heartbeat(item, worker_id="w1", every=timedelta(milliseconds=100)):
        await asyncio.sleep(1.5)  # well past the first lease
        reclaimed = await store.reclaim_expired_leases()
        assert reclaimed.retryable == [] and reclaimed.exhausted == []
    stored = await store.get_work_item(item.id)
    assert stored is not None and stored.status == "claimed"
    await store.complete_work_item(item.id, worker_id="w1", lease_fence=item.lease_fence)


async def test_a_lost_lease_cancels_the_block_with_lease_lost_error(make_store: Any) -> None:
    clock = Clock()
    store: StateStore = await make_store(clock=clock)
    item = await _claimed(store)
    reached_the_end = False
    with pytest.raises(LeaseLostError):
        async with store.heartbeat(item, worker_id="w1", every=timedelta(milliseconds=50)):
            clock.advance(31)  # the lease (30 s) expires; another worker takes the item
            await store.reclaim_expired_leases()
            clock.advance(3600)  # past the retry backoff
            assert await store.claim_work_item("w2", ["q"]) is not None
            await asyncio.sleep(5)  # cancelled by the next renewal
            reached_the_end = True
    assert not reached_the_end
    # The task is not left cancelling: it goes on awaiting normally.
    await asyncio.sleep(0.01)
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_an_outside_cancellation_still_cancels(make_store: Any) -> None:
    store: StateStore = await make_store()
    item = await _claimed(store)

    async def work() -> None:
        async with store.heartbeat(item, worker_id="w1", every=timedelta(milliseconds=50)):
            await asyncio.sleep(5)

    task = asyncio.ensure_future(work())
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_heartbeat_refuses_a_bad_interval(make_store: Any) -> None:
    store: StateStore = await make_store()
    item = await _claimed(store)
    for every in (timedelta(0), timedelta(seconds=-1), 5):
        with pytest.raises(ValidationError):
            async with store.heartbeat(item, worker_id="w1", every=every):  # type: ignore[arg-type]
                pass


async def test_a_vanished_item_ends_the_block_with_lease_lost_error(make_store: Any) -> None:
    """A renewal that finds no item (here: a tenant's view heartbeating the default tenant's
    item, which it cannot see) ends the block at once instead of logging at every tick."""
    store: StateStore = await make_store()
    item = await _claimed(store)
    await store.create_tenant(Tenant(id="other", name="Other"))
    blind = store.for_tenant("other")
    with pytest.raises(LeaseLostError, match="not found"):
        async with blind.heartbeat(item, worker_id="w1", every=timedelta(milliseconds=50)):
            await asyncio.sleep(5)  # cancelled by the first renewal
    stored = await store.get_work_item(item.id)
    assert stored is not None and stored.status == "claimed"  # nothing written
