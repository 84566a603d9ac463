"""A claim whose caller stopped waiting (``asyncio.wait_for`` timing out, a task cancelled)
while its transaction ran, and which then committed with items, gives them back at once:
pending again, the attempt it counted undone, waiting claims woken. Nobody received them,
so without that they would stay leased to nobody until the lease expires — on both
databases."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import uuid
from datetime import timedelta
from typing import Any

import pytest

from statestore import (
    LeaseLostError,
    StateStore,
    Tenant,
    ValidationError,
    WorkflowExecution,
    WorkItem,
)

pytestmark = pytest.mark.pgbouncer  # also through PgBouncer (transaction pooling)

# From "before the claim starts" (0) through "while its statement runs" to "during COMMIT"
# and after: a claim takes roughly 0.2-2 ms here, so these delays land everywhere in it.
DELAYS = (0.0, 1e-5, 3e-5, 1e-4, 3e-4, 6e-4, 1e-3, 2e-3, 5e-3)
ROUNDS_PER_DELAY = 8
LEASE = timedelta(hours=1)
"""Far longer than the test: an item found again was given back, not reclaimed."""
WAIT = 20.0
"""How long the second worker waits for each item: a given-back item wakes it at once;
one left leased to nobody would keep it waiting this long, and the test fails."""


async def execution(store: StateStore) -> uuid.UUID:
    run = WorkflowExecution(workflow_id="wf", workflow_version="1")
    await store.create_execution(run)
    return run.execution_id


def new_item(eid: uuid.UUID, queue_type: str = "q") -> WorkItem:
    return WorkItem(execution_id=eid, node_id="n", queue_type=queue_type)


async def settle(store: StateStore, received: WorkItem, expected: WorkItem) -> None:
    """``received`` came back from a claim: it is ``expected``, held by exactly that lease
    (no other live lease), claimed once as far as attempts go; complete it."""
    assert received.id == expected.id
    assert received.attempt == 1, "an attempt counted by a claim nobody received"
    stored = await store.get_work_item(received.id)
    assert stored is not None and stored.status == "claimed"
    assert (stored.worker_id, stored.lease_fence) == (received.worker_id, received.lease_fence)
    await store.complete_work_item(
        received.id, worker_id=received.worker_id, lease_fence=received.lease_fence
    )


async def check_completed_once(store: StateStore, items: list[WorkItem], completed: int) -> None:
    assert completed == len(items)
    for item in items:
        stored = await store.get_work_item(item.id)
        assert stored is not None
        assert (stored.status, stored.attempt) == ("completed", 1), stored
        # A second completion by any other lease is refused: it was completed once.
        with pytest.raises(LeaseLostError):
            await store.complete_work_item(
                item.id, worker_id="someone-else", lease_fence=stored.lease_fence
            )


@pytest.fixture(autouse=True)
def _earlier_garbage_collected() -> None:
    """What earlier tests left for the garbage collector (e.g. futures of connections they
    terminated, which log when collected) is collected before this test, not blamed on it."""
    gc.collect()


def no_warnings(caplog: pytest.LogCaptureFixture) -> None:
    gc.collect()
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not noisy, [r.getMessage() for r in noisy]


async def test_cancelled_claims_give_their_items_back_at_once(
    make_store: Any, caplog: pytest.LogCaptureFixture, capfd: Any
) -> None:
    """Claims cut off at every point by tiny timeouts; after each, a second worker waits for
    the item: it gets it at once (never after the lease), under the only live lease, with
    one attempt counted; each item is completed exactly once."""
    caplog.set_level(logging.WARNING)
    store: StateStore = await make_store(lease_duration=LEASE)
    eid = await execution(store)
    items: list[WorkItem] = []
    completed = given_back = 0
    for delay in DELAYS:
        for _ in range(ROUNDS_PER_DELAY):
            item = new_item(eid)
            await store.enqueue_work_item(item)
            items.append(item)
            try:
                received = await asyncio.wait_for(store.claim_work_item("first", ["q"]), delay)
            except TimeoutError:
                received = await store.claim_work_item("second", ["q"], wait=WAIT)
                assert received is not None, "an abandoned claim kept its item"
                # A fence of 2: a claim nobody received took it first and gave it back.
                given_back += received.lease_fence == 2
            assert received is not None
            await settle(store, received, item)
            completed += 1
    await check_completed_once(store, items, completed)
    # The cancellations did land inside claims that then committed (the case tested).
    assert given_back > 0
    no_warnings(caplog)
    assert "never retrieved" not in capfd.readouterr().err


async def test_a_woken_waiting_claim_cancelled_gives_its_item_back(
    make_store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A claim waiting for work (``wait=``), woken by an enqueue and cancelled at every
    point after it: the item reaches the other waiting worker at once, with one attempt."""
    caplog.set_level(logging.WARNING)
    store: StateStore = await make_store(lease_duration=LEASE)
    eid = await execution(store)
    waker = store._backend.waker
    items: list[WorkItem] = []
    completed = given_back = 0
    for delay in DELAYS:
        for _ in range(ROUNDS_PER_DELAY // 2):
            first = asyncio.create_task(store.claim_work_item("first", ["q"], wait=WAIT))
            for _ in range(5000):  # until registered (its first claim found nothing)
                if waker._waiters:
                    break
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.01)  # past that claim, into the wait
            item = new_item(eid)
            await store.enqueue_work_item(item)
            items.append(item)
            await asyncio.sleep(delay)
            first.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                received = await first
                if received is not None:  # it returned before the cancellation
                    await settle(store, received, item)
                    completed += 1
                    continue
            received = await store.claim_work_item("second", ["q"], wait=WAIT)
            assert received is not None, "an abandoned claim kept its item"
            given_back += received.lease_fence == 2
            await settle(store, received, item)
            completed += 1
    await check_completed_once(store, items, completed)
    assert given_back > 0
    no_warnings(caplog)


