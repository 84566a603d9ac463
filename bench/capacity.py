"""Capacity curve on PostgreSQL: how throughput grows with worker *processes*, the store
against the raw driver running the same SQL, in the same run.

Two cells, each with 1, 2, 4, 8 and 16 worker processes (``--workers``):

- **append_event**: each process appends one event (~200 B of JSON) per call to its own
  executions, in turn (so no two processes wait on one execution's row).
- **claim+complete**: each process claims one item of a queue and completes it (two calls).
  The queue is filled untimed before every run with more items than the run can take, a
  queue type of its own per run; afterwards the bench checks that every item claimed was
  claimed by one process only and completed exactly once, and that none is left claimed.

Two contenders per cell: ``store``, a :class:`statestore.StateStore` per process
(``StateStore.connect``), and ``raw``, one ``asyncpg`` connection per process (its statement
cache on) sending the same statements. The raw SQL is not written here: it is compiled from
the store's own statement builders (:mod:`statestore.db.queries`) with the store's dialect,
and checked at start against the statements the store sends for one call of each kind (a
``before_cursor_execute`` listener). Both run each statement on its own, in autocommit, as
the store does for these single-statement calls.

Every run starts the N processes together (each warms up, reports ready, then all start at
one instant the parent gives) and runs ``--duration`` seconds. Per run: total ops/s (the sum
of each process's calls / its own timed seconds), per-process ops/s, p50/p99 latency of one
op (claim+complete: the pair), and the CPU used during the window by the worker processes
(their own CPU time), by the PostgreSQL server (the ``postgres`` processes in ``/proc``),
and by everything else on the machine (``/proc/stat`` busy time less the two), in cores.
Rounds alternate the contenders' order (round 1 store then raw, round 2 raw then store) to
spread drift; a cell's figures are the mean of its rounds, latencies pooled.

The bench creates its own database on the server (``--pg-url``), migrated by the store, and
drops it at the end. ``--json`` writes every run's figures; ``--write`` puts the figures into
docs/benchmarks.md between ``<!-- capacity figures -->`` markers inside the "Capacity curve"
section (``<!-- capacity -->``), keeping the hand-written text around them (a document
without the section gets one after the scale section).

Usage::

    .venv/bin/python bench/capacity.py [--workers 1,2,4,8,16] [--duration 3] [--rounds 2]
                                       [--pg-url URL] [--json [PATH]] [--write [PATH]]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import sqlalchemy
from common import KIND, command_line, cpu_model
from sqlalchemy import Dialect, Executable, event
from sqlalchemy.sql.compiler import SQLCompiler

from statestore import Event, StateStore, WorkflowExecution, WorkItem
from statestore.db import queries
from statestore.validation import dump_json

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PG_URL = os.environ.get(
    "STATESTORE_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
DEFAULT_WORKERS = (1, 2, 4, 8, 16)
DEFAULT_DURATION = 3.0
DEFAULT_ROUNDS = 2
APPEND, CLAIM = "append_event", "claim+complete"
CELLS = (APPEND, CLAIM)
CONTENDERS = ("store", "raw")
EXECUTIONS_PER_WORKER = 4
"""Executions each process appends to, in turn (its own: processes never share one)."""
WARMUP_OPS = 20
"""Untimed ops per process before every run (connection, statement caches)."""
RATE_GUESS = 3_000.0
"""Ops/s (all processes) the first queue fill assumes; later fills use the best rate seen."""
LEASE = timedelta(seconds=30)
"""The store's default lease, which the raw claim sets too."""
START_LEAD = 0.05
"""Seconds between the last process reporting ready and the common start."""
BEGIN, END = "<!-- capacity -->", "<!-- /capacity -->"
FIGURES_BEGIN, FIGURES_END = "<!-- capacity figures -->", "<!-- /capacity figures -->"
SCALE_END = "<!-- /scale -->"

KIND_JSON = KIND.to_json_dict()
KIND_TEXT = dump_json(KIND_JSON)
KIND_TYPE = str(KIND_JSON["type"])
ITEM_PAYLOAD = dump_json({"node": "summarise", "input": {"url": "https://example.com/q3"}})


class BenchError(RuntimeError):
    """The run did not do what it should (a failed call, a queue run dry, a lost item)."""


