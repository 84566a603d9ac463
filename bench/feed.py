"""The feed (issue 15): read throughput against the raw SELECT in the same run, append
throughput of writer processes with and without a NOTIFY per append, and how far a follower
lags behind writer processes.

    python bench/feed.py URL [--events N] [--writers W] [--seconds S] [--rounds R]

Read: ``N`` events (20,000) in 40 executions, then ``iter_feed(batch=1000)`` over all of
them against the same pages read with a raw ``SELECT … WHERE position > :last ORDER BY
position LIMIT 1000`` through ``store.engine`` (no horizon, no models), best of 3.

Append: ``W`` writer processes (8), each with its own store and execution, call
``append_event`` as fast as they can for ``S`` seconds (4); events per second of all of
them. On PostgreSQL the same again with each append also sending ``pg_notify`` inside its
statement (the wake-up per append the store does not send: docs/architecture.md, "The
feed"), the two alternating, ``R`` runs each (2), best of each.

Lag: the same writer processes for ``S`` seconds while this process follows with
``iter_feed(follow=True)``; per event, the time from the writer's acknowledged append (the
wall clock right after ``append_event`` returned, sent back with the event's id) to the
follower yielding it (one host, one clock). p50/p99 in milliseconds; on PostgreSQL also
with the NOTIFY per append.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Executable, Insert, text

from statestore import CustomEvent, Event, StateStore, WorkflowExecution
from statestore.db import queries
from statestore.db.schema import EventRow

RAW = text(
    "SELECT id, execution_id, sequence, event_type, kind, created_at, tenant_id, position"
    " FROM events WHERE position > :last ORDER BY position LIMIT 1000"
)
WARM_UP = 20
"""Appends each writer makes before the timed part (connections open, statements built)."""


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


# ---------------------------------------------------------------- writer processes


def notify_each_append() -> None:
    """The alternative the store rejected, for its measurement only: each single-event
    append also returns ``pg_notify`` on the work channel from its own statement (the
    store's one definition of the notification, ``queries._NotifyWork``), so every
    appending transaction notifies at commit."""
    plain = queries._append_one

    def notifying(expecting: bool) -> Executable:
        statement = plain(expecting)
        assert isinstance(statement, Insert)
        return statement.returning(queries._NotifyWork(EventRow.tenant_id))

    queries._append_one = notifying


def writer(url: str, seconds: float, notify: bool, ready: Any, go: Any, results: Any) -> None:
    """A writer process: warm up, say so, wait for the start, append for ``seconds``; puts
    ``(event id, wall clock right after its append returned)`` of every timed append."""
    if notify:
        notify_each_append()
    results.put(asyncio.run(_write(url, seconds, ready, go)))


async def _write(url: str, seconds: float, ready: Any, go: Any) -> list[tuple[str, float]]:
    store = await StateStore.connect(url)
    try:
        execution = WorkflowExecution(workflow_id="bench", workflow_version="1")
        await store.create_execution(execution)
        for _ in range(WARM_UP):
            await store.append_event(
                Event(execution_id=execution.execution_id, kind=CustomEvent(type="warm"))
            )
        ready.put(True)
        go.wait()
        acknowledged: list[tuple[str, float]] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            event = Event(execution_id=execution.execution_id, kind=CustomEvent(type="w"))
            await store.append_event(event)
            acknowledged.append((str(event.id), time.time()))
        return acknowledged
    finally:
        await store.close()


@dataclass
class Run:
    appended: int
    seconds: float
    lags_ms: list[float]

    @property
    def per_s(self) -> float:
        return self.appended / self.seconds


async def run_writers(
    url: str, writers: int, seconds: float, *, notify: bool, follow: StateStore | None
) -> Run:
    """``writers`` writer processes for ``seconds``; with ``follow``, a follower of that
    store in this process, and each event's lag."""
    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    processes = [
        context.Process(target=writer, args=(url, seconds, notify, ready, go, results))
        for _ in range(writers)
    ]
    for process in processes:
        process.start()
    loop = asyncio.get_running_loop()
    for _ in processes:
        await loop.run_in_executor(None, ready.get)
    yielded: dict[str, float] = {}
    follower = None
    if follow is not None:
        last = [e async for e in follow.iter_feed(batch=1000)]
        start = last[-1].position or 0 if last else 0

        async def tail() -> None:
            async for event in follow.iter_feed(after=start, follow=True):
                yielded[str(event.id)] = time.time()

        follower = asyncio.create_task(tail())
        await asyncio.sleep(0.5)  # registered, and listening on PostgreSQL
    go.set()
    acknowledged: list[tuple[str, float]] = []
    for _ in processes:
        acknowledged += await loop.run_in_executor(None, results.get)
    for process in processes:
        await loop.run_in_executor(None, process.join)
    lags: list[float] = []
    if follower is not None:
        for _ in range(300):  # the last events: at most the poll's period behind
            if all(event_id in yielded for event_id, _ in acknowledged):
                break
            await asyncio.sleep(0.01)
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        missing = [event_id for event_id, _ in acknowledged if event_id not in yielded]
        assert not missing, f"the follower missed {len(missing)} events"
        lags = [(yielded[event_id] - at) * 1000 for event_id, at in acknowledged]
    return Run(len(acknowledged), seconds, lags)


def percentiles(lags_ms: list[float]) -> str:
    cuts = statistics.quantiles(lags_ms, n=100)
    return f"p50 {cuts[49]:.1f} ms, p99 {cuts[98]:.1f} ms"


async def main(url: str, events: int, writers: int, seconds: float, rounds: int) -> None:
    store = await StateStore.open(url)
    postgresql = store.engine.dialect.name == "postgresql"
    try:
        feed, raw = await read_throughput(store, events)
        print(f"read: iter_feed {feed:,.0f} events/s, raw SELECT {raw:,.0f} events/s")

        variants = (False, True) if postgresql else (False,)
        best: dict[bool, float] = {}
        for _ in range(rounds):
            for notify in variants:
                run = await run_writers(url, writers, seconds, notify=notify, follow=None)
                best[notify] = max(best.get(notify, 0.0), run.per_s)
        print(f"append, {writers} writer processes: {best[False]:,.0f} events/s")
        if postgresql:
            ratio = best[True] / best[False]
            print(
                f"append, {writers} writer processes, NOTIFY in each append:"
                f" {best[True]:,.0f} events/s ({ratio:.2f}x)"
            )
        for notify in variants:
            run = await run_writers(url, writers, seconds, notify=notify, follow=store)
            name = ", NOTIFY in each append" if notify else ""
            print(
                f"lag, {writers} writer processes{name}: {run.appended} events,"
                f" {percentiles(run.lags_ms)}"
            )
    finally:
        await store.close()


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--events", type=int, default=20_000, help="events read (20,000)")
    parser.add_argument("--writers", type=int, default=8, help="writer processes (8)")
    parser.add_argument("--seconds", type=float, default=4.0, help="per writer run (4)")
    parser.add_argument("--rounds", type=int, default=2, help="append runs of each kind (2)")
    return parser.parse_args()


if __name__ == "__main__":
    args = arguments()
    asyncio.run(main(args.url, args.events, args.writers, args.seconds, args.rounds))
