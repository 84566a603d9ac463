"""The demo: a realistic durable-workflow run against the store (``statestore demo``).

A tenant and a token are created, a workflow is registered, and a few hundred executions
start, each with one ``start_execution`` (the execution, its first events and its first work
item in one transaction, idempotent by key). Each execution is a chain of nodes; each node is
a work item and one step: a worker claims it, works under a ``heartbeat`` that keeps the
lease, and records the step with ONE ``commit_turn`` (settle the item, append the node's
events, patch the state, enqueue the next node, and for the last node complete the execution
with a materialized snapshot). One worker is killed mid-lease: its item comes back through
reclaim and its step runs again, recorded once. A poison item, whose worker dies every time
it takes it, ends in the dead-letter queue. Idle workers wait in ``claim_work_item(...,
wait=...)``, woken by the database; ``run_maintenance`` reclaims expired leases, and the
demo learns that the poison item was dead-lettered from maintenance's own report of what it
reclaimed (its log record), not by polling the dead-letter queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta

from statestore.errors import LeaseLostError
from statestore.event_kinds import (
    NodeCompleted,
    NodeScheduled,
    NodeStarted,
    WorkflowCompleted,
    WorkflowStarted,
)
from statestore.models import (
    Tenant,
    WorkflowDefinition,
    WorkflowExecution,
    WorkflowStatus,
    WorkItem,
    WorkItemStatus,
)
from statestore.store import StateStore

NODES = ("fetch", "parse", "enrich", "store")
QUEUE = "demo"
DEMO_LEASE = timedelta(seconds=2)
"""Open the demo's store with this ``lease_duration``, so a dead worker's items come back in
seconds rather than the default 30 s."""
POISON_ATTEMPTS = 2
CLAIM_WAIT = timedelta(seconds=1)
"""How long an idle demo worker's claim waits for work before it claims again."""
MAINTENANCE_EVERY = timedelta(seconds=0.25)
"""The demo's maintenance interval (short: its leases are short)."""


@dataclass
class DemoResult:
    """What the demo did; the CLI prints it and the tests check it against the database."""

    tenant_id: str
    workflow_id: str
    executions_started: int = 0
    executions_completed: int = 0
    events_written: int = 0
    items_completed: int = 0
    retries: int = 0
    dead_letters: int = 0
    killed_worker_items: int = 0
    seconds: float = 0.0
    work_seconds: float = 0.0
    """Time until the last execution completed (the poison item's lease may run longer)."""
    execution_ids: list[str] = field(default_factory=list)
    poison_item_id: str = ""

    @property
    def throughput(self) -> float:
        """Steps (work items, one ``commit_turn`` each) per second while executions were
        running."""
        elapsed = self.work_seconds or self.seconds
        return self.items_completed / elapsed if elapsed else 0.0


class _Killed(Exception):
    """Raised inside a worker to simulate a crash mid-lease."""


