"""Enqueue-to-claim latency of a claim waiting with ``wait=`` (issue 14), and the load idle
waiters put on the database.

    python bench/wakeup.py URL [ROUNDS]

In-process: a claim waits in the same process as the enqueue; the time from just before
``enqueue_work_item`` to the waiter's return. Cross-process: a child process waits in a
loop; the time from the enqueue's return in this process to the child's claim (wall clocks
of one host). Prints p50/p99 in milliseconds.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
import uuid

from statestore import StateStore, WorkflowExecution, WorkItem

CHILD = """
import asyncio, sys, time
from statestore import StateStore
async def main(url, rounds):
    store = await StateStore.connect(url)
    print("ready", flush=True)
    for _ in range(rounds):
        item = await store.claim_work_item("child", ["bench"], wait=30)
        print(time.time(), flush=True)
    await store.close()
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def summary(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"{name}: p50 {statistics.median(ms):.2f} ms, p99 {p99:.2f} ms ({len(ms)} rounds)"


async def main(url: str, rounds: int) -> None:
    store = await StateStore.open(url)
    run = WorkflowExecution(workflow_id="bench", workflow_version="1")
    await store.create_execution(run)

    def item() -> WorkItem:
        return WorkItem(execution_id=run.execution_id, node_id=uuid.uuid4().hex, queue_type="bench")

    local = []
    for _ in range(rounds):
        waiter = asyncio.create_task(store.claim_work_item("w", ["bench"], wait=30))
        await asyncio.sleep(0.02)
        start = time.perf_counter()
        await store.enqueue_work_item(item())
        assert await waiter is not None
        local.append(time.perf_counter() - start)
    print(summary("in-process", local))

    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, url, str(rounds), stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    assert (await child.stdout.readline()).strip() == b"ready"
    await asyncio.sleep(0.5)
    remote = []
    for _ in range(rounds):
        await store.enqueue_work_item(item())
        committed = time.time()
        claimed = float((await child.stdout.readline()).decode())
        remote.append(claimed - committed)
        # A random gap: a fixed one would lock the enqueues to the SQLite check's period.
        await asyncio.sleep(random.uniform(0.01, 0.06))
    await child.wait()
    print(summary("cross-process", remote))
    await idle_load(store, url)
    await store.close()


async def idle_load(store: StateStore, url: str, waiters: int = 16, seconds: float = 3.0) -> None:
    """Transactions per second the database sees while ``waiters`` claims wait idle
    (PostgreSQL: ``pg_stat_database.xact_commit`` of this database, read before and after
    from a separate connection, minus that connection's own two reads)."""
    tasks = [
        asyncio.create_task(store.claim_work_item(f"idle-{n}", ["idle"], wait=60))
        for n in range(waiters)
    ]
    await asyncio.sleep(1.0)  # every waiter past its first claim and due-time read
    if store.dialect == "postgresql":
        import asyncpg
        from sqlalchemy.engine import make_url

        dsn = make_url(url).set(drivername="postgresql").render_as_string(False)
        admin = await asyncpg.connect(dsn)
        query = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        before = await admin.fetchval(query)
        await asyncio.sleep(seconds)
        await admin.execute("SELECT pg_stat_clear_snapshot()")
        after = await admin.fetchval(query)
        await admin.close()
        rate = max(0, after - before - 2) / seconds
        print(f"idle load, {waiters} waiting claims: {rate:.1f} transactions/s")
    else:
        print(
            f"idle load, {waiters} waiting claims: one PRAGMA data_version per 25 ms per "
            "store (none per waiter), no transactions"
        )
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 100))
