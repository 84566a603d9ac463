"""The feed (issue 15): read throughput against the raw SELECT in the same run, and how far a
follower lags behind writers.

    python bench/feed.py URL [EVENTS]

Read: ``EVENTS`` events in 40 executions, then ``iter_feed(batch=1000)`` over all of them
against the same pages read with a raw ``SELECT … WHERE position > :last ORDER BY position
LIMIT 1000`` through ``store.engine`` (no horizon, no models), best of 3. Lag: 8 concurrent
writers (tasks of one store; on PostgreSQL each append is its own transaction on its own
connection) append for 5 s while ``iter_feed(follow=True)`` follows; per event, the time from
its ``created_at`` (stamped by the store just before the insert) to the follower receiving
it. Prints events/s and p50/p99 lag in milliseconds.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from datetime import UTC, datetime

from sqlalchemy import text

from statestore import CustomEvent, StateStore, WorkflowExecution

RAW = text(
    "SELECT id, execution_id, sequence, event_type, kind, created_at, tenant_id, position"
    " FROM events WHERE position > :last ORDER BY position LIMIT 1000"
)


async def read_throughput(store: StateStore, events: int) -> tuple[float, float]:
    per_execution = events // 40
    for _ in range(40):
        execution = WorkflowExecution(workflow_id="bench", workflow_version="1")
        await store.create_execution(execution)
        for start in range(0, per_execution, 500):
            count = min(500, per_execution - start)
            await store.append_events(
                execution.execution_id, [CustomEvent(type="tick", n=i) for i in range(count)]
            )
    total = per_execution * 40
    feed_s, raw_s = [], []
    for _ in range(3):
        started = time.perf_counter()
        seen = sum([1 async for _ in store.iter_feed(batch=1000)])
        feed_s.append(time.perf_counter() - started)
        assert seen == total, seen
        started = time.perf_counter()
        seen, last = 0, 0
        async with store.engine.connect() as connection:
            while True:
                rows = (await connection.execute(RAW, {"last": last})).all()
                if not rows:
                    break
                seen += len(rows)
                last = rows[-1].position
        raw_s.append(time.perf_counter() - started)
        assert seen == total, seen
    return total / min(feed_s), total / min(raw_s)


async def follower_lag(store: StateStore) -> list[float]:
    start = (await store.read_feed(after=0, limit=1))[0].position or 0
    async for event in store.iter_feed(after=start):
        start = event.position or start
    lags: list[float] = []
    stop = asyncio.Event()

    async def follow() -> None:
        async for event in store.iter_feed(after=start, follow=True):
            lags.append((datetime.now(UTC) - event.created_at).total_seconds() * 1000)
            if stop.is_set() and event.kind.type == "last":
                return

    async def write() -> None:
        execution = WorkflowExecution(workflow_id="bench", workflow_version="1")
        await store.create_execution(execution)
        while not stop.is_set():
            await store.append_events(execution.execution_id, [CustomEvent(type="w")])

    follower = asyncio.create_task(follow())
    writers = [asyncio.create_task(write()) for _ in range(8)]
    await asyncio.sleep(5)
    stop.set()
    await asyncio.gather(*writers)
    last = WorkflowExecution(workflow_id="bench", workflow_version="1")
    await store.create_execution(last)
    await store.append_events(last.execution_id, [CustomEvent(type="last")])
    await asyncio.wait_for(follower, 30)
    return lags


async def main(url: str, events: int) -> None:
    store = await StateStore.open(url)
    try:
        feed, raw = await read_throughput(store, events)
        print(f"read: iter_feed {feed:,.0f} events/s, raw SELECT {raw:,.0f} events/s")
        lags = await follower_lag(store)
        cuts = statistics.quantiles(lags, n=100)
        print(f"lag, 8 writers: {len(lags)} events, p50 {cuts[49]:.1f} ms, p99 {cuts[98]:.1f} ms")
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 20_000))