class Stopped(Exception):
    """A worker process was told to stop while it waited to start a run."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise BenchError(message)


# ------------------------------------------------------------------------------ the SQL


@dataclass(frozen=True)
class Statement:
    """A statement as the store compiles it: its SQL for the driver and the names of its
    ``$n`` parameters in order (with the values the compiler bound itself)."""

    sql: str
    names: tuple[str, ...]
    defaults: dict[str, Any]

    def args(self, **values: Any) -> tuple[Any, ...]:
        """The positional arguments for ``values`` given by parameter name."""
        return tuple(values[n] if n in values else self.defaults[n] for n in self.names)


# The store's builders of the statements these cells run, with the shape it uses for them
# (unscoped store: the statements are not confined to a tenant): one event appended in one
# statement; a claim of one queue type; a completion of one item checked by worker and fence.
BUILDERS: dict[str, tuple[Callable[..., Executable], tuple[Any, ...]]] = {
    "append": (queries._append_one, (False,)),
    "claim": (queries._claim, (1,)),
    "complete": (queries._complete, (1, True, True)),
}


def compile_statement(dialect: Dialect, build: Callable[..., Executable], *shape: Any) -> Statement:
    compiled = build(*shape).compile(dialect=dialect)  # type: ignore[attr-defined]
    assert isinstance(compiled, SQLCompiler) and compiled.positiontup is not None
    names = tuple(compiled.positiontup)
    defaults = {
        name: compiled.binds[name].effective_value
        for name in names
        if not compiled.binds[name].required
    }
    return Statement(compiled.string, names, defaults)


async def store_statements(store: StateStore, execution_id: uuid.UUID) -> dict[str, Statement]:
    """The raw contender's statements, compiled from the store's builders with the store's
    dialect, each checked to be exactly what the store sent for one call of its kind."""
    dialect = store.engine.sync_engine.dialect
    statements = {
        name: compile_statement(dialect, build, *shape) for name, (build, shape) in BUILDERS.items()
    }
    sent: list[str] = []

    def capture(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        sent.append(statement)

    sync_engine = store.engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", capture)
    try:
        await store.append_event(Event(execution_id=execution_id, kind=KIND))
        calls = {"append": list(sent)}
        sent.clear()
        item = await store.enqueue_work_item(_probe_item(execution_id))
        sent.clear()
        claimed = await store.claim_work_item("probe", ["capacity-probe"])
        check(claimed is not None and claimed.id == item, "the probe item was not claimed")
        assert claimed is not None
        calls["claim"] = list(sent)
        sent.clear()
        await store.complete_work_item(
            claimed.id, worker_id="probe", lease_fence=claimed.lease_fence
        )
        calls["complete"] = list(sent)
    finally:
        event.remove(sync_engine, "before_cursor_execute", capture)
    for name, statement in statements.items():
        check(
            calls[name] == [statement.sql],
            f"{name}: the store sent {calls[name]!r}, not the statement compiled from"
            f" its builder:\n{statement.sql}",
        )
    return statements


def _probe_item(execution_id: uuid.UUID) -> WorkItem:
    return WorkItem(execution_id=execution_id, node_id="probe", queue_type="capacity-probe")


# ------------------------------------------------------------------------------ workers


@dataclass
class Spec:
    """One run as a worker process sees it."""

    cell: str
    contender: str
    worker: str
    executions: list[uuid.UUID]
    queue: str
    warmup: int
    statements: dict[str, Statement]


@dataclass
class WorkerResult:
    """What one process did in one run."""

    calls: int = 0
    elapsed_ns: int = 0
    cpu_s: float = 0.0
    late_ms: float = 0.0
    latencies_ns: list[int] = field(default_factory=list)
    appended: int = 0
    """Events appended, warm-up included (for the gapless check at the end)."""
    claimed: list[bytes] = field(default_factory=list)
    """Ids of the items claimed and completed, warm-up included."""


Op = Callable[[], Awaitable[None]]


def store_op(store: StateStore, spec: Spec, result: WorkerResult) -> Op:
    if spec.cell == APPEND:
        executions, turn = spec.executions, 0

        async def append() -> None:
            nonlocal turn
            execution_id = executions[turn % len(executions)]
            turn += 1
            await store.append_event(Event(execution_id=execution_id, kind=KIND))
            result.appended += 1

        return append

    async def claim_complete() -> None:
        item = await store.claim_work_item(spec.worker, [spec.queue])
        check(item is not None, f"the queue {spec.queue} ran dry")
        assert item is not None
        await store.complete_work_item(item.id, worker_id=spec.worker, lease_fence=item.lease_fence)
        result.claimed.append(item.id.bytes)

    return claim_complete


def raw_op(conn: asyncpg.Connection, spec: Spec, result: WorkerResult) -> Op:
    sql = spec.statements
    if spec.cell == APPEND:
        append = sql["append"]
        executions, turn = spec.executions, 0

        async def append_raw() -> None:
            nonlocal turn
            execution_id = executions[turn % len(executions)]
            turn += 1
            row = await conn.fetchrow(
                append.sql,
                *append.args(
                    p_count=1,
                    p_execution_id=execution_id,
                    id=uuid.uuid4(),
                    event_type=KIND_TYPE,
                    kind=KIND_TEXT,
                    created_at=datetime.now(UTC),
                ),
            )
            check(row is not None, "raw: the append inserted nothing")
            result.appended += 1

        return append_raw

    claim, complete = sql["claim"], sql["complete"]

    async def claim_complete_raw() -> None:
        now = datetime.now(UTC)
        row = await conn.fetchrow(
            claim.sql,
            *claim.args(
                p_worker=spec.worker,
                p_expires=now + LEASE,
                p_now=now,
                p_type0=spec.queue,
                p_limit=1,
            ),
        )
        check(row is not None, f"the queue {spec.queue} ran dry")
        item_id: uuid.UUID = row["id"]
        done = await conn.fetch(
            complete.sql,
            *complete.args(
                p_now=datetime.now(UTC),
                p_id0=item_id,
                p_worker0=spec.worker,
                p_fence0=row["lease_fence"],
            ),
        )
        check(len(done) == 1, f"raw: item {item_id} was not completed")
        result.claimed.append(item_id.bytes)

    return claim_complete_raw


def worker_main(pipe: Connection, url: str) -> None:
    """A worker process: a store and a raw connection of its own, then runs on command."""
    asyncio.run(_worker(pipe, url))


async def _worker(pipe: Connection, url: str) -> None:
    store = await StateStore.connect(url)
    raw = await asyncpg.connect(url)
    try:
        pipe.send(("up", os.getpid()))
        while True:
            # Blocking is fine: nothing else runs in this process between runs.
            message = pipe.recv()
            if message[0] == "stop":
                return
            spec: Spec = message[1]
            try:
                pipe.send(("done", await _run(store, raw, pipe, spec)))
            except Stopped:
                return
            except Exception as exc:
                pipe.send(("error", f"{spec.worker}: {type(exc).__name__}: {exc}"))
    finally:
        await raw.close()
        await store.close()


async def _run(
    store: StateStore, raw: asyncpg.Connection, pipe: Connection, spec: Spec
) -> WorkerResult:
    result = WorkerResult()
    op = store_op(store, spec, result) if spec.contender == "store" else raw_op(raw, spec, result)
    for _ in range(spec.warmup):
        await op()
    pipe.send(("ready", None))
    message = pipe.recv()
    if message[0] == "stop":  # another process failed: the run is abandoned
        raise Stopped
    check(message[0] == "go", f"unexpected message {message!r}")
    start_at, duration = message[1], message[2]
    await asyncio.sleep(max(0.0, start_at - time.time()))
    result.late_ms = max(0.0, (time.time() - start_at) * 1000)
    clock = time.perf_counter_ns
    cpu_before = time.process_time()
    started = end = clock()
    deadline = started + int(duration * 1e9)
    latencies = result.latencies_ns
    while end < deadline:
        before = clock()
        await op()
        end = clock()
        latencies.append(end - before)
    result.cpu_s = time.process_time() - cpu_before
    result.calls = len(latencies)
    result.elapsed_ns = end - started
    return result


class Workers:
    """The worker processes (spawned once, as many as the largest N), driven over pipes."""

    def __init__(self, url: str, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes: list[Any] = []
        for _ in range(count):
            mine, theirs = context.Pipe()
            process = context.Process(target=worker_main, args=(theirs, url), daemon=True)
            process.start()
            theirs.close()
            self.pipes.append(mine)
            self.processes.append(process)
        for pipe in self.pipes:
            self._expect(pipe, "up")

    @staticmethod
    def _expect(pipe: Connection, kind: str, timeout: float = 120.0) -> Any:
        if not pipe.poll(timeout):
            raise BenchError(f"a worker process did not answer ({kind}) in {timeout:.0f} s")
        message = pipe.recv()
        if message[0] == "error":
            raise BenchError(message[1])
        check(message[0] == kind, f"expected {kind}, got {message!r}")
        return message[1]

    async def run(
        self,
        specs: Sequence[Spec],
        duration: float,
        server_pids: Callable[[], Awaitable[set[int]]],
    ) -> tuple[list[WorkerResult], Cpu]:
        """Run ``specs`` (one per process) together; their results and the window's CPU
        (the server's: of the processes ``server_pids`` lists once every worker is ready)."""
        pipes = self.pipes[: len(specs)]
        for pipe, spec in zip(pipes, specs, strict=True):
            pipe.send(("run", spec))
        for pipe in pipes:
            await asyncio.to_thread(self._expect, pipe, "ready")
        pids = await server_pids()
        start_at = time.time() + START_LEAD
        for pipe in pipes:
            pipe.send(("go", start_at, duration))
        await asyncio.sleep(max(0.0, start_at - time.time()))
        before = CpuSample.now(pids)
        await asyncio.sleep(max(0.0, start_at + duration - time.time()))
        after = CpuSample.now(pids)
        results = [await asyncio.to_thread(self._expect, pipe, "done") for pipe in pipes]
        cpu = Cpu.between(before, after, sum(r.cpu_s for r in results))
        return results, cpu

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):  # that process is gone already
                pipe.send(("stop",))
        for process in self.processes:
            process.join(timeout=15)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)


