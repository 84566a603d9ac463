"""What PgBouncer in transaction pooling mode costs the store, one caller (issue 16).

    python bench/pgbouncer.py [URL] [CALLS]

Starts Debian's ``pgbouncer`` (as the tests do: ``tests/pgbouncer_server.py``, transaction
pooling, here 4 server connections) in front of a fresh database on the server of ``URL``
(default ``$STATESTORE_BENCH_PG_URL`` or ``postgresql://postgres@127.0.0.1:5432/test``), and
times one caller's ``append_event``, ``claim_work_item`` + ``complete_work_item`` and
``get_execution`` in three set-ups:

- direct: the store on the server, prepared-statement caches on (the default);
- direct, no caches: the same URL with both caches off, as ``?pgbouncer=true`` sets them,
  which separates the cost of unprepared statements from the cost of the extra hop;
- PgBouncer: ``?pgbouncer=true`` through the pooler (``direct_url`` for the session
  connections, unused here).

And the raw driver's point read (``asyncpg.fetchrow`` of one execution row) direct and
through PgBouncer, for the hop alone. Each set-up runs ``CALLS`` calls per operation (after
a tenth as many warm-ups) in each of 5 rounds, set-ups alternating; the figure is the
median of the rounds' p50 latencies. Prints a Markdown table and the ratios to direct.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from statestore import Event, StateStore, WorkflowExecution, WorkItem

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from common import KIND, pg_admin, with_database
from pgbouncer_server import executable, pgbouncer

DEFAULT_URL = os.environ.get("STATESTORE_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
DATABASE = f"statestore_bench_pgbouncer_{os.getpid()}"
ROUNDS = 5
SETUPS = ("direct", "direct, no caches", "PgBouncer")
OPERATIONS = ("append_event", "claim + complete", "get_execution", "raw point read")
NO_CACHES = {"connect_args": {"statement_cache_size": 0, "prepared_statement_cache_size": 0}}


async def p50_us(op: Callable[[], Awaitable[object]], calls: int) -> float:
    """The median latency of ``calls`` calls of ``op`` in µs, after ``calls // 10`` warm-ups."""
    for _ in range(calls // 10):
        await op()
    latencies = []
    clock = time.perf_counter_ns
    for _ in range(calls):
        before = clock()
        await op()
        latencies.append(clock() - before)
    return statistics.median(latencies) / 1000


async def store_cells(url: str, options: dict[str, Any], calls: int) -> dict[str, float]:
    """The store's three operations on a store of its own."""
    store = await StateStore.connect(url, **options)
    try:
        run = WorkflowExecution(workflow_id="bench", workflow_version="1")
        await store.create_execution(run)
        eid = run.execution_id

        async def append() -> None:
            await store.append_event(Event(execution_id=eid, kind=KIND))

        figures = {"append_event": await p50_us(append, calls)}
        queue = uuid.uuid4().hex  # this cell's own queue: no items left by another one
        for n in range(calls + calls // 10):
            item = WorkItem(execution_id=eid, node_id=str(n), queue_type=queue)
            await store.enqueue_work_item(item)

        async def claim_and_complete() -> None:
            item = await store.claim_work_item("bench", [queue])
            assert item is not None
            await store.complete_work_item(item.id, worker_id="bench", lease_fence=item.lease_fence)

        figures["claim + complete"] = await p50_us(claim_and_complete, calls)
        figures["get_execution"] = await p50_us(lambda: store.get_execution(eid), calls)
        return figures
    finally:
        await store.close()


async def raw_cell(dsn: str, calls: int, **connect: Any) -> float:
    """asyncpg's point read of one execution row."""
    connection = await asyncpg.connect(dsn, **connect)
    try:
        eid = await connection.fetchval("SELECT id FROM workflow_executions LIMIT 1")
        query = "SELECT * FROM workflow_executions WHERE id = $1"
        return await p50_us(lambda: connection.fetchrow(query, eid), calls)
    finally:
        await connection.close()


async def main(url: str, calls: int) -> None:
    program = executable()
    if program is None:
        sys.exit("no pgbouncer: make install installs it")
    admin = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    await pg_admin(admin, f"DROP DATABASE IF EXISTS {DATABASE}", f"CREATE DATABASE {DATABASE}")
    direct = with_database(admin, DATABASE)
    try:
        store = await StateStore.open(direct)
        await store.close()
        with pgbouncer(program, direct, pool_size=4) as port:
            pooled = make_url(direct).set(port=port).render_as_string(hide_password=False)
            setups: dict[str, tuple[str, dict[str, Any]]] = {
                "direct": (direct, {}),
                "direct, no caches": (direct, NO_CACHES),
                "PgBouncer": (pooled + "?pgbouncer=true", {"direct_url": direct}),
            }
            rounds: dict[tuple[str, str], list[float]] = {}
            for round_ in range(ROUNDS):
                order = SETUPS if round_ % 2 == 0 else SETUPS[::-1]
                for setup in order:
                    store_url, options = setups[setup]
                    figures = await store_cells(store_url, options, calls)
                    raw_dsn = pooled if setup == "PgBouncer" else direct
                    figures["raw point read"] = await raw_cell(
                        raw_dsn, calls, statement_cache_size=0 if setup != "direct" else 100
                    )
                    for operation, value in figures.items():
                        rounds.setdefault((setup, operation), []).append(value)
                print(f"round {round_ + 1} of {ROUNDS} done", file=sys.stderr)
    finally:
        await pg_admin(admin, f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    median = {key: statistics.median(values) for key, values in rounds.items()}
    print(f"p50 µs, one caller, {calls} calls, median of {ROUNDS} rounds\n")
    print("| operation | " + " | ".join(SETUPS) + " | PgBouncer / direct |")
    print("|---|" + "---:|" * (len(SETUPS) + 1))
    for operation in OPERATIONS:
        cells = [f"{median[(setup, operation)]:.0f}" for setup in SETUPS]
        ratio = median[("PgBouncer", operation)] / median[("direct", operation)]
        print(f"| {operation} | " + " | ".join(cells) + f" | {ratio:.2f} |")


if __name__ == "__main__":
    asyncio.run(
        main(
            sys.argv[1] if len(sys.argv) > 1 else DEFAULT_URL,
            int(sys.argv[2]) if len(sys.argv) > 2 else 1000,
        )
    )