async def run_demo(
    store: StateStore,
    *,
    executions: int = 200,
    workers: int = 4,
    progress: Callable[[int, int], None] | None = None,
    give_up_after: float = 300.0,
) -> DemoResult:
    """Run the demo on an open, migrated store; ``progress(done, total)`` is called as
    executions complete. Raises ``TimeoutError`` if not finished after ``give_up_after`` seconds."""
    started = time.perf_counter()
    tenant_id = f"demo-{uuid.uuid4().hex[:8]}"
    await store.create_tenant(Tenant(id=tenant_id, name="Demo tenant"))
    scoped = store.for_tenant(tenant_id)
    token, _ = await scoped.create_token("demo-worker", "operator")
    principal = await store.validate_token(token)
    assert principal is not None and principal.tenant_id == tenant_id
    tenant_store = store.for_tenant(principal.tenant_id)  # as a server would, from the token

    workflow = WorkflowDefinition(
        workflow_id="ingest-document",
        version="1",
        ir={"nodes": list(NODES), "edges": [list(e) for e in itertools.pairwise(NODES)]},
    )
    await tenant_store.store_workflow(workflow)
    result = DemoResult(tenant_id=tenant_id, workflow_id=workflow.workflow_id)

    for number in range(executions):
        execution = WorkflowExecution(
            workflow_id=workflow.workflow_id,
            workflow_version=workflow.version,
            status=WorkflowStatus.RUNNING,
            initial_input={"document": uuid.uuid4().hex},
        )
        first = _node_item(execution.execution_id, 0)
        await tenant_store.start_execution(
            execution,
            events=[
                WorkflowStarted(
                    workflow_id=workflow.workflow_id,
                    workflow_version=workflow.version,
                    initial_input=execution.initial_input,
                ),
                NodeScheduled(node_id=first.node_id, queue_type=QUEUE),
            ],
            enqueue=[first],
            idempotency_key=f"{tenant_id}:{number}",
        )
        result.execution_ids.append(str(execution.execution_id))
    result.executions_started = executions

    # The poison item belongs to an execution of its own that never finishes, so the
    # terminal-status settle cannot retire it before reclaim dead-letters it.
    poison_execution = WorkflowExecution(
        workflow_id=workflow.workflow_id, workflow_version=workflow.version
    )
    await tenant_store.create_execution(poison_execution)
    poison = WorkItem(
        execution_id=poison_execution.execution_id,
        node_id="poison",
        queue_type=QUEUE,
        payload={"poison": True},
        max_attempts=POISON_ATTEMPTS,
        priority=10,
    )
    await tenant_store.enqueue_work_item(poison)
    result.poison_item_id = str(poison.id)

    work_started = time.perf_counter()
    done = asyncio.Event()
    state = _RunState(total=executions, progress=progress, done=done)
    # Built-in maintenance reclaims the leases the dead worker and the poison item leave.
    maintenance = asyncio.create_task(tenant_store.run_maintenance(every=MAINTENANCE_EVERY))
    crew = [
        asyncio.create_task(
            # With two or more workers, worker-0 dies holding a lease after five items.
            _worker(
                tenant_store, f"worker-{n}", state, kill_after=5 if n == 0 < workers - 1 else None
            )
        )
        for n in range(workers)
    ]
    try:
        with _hearing_dead_letters(poison.id, state.poison_dead_lettered):
            await asyncio.wait_for(done.wait(), timeout=give_up_after)
    finally:
        for task in (*crew, maintenance):
            task.cancel()
        for task in (*crew, maintenance):
            with contextlib.suppress(asyncio.CancelledError, _Killed):
                await task
    await tenant_store.update_execution_status(poison_execution.execution_id, WorkflowStatus.FAILED)

    result.executions_completed = state.completed
    result.items_completed = state.items_completed
    result.retries = state.retries
    result.killed_worker_items = state.killed_items
    result.dead_letters = len(await tenant_store.list_dead_letters(limit=1000))
    result.events_written = sum(
        [await tenant_store.latest_sequence(eid) for eid in result.execution_ids]
    )
    result.seconds = time.perf_counter() - started
    result.work_seconds = (state.finished_at or time.perf_counter()) - work_started
    return result


@dataclass
class _RunState:
    total: int
    progress: Callable[[int, int], None] | None
    done: asyncio.Event
    completed: int = 0
    finished_at: float = 0.0
    items_completed: int = 0
    retries: int = 0
    killed_items: int = 0
    poison_dead: bool = False

    def execution_done(self) -> None:
        self.completed += 1
        if self.completed == self.total:
            self.finished_at = time.perf_counter()
        if self.progress is not None:
            self.progress(self.completed, self.total)
        self.check_done()

    def poison_dead_lettered(self) -> None:
        self.poison_dead = True
        self.check_done()

    def check_done(self) -> None:
        if self.completed >= self.total and self.poison_dead:
            self.done.set()


def _node_item(execution_id: uuid.UUID, index: int) -> WorkItem:
    return WorkItem(
        execution_id=execution_id, node_id=NODES[index], queue_type=QUEUE, payload={"step": index}
    )


