"""Scale benchmark: hot paths on small tables and on tables of a million rows, and memory
while appending and streaming a million events.

Two measurements per database (SQLite temporary file, PostgreSQL scratch database):

1. **Latency at scale.** ``claim_work_item`` and ``append_event`` p50/p99 through the store's
   public facade, first with ``--small`` (default 1,000) finished work items and events in the
   tables, then again after bulk-loading up to ``--rows`` (default 1,000,000) of each. The
   finished items sit in the same queue as the pending ones: only the partial claim index
   ``(queue_type, priority DESC, created_at) WHERE status = 'pending'`` keeps claims from
   walking them. The plan of the store's own claim statement is printed beside the figures.
2. **Memory.** Resident set size (``VmRSS``) sampled while ``append_events`` writes ``--rows``
   events (batches of 1,000) to one execution, and while ``iter_events`` streams them back.

The bulk load uses the database's own row generators (untimed); timed calls go through the
store. Results print as Markdown; ``--write`` puts them in docs/benchmarks.md between the
``<!-- scale -->`` markers (replacing an earlier scale section, keeping the rest).

Usage::

    .venv/bin/python bench/scale.py [--rows 1000000] [--small 1000] [--only sqlite|postgresql]
                                    [--write [docs/benchmarks.md]] [--pg-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import (
    KIND,
    SCALE_BEGIN,
    SCALE_END,
    dumps,
    pg_admin,
    progress,
    scale_block,
    with_database,
    write_document,
)
from sqlalchemy import event, text

from statestore import Event, StateStore, WorkflowDefinition, WorkflowExecution, WorkItem

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
SCRATCH_DB = "statestore_bench_scale"
QUEUE = "scale"
KIND_TEXT = dumps(KIND.to_json_dict())
PAYLOAD = {"node": "summarise", "input": {"url": "https://example.com/q3"}}
SAMPLES = 400  # timed calls per operation and table size
APPEND_BATCH = 1000


def rss_mib() -> float:
    """This process's resident set size now (not the high-water mark), in MiB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------------------ bulk load


async def bulk_load(store: StateStore, execution_id: uuid.UUID, items: int, events: int) -> None:
    """Add ``items`` completed work items to the claim queue and ``events`` events to
    ``execution_id``, in the database's own loops (untimed set-up, not the store's API)."""
    dialect = store.dialect
    chunk = 200_000
    for start in range(0, max(items, events), chunk):
        n_items = max(0, min(chunk, items - start))
        n_events = max(0, min(chunk, events - start))
        statements = FILL[dialect]
        params = {
            "execution": execution_id.hex if dialect == "sqlite" else execution_id,
            "queue": QUEUE,
            "payload": json.dumps(PAYLOAD),
            "kind": KIND_TEXT,
            "now": NOW[dialect],
            "items": n_items,
            "events": n_events,
        }

        def load(session: Any, statements: Sequence[str] = statements, p: Any = params) -> None:
            for statement in statements:
                session.execute(text(statement), p)

        await store.run(load)


NOW = {"sqlite": "2026-01-01 00:00:00.000000", "postgresql": datetime(2026, 1, 1, tzinfo=UTC)}
_SQLITE_SERIES = (
    "WITH RECURSIVE n(i) AS (SELECT 1 WHERE :{0} > 0 UNION ALL SELECT i + 1 FROM n WHERE i < :{0})"
)
FILL = {
    "sqlite": [
        _SQLITE_SERIES.format("items")
        + " INSERT INTO work_items (id, execution_id, node_id, queue_type, payload, status,"
        " priority, attempt, max_attempts, available_at, lease_fence, created_at, updated_at,"
        " tenant_id) SELECT lower(hex(randomblob(16))), :execution, 'done', :queue, :payload,"
        " 'completed', 0, 1, 3, :now, 1, :now, :now, 'default' FROM n",
        "UPDATE workflow_executions SET last_sequence = last_sequence + :events"
        " WHERE id = :execution",
        _SQLITE_SERIES.format("events")
        + " INSERT INTO events (id, execution_id, sequence, event_type, kind, created_at,"
        " tenant_id) SELECT lower(hex(randomblob(16))), :execution,"
        " (SELECT last_sequence FROM workflow_executions WHERE id = :execution) - :events + i,"
        " 'node_completed', :kind, :now, 'default' FROM n",
    ],
    "postgresql": [
        "INSERT INTO work_items (id, execution_id, node_id, queue_type, payload, status,"
        " priority, attempt, max_attempts, available_at, lease_fence, created_at, updated_at,"
        " tenant_id) SELECT gen_random_uuid(), :execution, 'done', :queue, CAST(:payload AS"
        " jsonb), 'completed', 0, 1, 3, :now, 1, :now, :now, 'default'"
        " FROM generate_series(1, :items)",
        "UPDATE workflow_executions SET last_sequence = last_sequence + :events"
        " WHERE id = :execution",
        "INSERT INTO events (id, execution_id, sequence, event_type, kind, created_at,"
        " tenant_id) SELECT gen_random_uuid(), :execution,"
        " (SELECT last_sequence FROM workflow_executions WHERE id = :execution) - :events + i,"
        " 'node_completed', CAST(:kind AS jsonb), :now, 'default'"
        " FROM generate_series(1, :events) AS i",
        "ANALYZE work_items",
        "ANALYZE events",
    ],
}