# ------------------------------------------------------------------------------ CPU


TICK = os.sysconf("SC_CLK_TCK")


SERVER_PIDS = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() OR datname IS NULL"
)
"""The server processes that work for this bench: the backends of its database and the
shared ones (WAL writer, checkpointer, background writer…), not other databases'
backends (other work on the same server counts as "other")."""


@dataclass
class CpuSample:
    """Busy CPU seconds of the machine (``/proc/stat``) and of each server process."""

    at: float
    machine_s: float
    iowait_s: float
    server_s: dict[int, float]

    @classmethod
    def now(cls, server_pids: set[int]) -> CpuSample:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
        machine = (sum(fields[:8]) - fields[3] - fields[4]) / TICK
        server = {}
        for pid in server_pids:
            try:
                with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                    text = f.read()
            except OSError:
                continue  # gone meanwhile
            rest = text[text.rfind(")") + 2 :].split()
            server[pid] = (int(rest[11]) + int(rest[12])) / TICK  # utime + stime
        return cls(time.monotonic(), machine, fields[4] / TICK, server)


@dataclass
class Cpu:
    """CPU used over a run's window, in seconds, and the window's length."""

    window_s: float
    machine_s: float
    server_s: float
    clients_s: float
    iowait_s: float
    """Idle time with I/O outstanding (``/proc/stat``), e.g. waiting for WAL flushes."""

    @classmethod
    def between(cls, before: CpuSample, after: CpuSample, clients_s: float) -> Cpu:
        return cls(
            window_s=after.at - before.at,
            machine_s=after.machine_s - before.machine_s,
            server_s=sum(t - before.server_s.get(pid, t) for pid, t in after.server_s.items()),
            clients_s=clients_s,
            iowait_s=after.iowait_s - before.iowait_s,
        )

    @property
    def other_s(self) -> float:
        return max(0.0, self.machine_s - self.server_s - self.clients_s)