async def test_close_waits_for_the_give_back(make_store: Any) -> None:
    """A claim abandoned just before ``close()``: its items are given back before close
    returns (a store opened afterwards finds them pending, attempt undone)."""
    eid = await execution(await make_store())
    abandoned = 0
    for round_, delay in enumerate(DELAYS[1:]):
        store: StateStore = await make_store(lease_duration=LEASE)
        queue_type = f"q{round_}"  # this round's items only
        batch = [new_item(eid, queue_type) for _ in range(3)]
        for item in batch:
            await store.enqueue_work_item(item)
        claim = store.claim_work_items("first", [queue_type], 3)
        try:
            received = await asyncio.wait_for(claim, delay)
        except TimeoutError:
            received = []
        await store.close()
        after = await make_store()
        for item in batch:
            stored = await after.get_work_item(item.id)
            assert stored is not None
            if stored.id in {r.id for r in received}:
                continue  # the caller received it: it holds the lease
            assert (stored.status, stored.attempt, stored.worker_id) == ("pending", 0, None)
            abandoned += stored.lease_fence == 1
    assert abandoned > 0


@pytest.mark.parametrize("view", ["unscoped", "tenant"])
async def test_only_the_lease_the_claim_gave_is_given_back(store: StateStore, view: str) -> None:
    """The give-back is guarded by worker and fence: an item completed, or claimed again,
    since is left alone. On a tenant's view it runs in that tenant's scope."""
    if view == "tenant":
        await store.create_tenant(Tenant(id="t", name="t"))
        store = store.for_tenant("t")
    eid = await execution(store)
    for _ in range(3):
        await store.enqueue_work_item(new_item(eid))
    claimed = await store.claim_work_items("w", ["q"], 3)
    assert len(claimed) == 3
    done, stale, held = claimed
    await store.complete_work_item(done.id, worker_id="w", lease_fence=done.lease_fence)
    wrong_fence = stale.model_copy(update={"lease_fence": stale.lease_fence + 1})
    wrong_worker = held.model_copy(update={"worker_id": "other"})

    def give_back(items: list[WorkItem]) -> Any:
        return store.run(lambda session: store.queue.release_abandoned(session, items))

    assert await give_back([done, wrong_fence, wrong_worker]) == set()
    assert await give_back([held]) == {held.id}
    stored = await store.get_work_item(held.id)
    assert stored is not None
    assert (stored.status, stored.attempt, stored.worker_id, stored.lease_expires_at) == (
        "pending",
        0,
        None,
        None,
    )
    # The next claim gets a greater fence: the given-back lease can never settle it.
    again = await store.claim_work_item("w2", ["q"])
    assert again is not None and again.id == held.id and again.lease_fence > held.lease_fence
    with pytest.raises(LeaseLostError):
        await store.complete_work_item(held.id, worker_id="w", lease_fence=held.lease_fence)