# ------------------------------------------------------------------------------ latency


@dataclass
class Latency:
    """p50/p99 of one operation at one table size."""

    operation: str
    rows: int
    latencies_us: list[float] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_us)

    @property
    def p99(self) -> float:
        ordered = sorted(self.latencies_us)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def timed(calls: int, op: Callable[[], Awaitable[object]]) -> list[float]:
    for _ in range(20):  # warm-up
        await op()
    latencies = []
    for _ in range(calls):
        started = time.perf_counter_ns()
        await op()
        latencies.append((time.perf_counter_ns() - started) / 1000)
    return latencies


async def measure_latency(store: StateStore, rows: int, seeded: Seeded) -> list[Latency]:
    """claim_work_item (then complete, untimed) and append_event, SAMPLES calls each."""
    for _ in range(SAMPLES + 40):
        await store.enqueue_work_item(
            WorkItem(
                execution_id=seeded.execution_id, node_id="n", queue_type=QUEUE, payload=PAYLOAD
            )
        )

    async def claim() -> None:
        item = await store.claim_work_item("scale-worker", [QUEUE])
        assert item is not None, "the queue ran dry"
        seeded.claimed.append(item)

    claims = await timed(SAMPLES, claim)
    await store.complete_work_items(seeded.claimed)
    seeded.claimed.clear()

    async def append() -> None:
        await store.append_event(Event(execution_id=seeded.append_to, kind=KIND))

    appends = await timed(SAMPLES, append)
    return [Latency("claim_work_item", rows, claims), Latency("append_event", rows, appends)]


@dataclass
class Seeded:
    execution_id: uuid.UUID
    """Holds the bulk-loaded items and events."""
    append_to: uuid.UUID
    """The execution the timed appends go to."""
    claimed: list[WorkItem] = field(default_factory=list)