# ------------------------------------------------------------------------------ runs


@dataclass
class Run:
    """One contender of one cell at N processes in one round."""

    cell: str
    contender: str
    workers: int
    round: int
    ops_s: float
    per_worker_ops_s: list[float]
    p50_us: float
    p99_us: float
    calls: int
    late_ms_max: float
    cpu: Cpu
    latencies_ns: list[int] = field(default_factory=list, repr=False)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("latencies_ns")
        cpu = self.cpu
        data["cpu_cores"] = {
            "clients": cpu.clients_s / cpu.window_s,
            "server": cpu.server_s / cpu.window_s,
            "other": cpu.other_s / cpu.window_s,
            "machine": cpu.machine_s / cpu.window_s,
            "iowait": cpu.iowait_s / cpu.window_s,
        }
        return data


def percentile_us(values: Sequence[int], p: float) -> float:
    """Nearest-rank percentile of ``values`` (ns) in µs; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k] / 1000


FILL_SQL = (
    "INSERT INTO work_items (id, execution_id, tenant_id, node_id, queue_type, payload, status,"
    " priority, attempt, max_attempts, available_at, worker_id, lease_expires_at, lease_fence,"
    " last_error, created_at, updated_at, dead_lettered_at, dedupe_key)"
    " SELECT gen_random_uuid(), $1, 'default', 'summarise', $2, $3::json, 'pending', 0, 0, 3,"
    " $4, NULL, NULL, 0, NULL, $4::timestamptz + g * interval '1 microsecond', $4, NULL, NULL"
    " FROM generate_series(1, $5) AS g"
)
"""The untimed fill of a run's queue (items created in order, one microsecond apart)."""