async def _worker(
    store: StateStore, name: str, state: _RunState, *, kill_after: int | None
) -> None:
    """Claim, heartbeat, record, complete; ``kill_after`` items, die holding a lease."""
    handled = 0
    while True:
        # Waits for work, woken by the database (no sleep-and-retry loop).
        item = await store.claim_work_item(name, [QUEUE], wait=CLAIM_WAIT)
        if item is None:
            continue
        payload = item.payload if isinstance(item.payload, dict) else {}
        if payload.get("poison") or (kill_after is not None and handled >= kill_after):
            # The process running this item dies: no complete, no fail; the lease runs out.
            if not payload.get("poison"):
                state.killed_items += 1
                raise _Killed(name)
            continue
        handled += 1
        await _run_node(store, name, item, state)


async def _run_node(store: StateStore, worker: str, item: WorkItem, state: _RunState) -> None:
    """One step: the work under a heartbeat, then one commit_turn that records all of it."""
    eid = item.execution_id
    if item.attempt > 1:
        state.retries += 1
    index = NODES.index(item.node_id)
    last = index + 1 == len(NODES)
    output = {"ok": True, "attempt": item.attempt}
    events = [
        NodeStarted(node_id=item.node_id, worker_id=worker, attempt=item.attempt),
        NodeCompleted(
            node_id=item.node_id,
            output=output,
            state_patch={item.node_id: "done"},
            duration_ms=1,
        ),
    ]
    try:
        async with store.heartbeat(item, worker_id=worker):
            await asyncio.sleep(0)  # the node's work would run here
        if last:
            execution = await store.get_execution(eid)
            current = execution.current_state if execution else None
            final = {**(current if isinstance(current, dict) else {}), item.node_id: "done"}
            events.append(WorkflowCompleted(final_state=final))
        else:
            events.append(NodeScheduled(node_id=NODES[index + 1], queue_type=QUEUE))
        await store.commit_turn(
            item.id,
            worker_id=worker,
            lease_fence=item.lease_fence,
            events=events,
            state_patch={item.node_id: "done"},
            enqueue=[] if last else [_node_item(eid, index + 1)],
            status=WorkflowStatus.COMPLETED if last else None,
            snapshot=last,
            effect_key=f"{eid}:{item.node_id}",
            effect=output,
        )
    except LeaseLostError:
        return  # someone else owns it now: its turn records the step
    state.items_completed += 1
    if last:
        state.execution_done()


class _DeadLetterReport(logging.Handler):
    """Hears maintenance report what it reclaimed (the ``reclaimed`` of its log record) and
    calls ``heard`` once ``item_id`` is among the items it dead-lettered."""

    def __init__(self, item_id: uuid.UUID, heard: Callable[[], None]) -> None:
        super().__init__(logging.INFO)
        self._item_id = item_id
        self._heard = heard

    def emit(self, record: logging.LogRecord) -> None:
        reclaimed = getattr(record, "reclaimed", None)
        exhausted = getattr(reclaimed, "exhausted", ())
        if any(item.id == self._item_id for item in exhausted):
            self._heard()  # maintenance runs on the demo's loop: this is its thread


@contextlib.contextmanager
def _hearing_dead_letters(item_id: uuid.UUID, heard: Callable[[], None]) -> Iterator[None]:
    """For the block, ``heard()`` when maintenance dead-letters ``item_id`` (the store's
    logger lets its INFO records through meanwhile, if it did not)."""
    logger = logging.getLogger("statestore")
    level = logger.level
    if not logger.isEnabledFor(logging.INFO):
        logger.setLevel(logging.INFO)
    handler = _DeadLetterReport(item_id, heard)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def queue_is_settled(stats: dict[str, dict[WorkItemStatus, int]]) -> bool:
    """No item of the demo queue is pending or claimed."""
    counts = stats.get(QUEUE, {})
    return counts.get(WorkItemStatus.PENDING, 0) == 0 and counts.get(WorkItemStatus.CLAIMED, 0) == 0