async def test_an_abandoned_write_runs_its_follow_up_and_a_failing_one_is_logged(
    make_store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The runners' hook itself: a write whose caller was cancelled runs to its end; then
    ``if_abandoned`` gets its outcome, and the follow-up it returns runs before ``close()``
    returns. A failing follow-up, or a failing ``if_abandoned``, is logged (WARNING), never
    raised into the event loop."""
    caplog.set_level(logging.WARNING)
    store: StateStore = await make_store()
    backend, scope = store._backend, store._scope
    await store.queue_stats()  # the schema check is behind us: the write below starts at once
    outcomes: list[tuple[Any, BaseException | None]] = []

    def refused(session: Any) -> None:
        raise ValidationError("the follow-up was refused")

    def then(result: Any, error: BaseException | None) -> Any:
        outcomes.append((result, error))
        if len(outcomes) == 1:
            return refused
        raise RuntimeError("if_abandoned itself failed")

    for _ in range(2):
        call = asyncio.create_task(backend.write(lambda session: "done", scope, if_abandoned=then))
        await asyncio.sleep(0)  # inside the runner, waiting for the write
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    await store.close()
    assert outcomes == [("done", None), ("done", None)]
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in logged] == [
        "the follow-up write of an abandoned call failed"
    ] * 2
    failures = {type(r.exc_info[1]) for r in logged if r.exc_info is not None}
    assert failures == {ValidationError, RuntimeError}


async def test_concurrent_workers_cut_off_at_random_never_lose_a_received_item(
    make_store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Workers claiming batches concurrently, each claim cut off by a random tiny timeout
    (or not): every item a worker did receive stays its own (renewing and completing it
    succeed: it was never given back nor handed to another), and each item ends completed
    once, with one attempt counted."""
    caplog.set_level(logging.WARNING)
    store: StateStore = await make_store(lease_duration=LEASE)
    eid = await execution(store)
    items = [new_item(eid, "c") for _ in range(160)]
    for item in items:
        await store.enqueue_work_item(item)
    rng = random.Random(7)
    received: list[uuid.UUID] = []
    lost: list[tuple[uuid.UUID, str]] = []
    given_back = 0  # items received under a second lease: a claim cut off gave them back

    async def worker(name: str) -> None:
        nonlocal given_back
        while len(received) + len(lost) < len(items):
            delay = rng.choice([*DELAYS, None])
            claim = store.claim_work_items(name, ["c"], rng.choice([1, 2, 5]), wait=0.2)
            try:
                batch = await (claim if delay is None else asyncio.wait_for(claim, delay))
            except TimeoutError:
                continue
            for item in batch:
                given_back += item.lease_fence > 1
                received.append(item.id)
                try:
                    await store.renew_lease(item.id, name, lease_fence=item.lease_fence)
                    await store.complete_work_item(
                        item.id, worker_id=name, lease_fence=item.lease_fence
                    )
                except LeaseLostError as exc:
                    lost.append((item.id, str(exc)))

    # A hang guard only: an item left leased to nobody would keep the workers looping.
    await asyncio.wait_for(asyncio.gather(*(worker(f"w{i}") for i in range(6))), 300)
    assert lost == []
    assert given_back > 0  # the cut-offs did land inside claims that then committed
    assert sorted(received) == sorted(item.id for item in items)  # each received once
    for item in items:
        stored = await store.get_work_item(item.id)
        assert stored is not None
        assert (stored.status, stored.attempt) == ("completed", 1), stored
    no_warnings(caplog)