class Bench:
    def __init__(self, args: argparse.Namespace, url: str) -> None:
        self.args = args
        self.url = url
        self.runs: list[Run] = []
        self.best_rate = {cell: RATE_GUESS for cell in CELLS}
        self.appended = 0

    async def run(self) -> None:
        args = self.args
        store = await StateStore.open(self.url)
        admin = await asyncpg.connect(self.url)
        workers: Workers | None = None
        try:
            host = WorkflowExecution(workflow_id="capacity", workflow_version="1")
            await store.create_execution(host)
            self.statements = await store_statements(store, host.execution_id)
            self.host = host.execution_id
            self.executions = []
            for _ in range(max(args.workers)):
                own = []
                for _ in range(EXECUTIONS_PER_WORKER):
                    execution = WorkflowExecution(workflow_id="capacity", workflow_version="1")
                    await store.create_execution(execution)
                    own.append(execution.execution_id)
                self.executions.append(own)
            progress(f"starting {max(args.workers)} worker processes")
            workers = await asyncio.to_thread(Workers, self.url, max(args.workers))
            for round_no in range(args.rounds):
                order = CONTENDERS if round_no % 2 == 0 else CONTENDERS[::-1]
                for n in args.workers:
                    for cell in args.cells:
                        for contender in order:
                            await self.one(admin, workers, cell, contender, n, round_no + 1)
            await self.check_appends(admin)
        finally:
            if workers is not None:
                await asyncio.to_thread(workers.close)
            await admin.close()
            await store.close()

    async def one(
        self,
        admin: asyncpg.Connection,
        workers: Workers,
        cell: str,
        contender: str,
        n: int,
        round_no: int,
    ) -> None:
        duration = self.args.duration
        queue = f"capacity-r{round_no}-{contender}-{n}"
        filled = 0
        if cell == CLAIM:
            # Twice what the best rate seen would take, plus the warm-ups: never runs dry.
            filled = int(self.best_rate[cell] * duration * 2) + n * (WARMUP_OPS + 20)
            await admin.execute(FILL_SQL, self.host, queue, ITEM_PAYLOAD, datetime.now(UTC), filled)
            # Statistics as autovacuum keeps them on a live queue. Without them (a table just
            # filled) the planner expects two pending rows and joins the claim's UPDATE to
            # its CTE by a scan of every pending item: milliseconds per claim at 6,000 items.
            await admin.execute("ANALYZE work_items")
        specs = [
            Spec(
                cell=cell,
                contender=contender,
                worker=f"{contender}-{i}",
                executions=self.executions[i],
                queue=queue,
                warmup=WARMUP_OPS,
                statements=self.statements,
            )
            for i in range(n)
        ]

        async def server_pids() -> set[int]:
            return {row[0] for row in await admin.fetch(SERVER_PIDS)}

        results, cpu = await workers.run(specs, duration, server_pids)
        latencies = [ns for r in results for ns in r.latencies_ns]
        per_worker = [r.calls / (r.elapsed_ns / 1e9) for r in results if r.elapsed_ns]
        run = Run(
            cell=cell,
            contender=contender,
            workers=n,
            round=round_no,
            ops_s=sum(per_worker),
            per_worker_ops_s=per_worker,
            p50_us=percentile_us(latencies, 50),
            p99_us=percentile_us(latencies, 99),
            calls=sum(r.calls for r in results),
            late_ms_max=max(r.late_ms for r in results),
            cpu=cpu,
            latencies_ns=latencies,
        )
        check(run.calls > 0, f"{cell} {contender} x{n}: no call completed")
        self.best_rate[cell] = max(self.best_rate[cell], run.ops_s)
        self.appended += sum(r.appended for r in results)
        if cell == CLAIM:
            await self.check_claims(admin, queue, filled, results)
        # Every run starts on tables without the dead rows of the runs before it.
        await admin.execute("VACUUM work_items, workflow_executions")
        self.runs.append(run)
        w = cpu.window_s
        progress(
            f"  round {round_no} {cell:<15} {contender:<5} x{n:<2} {run.ops_s:>8,.0f} ops/s"
            f"  p50 {run.p50_us:>7,.0f} µs  p99 {run.p99_us:>8,.0f} µs  CPU cores: clients"
            f" {cpu.clients_s / w:.2f} server {cpu.server_s / w:.2f} other {cpu.other_s / w:.2f}"
        )

    async def check_claims(
        self, admin: asyncpg.Connection, queue: str, filled: int, results: Sequence[WorkerResult]
    ) -> None:
        """Exactly once: no item claimed by two processes, every claimed item completed,
        none left claimed, the rest still pending."""
        claimed = [item for r in results for item in r.claimed]
        check(len(claimed) == len(set(claimed)), f"{queue}: an item was claimed twice")
        rows = await admin.fetch(
            "SELECT status, count(*) FROM work_items WHERE queue_type = $1 GROUP BY status", queue
        )
        counts = {row[0]: row[1] for row in rows}
        expected = {"completed": len(claimed), "pending": filled - len(claimed)}
        expected = {status: count for status, count in expected.items() if count}
        check(counts == expected, f"{queue}: statuses {counts}, expected {expected}")
        completed = await admin.fetchval(
            "SELECT count(*) FROM work_items WHERE queue_type = $1 AND status = 'completed'"
            " AND id = ANY($2::uuid[])",
            queue,
            [uuid.UUID(bytes=item) for item in claimed],
        )
        check(completed == len(claimed), f"{queue}: {completed} of {len(claimed)} completed")
        await admin.execute("DELETE FROM work_items WHERE queue_type = $1", queue)

    async def check_appends(self, admin: asyncpg.Connection) -> None:
        """Every append acknowledged is there once, and each execution's sequences are
        gapless (1 … last_sequence)."""
        ids = [execution for own in self.executions for execution in own]
        rows = await admin.fetch(
            "SELECT e.id, e.last_sequence, count(ev.id), coalesce(max(ev.sequence), 0),"
            " count(DISTINCT ev.sequence) FROM workflow_executions e"
            " LEFT JOIN events ev ON ev.execution_id = e.id"
            " WHERE e.id = ANY($1::uuid[]) GROUP BY e.id",
            ids,
        )
        total = 0
        for row in rows:
            _id, last, count, highest, distinct = row
            check(last == count == highest == distinct, f"execution {_id}: not gapless {row}")
            total += count
        check(total == self.appended, f"{total} events stored, {self.appended} acknowledged")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ output


