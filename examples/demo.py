"""A short tour of statestore on the embedded default (./statestore.db, or
$STATESTORE_DATABASE_URL): every aggregate the store has today, end to end.

Run it with `make demo`. It is safe to run repeatedly: every run makes new objects.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from statestore import (
    Event,
    NodeCompleted,
    NodeStarted,
    Snapshot,
    StateStore,
    Tenant,
    WorkflowCompleted,
    WorkflowDefinition,
    WorkflowExecution,
    WorkflowStarted,
    WorkflowStatus,
)

EXECUTIONS = 50
NODES = ("fetch", "summarise", "publish")


async def run_execution(store: StateStore, workflow: WorkflowDefinition) -> int:
    execution = WorkflowExecution(
        workflow_id=workflow.workflow_id,
        workflow_version=workflow.version,
        initial_input={"url": f"https://example.com/{uuid.uuid4().hex[:8]}"},
    )
    await store.create_execution(execution)
    eid = execution.execution_id
    await store.append_event(
        Event(
            execution_id=eid,
            kind=WorkflowStarted(
                workflow_id=workflow.workflow_id,
                workflow_version=workflow.version,
                initial_input=execution.initial_input,
            ),
        )
    )
    await store.update_execution_status(eid, WorkflowStatus.RUNNING)
    for attempt, node in enumerate(NODES, start=1):
        await store.append_events(
            eid,
            [
                NodeStarted(node_id=node, worker_id="demo-worker", attempt=attempt),
                NodeCompleted(
                    node_id=node, output={"ok": True}, state_patch={node: "done"}, duration_ms=3
                ),
            ],
        )
        await store.patch_append_array(eid, "completed_nodes", node)
    state = {"completed_nodes": list(NODES)}
    latest = await store.latest_sequence(eid)
    await store.write_snapshot(Snapshot(execution_id=eid, at_sequence=latest, state=state))
    await store.append_event(Event(execution_id=eid, kind=WorkflowCompleted(final_state=state)))
    await store.update_execution_status(eid, WorkflowStatus.COMPLETED, expected="running")
    return len(await store.get_events(eid))


async def main() -> None:
    started = time.perf_counter()
    async with await StateStore.open() as store:
        print(f"store: {store.url}")
        tenant_id = f"demo-{uuid.uuid4().hex[:8]}"
        await store.create_tenant(Tenant(id=tenant_id, name="Demo tenant"))
        scoped = store.for_tenant(tenant_id)

        workflow = WorkflowDefinition(
            workflow_id="summarise-page",
            version="1",
            ir={"nodes": list(NODES), "edges": [["fetch", "summarise"], ["summarise", "publish"]]},
        )
        await scoped.store_workflow(workflow)

        counts = await asyncio.gather(*(run_execution(scoped, workflow) for _ in range(EXECUTIONS)))

        completed = await scoped.list_executions(status="completed", limit=1000)
        sample = completed[0]
        snapshot = await scoped.latest_snapshot(sample.execution_id)
        elapsed = time.perf_counter() - started
        print(f"tenant {tenant_id}: {len(completed)} executions completed")
        print(f"events written: {sum(counts)} (each execution's sequences 1..{counts[0]})")
        print(f"sample execution {sample.execution_id}: state {sample.current_state}")
        print(f"its latest snapshot covers events 1..{snapshot.at_sequence if snapshot else 0}")
        print(f"other tenants see it: {await store.for_tenant('default').get_execution(sample.execution_id)}")
        print(f"tenants: {[t.id for t in await store.list_tenants()][:5]} …")
        print(f"done in {elapsed:.2f} s")


if __name__ == "__main__":
    asyncio.run(main())