async def claim_plan(store: StateStore) -> str:
    """The plan of the store's claim statement, captured as the store sends it."""

    def explain(session: Any) -> str:
        captured: list[tuple[str, Any]] = []
        connection = session.connection()

        def capture(_c: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
            captured.append((statement, params))

        event.listen(connection, "before_cursor_execute", capture)
        try:
            store.queue.claim(session, "plan", [QUEUE], 1)
        finally:
            event.remove(connection, "before_cursor_execute", capture)
        statement, params = next((s, p) for s, p in captured if "eligible" in s)
        if store.dialect == "sqlite":
            driver = connection.connection.driver_connection
            plan = driver.execute("EXPLAIN QUERY PLAN " + statement, params).fetchall()
            return "; ".join(str(row[-1]) for row in plan)
        result = connection.exec_driver_sql("EXPLAIN " + statement, params)
        return "; ".join(str(row[0]).strip() for row in result)

    # The explained claim really runs: it leases one of the spare pending items.
    return await store.run(explain)


# ------------------------------------------------------------------------------ memory


@dataclass
class MemoryRun:
    phase: str
    samples: list[tuple[int, float]] = field(default_factory=list)  # (events so far, MiB)
    seconds: float = 0.0

    @property
    def growth(self) -> float:
        """RSS change from the first sample after warm-up to the last, MiB."""
        settled = self.samples[1:] or self.samples
        return settled[-1][1] - settled[0][1]


async def measure_memory(store: StateStore, rows: int) -> list[MemoryRun]:
    execution = WorkflowExecution(workflow_id="wf", workflow_version="1")
    await store.create_execution(execution)
    every = max(APPEND_BATCH, rows // 10)
    append = MemoryRun("append_events")
    started = time.perf_counter()
    append.samples.append((0, rss_mib()))
    written = 0
    while written < rows:
        count = min(APPEND_BATCH, rows - written)
        await store.append_events(execution.execution_id, [KIND] * count)
        written += count
        if written % every == 0 or written == rows:
            append.samples.append((written, rss_mib()))
            progress(f"  appended {written:,} events, RSS {append.samples[-1][1]:.0f} MiB")
    append.seconds = time.perf_counter() - started

    stream = MemoryRun("iter_events")
    started = time.perf_counter()
    stream.samples.append((0, rss_mib()))
    seen = 0
    async for streamed in store.iter_events(execution.execution_id, batch=1000):
        seen += 1
        assert streamed.sequence == seen, "iter_events skipped or repeated an event"
        if seen % every == 0:
            stream.samples.append((seen, rss_mib()))
            progress(f"  streamed {seen:,} events, RSS {stream.samples[-1][1]:.0f} MiB")
    stream.seconds = time.perf_counter() - started
    assert seen == rows, f"iter_events returned {seen} events, expected {rows}"
    return [append, stream]


# ------------------------------------------------------------------------------ driver


@dataclass
class BackendResult:
    backend: str
    latencies: list[Latency]
    plan: str
    memory: list[MemoryRun]


async def bench_backend(url: str, backend: str, rows: int, small: int) -> BackendResult:
    async with await StateStore.open(url) as store:
        await store.store_workflow(WorkflowDefinition(workflow_id="wf", version="1", ir={}))
        bulk = WorkflowExecution(workflow_id="wf", workflow_version="1")
        target = WorkflowExecution(workflow_id="wf", workflow_version="1")
        await store.create_execution(bulk)
        await store.create_execution(target)
        seeded = Seeded(bulk.execution_id, target.execution_id)
        progress(f"{backend}: {small:,} finished items and events")
        await bulk_load(store, bulk.execution_id, small, small)
        latencies = await measure_latency(store, small, seeded)
        progress(f"{backend}: loading up to {rows:,} finished items and events")
        await bulk_load(store, bulk.execution_id, rows - small, rows - small)
        latencies += await measure_latency(store, rows, seeded)
        plan = await claim_plan(store)
        progress(f"{backend}: memory while appending and streaming {rows:,} events")
        memory = await measure_memory(store, rows)
    return BackendResult(backend, latencies, plan, memory)


async def scratch_postgres(admin_url: str) -> str:
    await pg_admin(
        admin_url,
        f"DROP DATABASE IF EXISTS {SCRATCH_DB} WITH (FORCE)",
        f"CREATE DATABASE {SCRATCH_DB}",
    )
    return with_database(admin_url, SCRATCH_DB)


async def drop_postgres(admin_url: str) -> None:
    await pg_admin(admin_url, f"DROP DATABASE IF EXISTS {SCRATCH_DB} WITH (FORCE)")


async def run(args: argparse.Namespace) -> list[BackendResult]:
    results = []
    if args.only in (None, "sqlite"):
        with tempfile.TemporaryDirectory(prefix="statestore-scale-") as folder:
            url = f"sqlite:///{Path(folder) / 'scale.db'}"
            results.append(await bench_backend(url, "sqlite", args.rows, args.small))
    if args.only in (None, "postgresql"):
        url = await scratch_postgres(args.pg_url)
        try:
            results.append(await bench_backend(url, "postgresql", args.rows, args.small))
        finally:
            await drop_postgres(args.pg_url)
    return results


# ------------------------------------------------------------------------------ report


def markdown(results: Sequence[BackendResult], args: argparse.Namespace) -> str:
    command = " ".join(["bench/scale.py", *sys.argv[1:]])
    lines = [
        "## Scale",
        "",
        f"- Command: `.venv/bin/python {command}`",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Latency through the store with {args.small:,} finished work items and events in the"
        f" tables, then with {args.rows:,}; {SAMPLES} calls each (target: p50 within 1.5x).",
        "",
        "| backend | operation | p50 µs small | p50 µs large | p50 ratio | p99 µs small |"
        " p99 µs large |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        by_key = {(lat.operation, lat.rows): lat for lat in result.latencies}
        for operation in ("claim_work_item", "append_event"):
            small, large = by_key[(operation, args.small)], by_key[(operation, args.rows)]
            lines.append(
                f"| {result.backend} | {operation} | {small.p50:,.0f} | {large.p50:,.0f} |"
                f" {large.p50 / small.p50:.2f} | {small.p99:,.0f} | {large.p99:,.0f} |"
            )
    lines += [
        "",
        "The claim statement's plan with the large tables (the partial index at work):",
        "",
    ]
    for result in results:
        lines.append(f"- {result.backend}: `{result.plan}`")
    lines += [
        "",
        f"Resident memory (VmRSS) of the benchmark process while `append_events` writes"
        f" {args.rows:,} events to one execution in batches of {APPEND_BATCH:,}, then"
        f" `iter_events` streams them back (batch 1,000):",
        "",
        "| backend | phase | events | seconds | RSS MiB at start | RSS MiB at end |"
        " growth after the first sample |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        for run_ in result.memory:
            lines.append(
                f"| {result.backend} | {run_.phase} | {run_.samples[-1][0]:,} |"
                f" {run_.seconds:,.1f} | {run_.samples[0][1]:,.0f} | {run_.samples[-1][1]:,.0f} |"
                f" {run_.growth:+,.1f} MiB |"
            )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="large table size")
    parser.add_argument("--small", type=int, default=1_000, help="small table size")
    parser.add_argument("--only", choices=("sqlite", "postgresql"))
    parser.add_argument("--write", nargs="?", const="docs/benchmarks.md", metavar="PATH")
    parser.add_argument("--pg-url", default=DEFAULT_PG_ADMIN_URL)
    args = parser.parse_args(argv)
    if not 0 < args.small < args.rows:
        parser.error("need 0 < --small < --rows")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = asyncio.run(run(args))
    section = markdown(results, args)
    print(section)
    if args.write:
        target = REPO / args.write
        existing = target.read_text(encoding="utf-8") if target.exists() else ""
        rest = existing.replace(scale_block(existing), "")
        write_document(target, rest, scale=f"{SCALE_BEGIN}\n{section}{SCALE_END}\n")
        progress(f"wrote the scale section of {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