@dataclass
class Row:
    """A cell at N processes: both contenders, their rounds combined."""

    cell: str
    workers: int
    by: dict[str, list[Run]]

    def ops_s(self, contender: str) -> float:
        runs = self.by[contender]
        return sum(r.ops_s for r in runs) / len(runs)

    def per_worker(self, contender: str) -> float:
        values = [v for r in self.by[contender] for v in r.per_worker_ops_s]
        return sum(values) / len(values)

    def latency(self, contender: str, p: float) -> float:
        return percentile_us([ns for r in self.by[contender] for ns in r.latencies_ns], p)

    def cores(self, contender: str) -> tuple[float, float, float]:
        runs = self.by[contender]
        window = sum(r.cpu.window_s for r in runs)
        return (
            sum(r.cpu.clients_s for r in runs) / window,
            sum(r.cpu.server_s for r in runs) / window,
            sum(r.cpu.other_s for r in runs) / window,
        )

    def cpu_per_op_us(self, contender: str) -> tuple[float, float]:
        """CPU µs per op of the worker processes and of the server."""
        runs = self.by[contender]
        calls = sum(r.calls for r in runs)
        return (
            sum(r.cpu.clients_s for r in runs) / calls * 1e6,
            sum(r.cpu.server_s for r in runs) / calls * 1e6,
        )

    @property
    def ratio(self) -> float:
        return self.ops_s("store") / self.ops_s("raw")

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"cell": self.cell, "workers": self.workers, "ratio": self.ratio}
        for c in CONTENDERS:
            data[c] = {
                "ops_s": self.ops_s(c),
                "per_worker_ops_s": self.per_worker(c),
                "p50_us": self.latency(c, 50),
                "p99_us": self.latency(c, 99),
                "cpu_cores": dict(zip(("clients", "server", "other"), self.cores(c), strict=True)),
                "cpu_us_per_op": dict(
                    zip(("clients", "server"), self.cpu_per_op_us(c), strict=True)
                ),
            }
        return data


def rows_of(runs: Sequence[Run]) -> list[Row]:
    rows: dict[tuple[str, int], Row] = {}
    for run in runs:
        row = rows.setdefault((run.cell, run.workers), Row(run.cell, run.workers, {}))
        row.by.setdefault(run.contender, []).append(run)
    return [rows[key] for key in sorted(rows, key=lambda k: (CELLS.index(k[0]), k[1]))]


def table(rows: Sequence[Row]) -> str:
    first = {c: rows[0].ops_s(c) for c in CONTENDERS}
    lines = [
        "| workers | store ops/s | raw ops/s | store/raw | x 1 worker, store / raw"
        " | per worker ops/s, store / raw | store p50 / p99 µs | raw p50 / p99 µs"
        " | CPU µs per op, store: clients / server | raw"
        " | CPU cores busy, store run: clients / server / other | raw run |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        s_cores, r_cores = row.cores("store"), row.cores("raw")
        lines.append(
            f"| {row.workers} | {row.ops_s('store'):,.0f} | {row.ops_s('raw'):,.0f}"
            f" | {row.ratio:.2f}"
            f" | {row.ops_s('store') / first['store']:.2f} / {row.ops_s('raw') / first['raw']:.2f}"
            f" | {row.per_worker('store'):,.0f} / {row.per_worker('raw'):,.0f}"
            f" | {row.latency('store', 50):,.0f} / {row.latency('store', 99):,.0f}"
            f" | {row.latency('raw', 50):,.0f} / {row.latency('raw', 99):,.0f}"
            f" | {' / '.join(f'{x:,.0f}' for x in row.cpu_per_op_us('store'))}"
            f" | {' / '.join(f'{x:,.0f}' for x in row.cpu_per_op_us('raw'))}"
            f" | {' / '.join(f'{x:.2f}' for x in s_cores)}"
            f" | {' / '.join(f'{x:.2f}' for x in r_cores)} |"
        )
    return "\n".join(lines)


def peaks(rows: Sequence[Row]) -> str:
    parts = []
    for contender in CONTENDERS:
        best = max(rows, key=lambda row: row.ops_s(contender))
        rate = best.ops_s(contender)
        parts.append(f"{contender} peaks at {plural(best.workers, 'worker')} ({rate:,.0f} ops/s)")
    return "; ".join(parts) + "."


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
    ).stdout.strip()


def code_version() -> str:
    """The commit measured, and whether the store's code had local changes."""
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "statestore", "alembic")
    return f"{commit}{' with local changes to the store' if dirty else ''}"


def figures(info: dict[str, Any], runs: Sequence[Run]) -> str:
    """The generated part of the section: how the run was made, and a table per cell."""
    parts = [
        f"- Command: `{info['command']}`",
        f"- Date: {info['date']}",
        f"- Code: {info['code']}",
        f"- Machine: {info['machine']}",
        f"- Software: {info['software']}",
        f"- Load: 1-minute load average {info['load_before']:.2f} before the run,"
        f" {info['load_after']:.2f} after it; other processes used"
        f" {info['other_cores_mean']:.2f} cores on average during the timed windows",
        f"- Method: {info['workers']} worker processes, {info['duration']:g} s per run,"
        f" {plural(info['rounds'], 'round')} (the contenders' order alternating); a figure is"
        " the mean of the rounds, latencies pooled. CPU cores = CPU seconds used during the"
        " window / its length: clients = the worker processes, server = the PostgreSQL"
        " processes working for the bench's database (its backends, the WAL writer,"
        " checkpointer…), other = the rest of the machine (`/proc/stat`), other databases'"
        " backends included.",
    ]
    all_rows = rows_of(runs)
    for cell in CELLS:
        rows = [row for row in all_rows if row.cell == cell]
        if not rows:
            continue
        parts += ["", f"### {cell}", "", table(rows), "", peaks(rows)]
    return "\n".join(parts) + "\n"


SECTION_INTRO = """## Capacity curve

Throughput against the number of worker *processes* on PostgreSQL, the store against raw
`asyncpg` sending the same statements (compiled from the store's own builders and checked
against what the store sends), both in autocommit, one connection per process. Written by
`bench/capacity.py` (`make bench-capacity`); only the figures between the markers below are
generated, the text around them is written by hand.
"""


def write_section(path: Path, generated: str) -> None:
    """Put ``generated`` between the figures markers of the capacity section of ``path``,
    keeping the section's hand-written text; a document without the section gets one
    right after the scale section (or at its end)."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    block = f"{FIGURES_BEGIN}\n{generated}{FIGURES_END}"
    if BEGIN in text:
        if FIGURES_BEGIN not in text or FIGURES_END not in text:
            raise BenchError(f"{path}: its capacity section has no {FIGURES_BEGIN} markers")
        head, rest = text.split(FIGURES_BEGIN, 1)
        _old, tail = rest.split(FIGURES_END, 1)
        text = head + block + tail
    else:
        section = (
            f"{BEGIN}\n{SECTION_INTRO}\n{block}\n\n"
            "Where it flattens and why: (to be written by hand after a full run).\n"
            f"{END}\n"
        )
        if SCALE_END in text:
            head, tail = text.split(SCALE_END, 1)
            tail = tail.lstrip("\n")
            text = f"{head}{SCALE_END}\n\n{section}" + (f"\n{tail}" if tail else "")
        else:
            text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")


# ------------------------------------------------------------------------------ main


def with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


async def main_async(args: argparse.Namespace) -> tuple[dict[str, Any], list[Run]]:
    database = f"statestore_bench_capacity_{os.getpid()}"
    admin = await asyncpg.connect(args.pg_url, timeout=10)
    try:
        version = await admin.fetchval("SHOW server_version")
        await admin.execute(f"DROP DATABASE IF EXISTS {database}")
        await admin.execute(f"CREATE DATABASE {database}")
    finally:
        await admin.close()
    load_before = os.getloadavg()[0]
    bench = Bench(args, with_database(args.pg_url, database))
    try:
        await bench.run()
    finally:
        admin = await asyncpg.connect(args.pg_url, timeout=10)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        finally:
            await admin.close()
    window = sum(run.cpu.window_s for run in bench.runs)
    info: dict[str, Any] = {
        "command": command_line(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "code": code_version(),
        "machine": f"{len(os.sched_getaffinity(0))} CPUs (nproc), {cpu_model()};"
        f" {platform.system()} {platform.release()}; the PostgreSQL server on the same"
        " machine (loopback), sharing its CPUs with the worker processes",
        "software": f"Python {platform.python_version()}, PostgreSQL {version},"
        f" SQLAlchemy {sqlalchemy.__version__}, asyncpg {asyncpg.__version__}",
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "other_cores_mean": sum(run.cpu.other_s for run in bench.runs) / window,
        "workers": ", ".join(str(n) for n in args.workers),
        "duration": args.duration,
        "rounds": args.rounds,
        "statements": {name: s.sql for name, s in bench.statements.items()},
    }
    return info, bench.runs


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workers",
        default=",".join(str(n) for n in DEFAULT_WORKERS),
        help="worker process counts, comma-separated (default 1,2,4,8,16)",
    )
    parser.add_argument(
        "--cells",
        default=",".join(CELLS),
        help=f"cells to run, comma-separated (default {','.join(CELLS)})",
    )
    parser.add_argument(
        "--duration", type=float, default=DEFAULT_DURATION, help="seconds per run (default 3)"
    )
    parser.add_argument(
        "--rounds", type=int, default=DEFAULT_ROUNDS, help="rounds per cell (default 2)"
    )
    parser.add_argument(
        "--pg-url",
        default=DEFAULT_PG_URL,
        help="PostgreSQL server; the bench creates and drops its own database there"
        " (default $STATESTORE_BENCH_PG_URL or postgresql://postgres@127.0.0.1:5432/test)",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="bench/results/capacity.json",
        metavar="PATH",
        help="write every run's figures as JSON (default bench/results/capacity.json)",
    )
    parser.add_argument(
        "--write",
        nargs="?",
        const="docs/benchmarks.md",
        metavar="PATH",
        help="write the figures into PATH's capacity section (default docs/benchmarks.md)",
    )
    args = parser.parse_args(argv)
    try:
        args.workers = sorted({int(n) for n in args.workers.split(",")})
    except ValueError:
        parser.error("--workers takes whole numbers separated by commas")
    if not args.workers or min(args.workers) < 1:
        parser.error("--workers must be positive")
    args.cells = [cell for cell in CELLS if cell in args.cells.split(",")]
    if not args.cells:
        parser.error(f"--cells takes {', '.join(CELLS)}")
    if args.duration <= 0 or args.rounds < 1:
        parser.error("--duration must be positive and --rounds at least 1")
    return args


def resolve(path: str) -> Path:
    target = Path(path)
    return target if target.is_absolute() else REPO / target


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        info, runs = asyncio.run(main_async(args))
    except BenchError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    progress(f"done in {time.perf_counter() - started:.1f} s")
    generated = figures(info, runs)
    print(generated)
    if args.json:
        target = resolve(args.json)
        target.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "info": info,
            "rows": [row.as_json() for row in rows_of(runs)],
            "runs": [run.as_json() for run in runs],
        }
        target.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
        progress(f"wrote {args.json}")
    if args.write:
        try:
            write_section(resolve(args.write), generated)
        except BenchError as exc:
            print(f"ERROR: {exc}", file=sys.stderr)
            return 1
        progress(f"wrote the capacity figures into {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
