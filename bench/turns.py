"""Atomic turns benchmark: ``commit_turn`` against its own statements run raw, an engine
on turns against the same engine on today's separate calls and against DBOS, and the
PostgreSQL round trips of one turn, all in one run.

1. **commit_turn** (bench/turns_cells.py; 1 caller, and 16 concurrent callers on SQLite,
   8 workers on PostgreSQL). ``store``: ``StateStore.commit_turn`` of a claimed item with
   one event (~200 B of JSON), a state merge patch and one successor item. ``raw``: the
   same transaction through the bare driver, its statements the store's own
   (bench/statements.py ``compiled_turn``; a test checks they are what the store sends):
   lock the item's execution (reading its state), settle the item with the fenced
   ``UPDATE``, reserve the sequence and write the merged state in one ``UPDATE``, insert
   the event, insert the successor, commit. SQLite: stdlib ``sqlite3`` behind one thread
   hop with group commit (bench/sqlite_raw.py's ``gc`` layer: up to 64 waiting calls in
   one ``BEGIN IMMEDIATE … COMMIT``, a SAVEPOINT each; one caller: one transaction per
   call). PostgreSQL: ``asyncpg``, a connection per worker. The claimed items are inserted
   untimed before every timed run; only the turn is timed, as every cell of bench/run.py
   (bench/harness.py: a warm-up, then rounds alternating the contenders).
2. **Engine** (bench/turns_engines.py). A workflow of five nodes per execution, run end to
   end by 4 workers: ``turns``, each step one claim and ONE ``commit_turn``; ``separate
   calls``, the same engine on the calls an engine had before turns (claim, renew, append
   events, patch the state, complete, enqueue: six transactions per step); and ``DBOS`` (a
   workflow of five steps), in a subprocess per backend since DBOS is a process-wide
   singleton. Each engine runs a fixed number of executions, not a fixed time, so that the
   bench can check afterwards that every one completed and no item was left behind.
3. **Round trips** (bench/turns_wire.py). The client messages that wait for a reply
   (extended-protocol Sync and simple Query), counted by a relay between the client and
   PostgreSQL, for one ``commit_turn`` and for the raw transaction; and the statements of
   one turn (a ``before_cursor_execute`` listener, a separate run).

This module runs the three and writes the section: ``--write`` puts it into
docs/benchmarks.md between the ``<!-- turns -->`` markers (bench/run.py and bench/scale.py
keep it when they rewrite the document).

Usage::

    .venv/bin/python bench/turns.py [--duration 1.0] [--executions 300] [--quick]
                                    [--only sqlite|postgresql] [--no-dbos]
                                    [--write [docs/benchmarks.md]] [--pg-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import sqlalchemy
from cells import KIND_JSON, PG_WORKERS
from common import (
    TURNS_BEGIN,
    TURNS_END,
    code_version,
    command_line,
    cpu_model,
    dumps,
    fmt_ratio,
    nproc,
    pg_admin,
    progress,
    with_database,
    write_document,
)
from harness import ROUNDS, BenchError, Cell, fmt_rate, fmt_us
from render import table
from run import DEFAULT_PG_ADMIN_URL
from turns_cells import (
    RAW_STATEMENTS,
    TURN_EXECUTIONS,
    WORKFLOW_ID,
    WORKFLOW_VERSION,
    pg_turn_cells,
    sqlite_turn_cells,
)
from turns_engines import (
    DBOS_ENGINE,
    ENGINE_WORKERS,
    SEPARATE_ENGINE,
    TURNS_ENGINE,
    WARMUP_EXECUTIONS,
    EngineRun,
    dbos_run,
    dbos_version,
    engine_runs,
)
from turns_wire import RoundTrips, pg_round_trips, turn_statements

from statestore import StateStore, WorkflowExecution

REPO = Path(__file__).resolve().parent.parent
BACKENDS = ("sqlite", "postgresql")
PG_DATABASE = "statestore_bench_turns"
PG_DBOS_DATABASE = "statestore_bench_turns_dbos"
DEFAULT_DURATION = 1.0
QUICK_DURATION = 0.2
DEFAULT_EXECUTIONS = 300
QUICK_EXECUTIONS = 8
ENGINE_ROUNDS = 2
"""Rounds per store engine, alternating the two (drift on a noisy machine hits both)."""
QUICK_ENGINE_ROUNDS = 1
TARGET_TURN = 0.6
TARGET_VS_SEPARATE = 3.0
TARGET_VS_DBOS = 10.0


# ------------------------------------------------------------------------------ driver


@dataclass
class Results:
    cells: list[Cell] = field(default_factory=list)
    engines: list[EngineRun] = field(default_factory=list)
    trips: RoundTrips = field(default_factory=RoundTrips)
    info: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


async def bench_sqlite(args: argparse.Namespace, results: Results) -> None:
    results.info["sqlite"] = sqlite3.sqlite_version
    with tempfile.TemporaryDirectory(prefix="statestore-turns-") as folder:
        path = Path(folder) / "turns.db"
        progress(f"sqlite: {path} (WAL, synchronous=NORMAL)")
        async with await StateStore.open(f"sqlite:///{path}") as store:
            results.cells += await sqlite_turn_cells(path, store, args.duration)
            probe = WorkflowExecution(
                workflow_id=WORKFLOW_ID, workflow_version=WORKFLOW_VERSION, status="running"
            )
            await store.create_execution(probe)
            results.trips.sqlite_statements = await turn_statements(store, probe.execution_id, 3)
        # The engines on a fresh file, so the turn cells' rows do not weigh on them.
        async with await StateStore.open(f"sqlite:///{Path(folder) / 'engine.db'}") as store:
            results.engines += await engine_runs("sqlite", store, args.executions, args.rounds)
        if not args.no_dbos:
            dbos_url = f"sqlite:///{Path(folder) / 'dbos.db'}"
            results.engines.append(await dbos_run("sqlite", dbos_url, args.executions))


async def bench_postgres(args: argparse.Namespace, results: Results) -> None:
    admin = args.pg_url
    try:
        await pg_admin(
            admin,
            f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)",
            f"CREATE DATABASE {PG_DATABASE}",
        )
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise BenchError(
            f"PostgreSQL unreachable at {urlsplit(admin).netloc}: {exc}"
            " (start it, pass --pg-url, or run with --only sqlite)"
        ) from exc
    url = with_database(admin, PG_DATABASE)
    try:
        progress(f"postgresql: database {PG_DATABASE}")
        async with await StateStore.open(url, pool_size=PG_WORKERS + 2) as store:
            conn = await asyncpg.connect(url)
            try:
                settings = {
                    name: await conn.fetchval(f"SHOW {name}")
                    for name in ("server_version", "synchronous_commit")
                }
            finally:
                await conn.close()
            results.info["postgresql"] = (
                f"{settings['server_version'].split()[0]}"
                f" (synchronous_commit={settings['synchronous_commit']})"
            )
            results.cells += await pg_turn_cells(url, store, args.duration)
        await pg_round_trips(url, 5, results.trips)
        await pg_admin(
            admin,
            f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)",
            f"CREATE DATABASE {PG_DATABASE}",
        )
        async with await StateStore.open(url, pool_size=ENGINE_WORKERS + 2) as store:
            results.engines += await engine_runs("postgresql", store, args.executions, args.rounds)
    finally:
        await pg_admin(admin, f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")
    if not args.no_dbos:
        await pg_admin(admin, f"DROP DATABASE IF EXISTS {PG_DBOS_DATABASE} WITH (FORCE)")
        try:
            dbos_url = with_database(admin, PG_DBOS_DATABASE)
            results.engines.append(await dbos_run("postgresql", dbos_url, args.executions))
        finally:
            await pg_admin(admin, f"DROP DATABASE IF EXISTS {PG_DBOS_DATABASE} WITH (FORCE)")


async def run(args: argparse.Namespace) -> Results:
    results = Results()
    results.info["load_start"] = f"{os.getloadavg()[0]:.1f}"
    backends = [args.only] if args.only else list(BACKENDS)
    progress(
        f"turns bench: {', '.join(backends)}, {args.duration:g} s per commit_turn cell,"
        f" {args.executions} executions per engine"
    )
    if "sqlite" in backends:
        await bench_sqlite(args, results)
    if "postgresql" in backends:
        try:
            await bench_postgres(args, results)
        except BenchError as exc:
            results.errors.append(str(exc))
    results.info["load"] = (
        f"1-minute load average {results.info['load_start']} at the start,"
        f" {os.getloadavg()[0]:.1f} at the end, on {nproc()} CPUs shared with other work:"
        " compare the ratios of one run, not the figures of different runs"
    )
    for cell in results.cells:
        results.errors += cell.errors()
    results.errors += [
        f"{run.backend} engine {run.engine}: {run.error}"
        for run in results.engines
        if run.error is not None and run.engine != DBOS_ENGINE
    ]
    return results


# ------------------------------------------------------------------------------ output


def verdict(ratio: float | None, wanted: float) -> str:
    if ratio is None:
        return f"{wanted:g}x: -"
    if ratio >= wanted:
        return f"{wanted:g}x: met"
    return f"{wanted:g}x: missed by {1 - ratio / wanted:.0%}"


def turn_table(cells: Sequence[Cell]) -> str:
    header = (
        "backend",
        "callers",
        "store turns/s",
        "store p50 µs",
        "store p99 µs",
        "raw turns/s",
        "raw p50 µs",
        "raw p99 µs",
        "ratio",
        "target",
    )
    rows = []
    for cell in cells:
        store, raw = cell.timings["store"], cell.timings["raw"]
        rows.append(
            (
                cell.backend,
                str(cell.callers),
                fmt_rate(store),
                fmt_us(store, 50),
                fmt_us(store, 99),
                fmt_rate(raw),
                fmt_us(raw, 50),
                fmt_us(raw, 99),
                fmt_ratio(cell.ratio),
                verdict(cell.ratio, TARGET_TURN),
            )
        )
    return table(header, rows, [False, *([True] * 8), False])


def engine_ratio(runs: Sequence[EngineRun], backend: str, against: str) -> float | None:
    by_engine = {run.engine: run for run in runs if run.backend == backend}
    turns, other = by_engine.get(TURNS_ENGINE), by_engine.get(against)
    if turns is None or other is None or not (turns.ok and other.ok):
        return None
    return turns.steps_s / other.steps_s


def engine_table(runs: Sequence[EngineRun]) -> str:
    header = (
        "backend",
        "engine",
        "executions",
        "steps",
        "seconds",
        "steps/s",
        "transactions per step",
        "turns engine / this",
        "target",
    )
    rows = []
    targets = {SEPARATE_ENGINE: TARGET_VS_SEPARATE, DBOS_ENGINE: TARGET_VS_DBOS}
    for run in runs:
        name = run.engine if not run.note else f"{run.engine} ({run.note})"
        if not run.ok:
            rows.append((run.backend, name, "-", "-", "-", "not run", "-", "-", "-"))
            continue
        ratio = engine_ratio(runs, run.backend, run.engine) if run.engine != TURNS_ENGINE else None
        rows.append(
            (
                run.backend,
                name,
                f"{run.executions:,}",
                f"{run.steps:,}",
                f"{run.seconds:.2f}",
                f"{run.steps_s:,.0f}",
                f"{run.calls / run.steps:.1f}" if run.calls else "-",
                "-" if run.engine == TURNS_ENGINE else fmt_ratio(ratio),
                verdict(ratio, targets[run.engine]) if run.engine in targets else "-",
            )
        )
    return table(header, rows, [False, False, True, True, True, True, True, True, False])


def trips_text(trips: RoundTrips, backends: Sequence[str]) -> str:
    lines = []
    if "postgresql" in backends and trips.store:
        lines.append(
            f"- PostgreSQL: one `commit_turn` (one event, a state patch, one successor) takes"
            f" **{trips.store} round trips**; the raw transaction {trips.raw} (BEGIN,"
            f" {RAW_STATEMENTS} statements, COMMIT). Counted on the wire by a relay between the"
            f" client and the server (each Sync or simple Query the client sends is one round"
            f" trip), the median of 5 turns after 3 untimed ones (prepared statements cached). The"
            f" store's statements, in order (a `before_cursor_execute` listener, a separate"
            f" run): {', '.join(trips.statements)}."
        )
    if "sqlite" in backends and trips.sqlite_statements:
        inner = [name for name in trips.sqlite_statements if name not in ("BEGIN", "COMMIT")]
        lines.append(
            f"- SQLite (no round trips: the turn is one writer operation, which joins group"
            f" commit): {len(inner)} statements in the writer's transaction, {', '.join(inner)};"
            f" the raw transaction runs the same {RAW_STATEMENTS}."
        )
    return "\n".join(lines)


ENGINE_NOTE = (
    "The workflow is a chain of five nodes, a → b → c → d → e, the same for every engine;"
    " a chain rather than a fan-out and join so that every engine does the same five steps"
    " per execution (a join on the store parks the joining item until its inputs are"
    " done, extra turns that depend on timing, while a DBOS workflow would simply await"
    " both steps), keeping the cell about the cost of a step. The node's work is empty:"
    " the cell measures what the engine costs around it."
)


def markdown(results: Results, args: argparse.Namespace) -> str:
    backends = [args.only] if args.only else list(BACKENDS)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{nproc()} CPUs (nproc), {cpu_model()}; {platform.system()} {platform.release()}"
    software = ", ".join(
        [
            f"Python {platform.python_version()}",
            f"SQLite {results.info.get('sqlite', 'not measured')}",
            f"PostgreSQL {results.info.get('postgresql', 'not measured')}",
            f"SQLAlchemy {sqlalchemy.__version__}",
            f"asyncpg {asyncpg.__version__}",
            f"DBOS {dbos_version() or 'not installed'}",
        ]
    )
    parts = [
        "## Atomic turns",
        "",
        "`commit_turn` against the same transaction run raw (the store's own statements"
        " through the bare driver), and an engine on turns against the same engine on"
        " separate calls and against DBOS, in the same run (issue 13, item 6). This section"
        " is written by `bench/turns.py --write` (`make bench-turns`); the other scripts keep"
        " it.",
        "",
        f"- Command: `{command_line()}`",
        f"- Date: {when}",
        f"- Code: {code_version()}",
        f"- Machine: {machine}",
        f"- Software: {software}",
        f"- Load: {results.info.get('load', 'unknown')}",
        "",
        "### commit_turn against its raw transaction",
        "",
        turn_table(results.cells),
        "",
        TURN_LEGEND,
        "",
        "### Engine: five steps per execution, 4 workers",
        "",
        engine_table(results.engines),
        "",
        ENGINE_NOTE + " " + ENGINE_LEGEND,
        "",
        "### Round trips of one turn",
        "",
        trips_text(results.trips, backends),
        "",
        "### Where we stand",
        "",
        standing(results, backends),
    ]
    return "\n".join(parts) + "\n"


TURN_LEGEND = (
    f"Each turn settles a claimed item (fenced), appends one event (~{len(dumps(KIND_JSON))} B"
    " of JSON), merge-patches the execution's state and enqueues one successor item."
    f" callers: concurrent asyncio tasks on one store on SQLite, workers on PostgreSQL (the"
    f" store with a pool of {PG_WORKERS + 2}, raw with an `asyncpg` connection each); each"
    f" caller settles items of its own executions ({TURN_EXECUTIONS} split between them), so"
    " no turn waits on another's execution row. raw = the same transaction through the bare"
    f" driver, its {RAW_STATEMENTS} statements the store's own, compiled by the store"
    " (bench/statements.py; a test checks they are among what the store sends for the"
    " turn): lock the item's execution and read its state (`SELECT … FOR UPDATE OF"
    " workflow_executions` on PostgreSQL; on SQLite under the `BEGIN IMMEDIATE` write lock),"
    " settle the item with the fenced `UPDATE work_items … WHERE id = ? AND status ="
    " 'claimed' AND worker_id = ? AND lease_fence = ?`, reserve the sequence and write the"
    " merged state in one `UPDATE workflow_executions … RETURNING last_sequence`, insert the"
    " event, insert the successor (`INSERT … SELECT` from its execution, which must take new"
    " work), commit; what raw leaves out is the store's Python around them. SQLite raw runs"
    " through one thread with group commit (bench/sqlite_raw.py's gc layer:"
    " up to 64 waiting calls in one transaction, a SAVEPOINT each; a lone call is one"
    " transaction); PostgreSQL raw is `asyncpg` with its statement cache. The claimed items"
    " are inserted untimed before every timed run. ratio = store turns/s / raw turns/s;"
    f" target: the issue's {TARGET_TURN}x. Method: as bench/run.py (bench/harness.py), a"
    f" warm-up then {ROUNDS} rounds alternating store and raw, {DEFAULT_DURATION:g} s per"
    " contender by default."
)

ENGINE_LEGEND = (
    "turns: each start is one `start_execution` (the execution, its first two events and"
    " the first item); each step a claim, the node's work under `heartbeat`, and ONE"
    " `commit_turn` (item settled, `node_completed` and `node_scheduled` events, the node's"
    " state patch, the next item; on the last node `workflow_completed`, the status and the"
    " materialized snapshot). separate calls: the same engine on the calls from before"
    " turns, as the demo at commit 278d6f7 made them: each start `create_execution`,"
    " `append_events`, `enqueue_work_item`; each step a claim, `renew_lease`, `append_events`"
    " (the same two events), `patch_append_array`, `complete_work_item`, `enqueue_work_item`;"
    " the last node instead `get_execution`, `latest_sequence`, `write_snapshot`,"
    " `update_execution_status`. Both store engines: one store, one starter task that starts"
    " the executions while 4 worker tasks claim and run steps (a worker that finds the queue"
    " empty sleeps 2 ms); steps/s = 5 x executions / the time from the first start to the"
    f" last completion; {ENGINE_ROUNDS} rounds alternating the two engines on one database"
    f" after {WARMUP_EXECUTIONS} untimed executions each; afterwards the bench checks that"
    " every execution completed and no item is left pending or claimed. store calls per"
    " step = the engine's store calls (claims that found nothing and starts included) /"
    " steps. DBOS: a `@DBOS.workflow` calling five `@DBOS.step` functions (each step's"
    " output checkpointed in DBOS's system database, the workflow's status recorded at"
    " start and end), run in a subprocess per backend (DBOS is a process-wide singleton) by"
    " 4 threads that each call the workflow for their share of the executions (DBOS's"
    " synchronous API: its async one, tried here, was slower on SQLite); the same number of"
    f" executions after {WARMUP_EXECUTIONS} untimed ones. DBOS on SQLite runs with the"
    " store's settings, WAL and `synchronous=NORMAL` (its default, the rollback journal at"
    " FULL, was about 10x slower here); on PostgreSQL its own database on the same server."
)


def standing(results: Results, backends: Sequence[str]) -> str:
    """The verdicts of this run against the issue's targets, and why."""
    sentences = []
    for cell in results.cells:
        ratio = cell.ratio
        sentences.append(
            f"{cell.backend} commit_turn with {cell.callers} caller"
            f"{'s' if cell.callers > 1 else ''}: {fmt_ratio(ratio)}x raw"
            f" ({verdict(ratio, TARGET_TURN).split(': ', 1)[1]})"
        )
    for backend in backends:
        for against, wanted in ((SEPARATE_ENGINE, TARGET_VS_SEPARATE), (DBOS_ENGINE, 10.0)):
            ratio = engine_ratio(results.engines, backend, against)
            if ratio is None:
                missing = next(
                    (r for r in results.engines if r.backend == backend and r.engine == against),
                    None,
                )
                why = missing.error if missing is not None and missing.error else "not run"
                sentences.append(f"{backend} engine against {against}: not measured ({why})")
                continue
            sentences.append(
                f"{backend} engine on turns {ratio:.2f}x {against}"
                f" ({verdict(ratio, wanted).split(': ', 1)[1]})"
            )
    paragraphs = ["Against the issue's targets: " + "; ".join(sentences) + "."]
    paragraphs += [text for text in (why_turn(results), why_engine(results)) if text]
    return "\n\n".join(paragraphs)


def why_turn(results: Results) -> str:
    trips = results.trips
    statements = [
        s for s in trips.statements or trips.sqlite_statements if s not in ("BEGIN", "COMMIT")
    ]
    if not statements:
        return ""
    wire = f" (on PostgreSQL {trips.store} round trips against {trips.raw})" if trips.store else ""
    return (
        f"Where the gap to raw is: the store's turn sends {len(statements)} statements where"
        f" raw sends {RAW_STATEMENTS}{wire} — the execution locked through the item, the"
        " fenced settle, one `UPDATE` of the execution for the sequences and the state, the"
        " events' `INSERT`, the successor's `INSERT` — the same statements, all on the"
        " precompiled driver path (statestore/db/driver.py). What is left is the Python raw"
        " does not do: every argument checked and encoded before the first statement (event"
        " kinds validated by their models, JSON checked for size, depth and NaN), the merge"
        " patch, the tenant scope, the successor's checks, the runner's task and typed"
        " results. On SQLite the writer thread runs that Python under the GIL it shares with"
        " the event loop, so"
        " concurrent callers gain less than raw group commit does."
    )


def why_engine(results: Results) -> str:
    parts = []
    by = {(run.backend, run.engine): run for run in results.engines if run.ok}
    for backend in BACKENDS:
        turns, separate = by.get((backend, TURNS_ENGINE)), by.get((backend, SEPARATE_ENGINE))
        if turns is None or separate is None:
            continue
        parts.append(
            f"{backend}: {turns.calls / turns.steps:.1f} transactions per step on turns against"
            f" {separate.calls / separate.steps:.1f} on separate calls, yet"
            f" {turns.steps_s:,.0f} against {separate.steps_s:,.0f} steps/s"
        )
    text = ""
    if parts:
        text = (
            "Why the engine on turns is not 3x the one on separate calls: it makes a third of"
            " the store calls, but each turn costs several of the separate engine's"
            " fast-path calls (above) — "
            + "; ".join(parts)
            + ". Each step still pays its claim (a transaction of its own) and the workers'"
            " 2 ms idle poll, which both engines share; with five steps per execution and"
            " four workers the claim and the poll are a large part of a turns step."
        )
    dbos = []
    for backend in BACKENDS:
        peer = by.get((backend, DBOS_ENGINE))
        raw = [c for c in results.cells if c.backend == backend and c.timings["raw"].ok]
        if peer is None or not peer.steps:
            continue
        sentence = (
            f"on {backend} DBOS commits {peer.calls / peer.steps:.1f} transactions"
            f" ({peer.statements / peer.steps:.1f} statements) per step on its system database"
        )
        if raw:
            best = max(c.timings["raw"].ops_s for c in raw)
            sentence += (
                f", and even the raw turn transaction alone, with no claim, runs at"
                f" {best:,.0f}/s in its best cell above, {best / peer.steps_s:.1f}x DBOS's"
                " steps/s"
            )
        dbos.append(sentence)
    if dbos:
        text += (
            ("\n\n" if text else "")
            + "Why 10x DBOS is out of reach on the same database: a DBOS step is a checkpoint"
            " of the step's output, no claim and no queue between steps (the workflow runs on"
            " in the calling thread), and its statements are small: "
            + "; ".join(dbos)
            + ". An engine that claims and commits one turn per step does at least two"
            " transactions per step, about what DBOS does, so it can be faster per step only"
            " by doing less per transaction; ten times would need several steps per"
            " transaction (batched claims and turns), which is not what this cell measures."
        )
    return text


# ------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION,
        help=f"seconds per commit_turn cell and contender (default {DEFAULT_DURATION})",
    )
    parser.add_argument(
        "--executions",
        type=int,
        default=DEFAULT_EXECUTIONS,
        help=f"executions per engine and backend (default {DEFAULT_EXECUTIONS})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_DURATION} s per cell and {QUICK_EXECUTIONS} executions per engine:"
        " checks the harness, not a measurement",
    )
    parser.add_argument("--only", choices=BACKENDS, help="run one backend only")
    parser.add_argument("--no-dbos", action="store_true", help="leave DBOS out")
    parser.add_argument(
        "--write",
        nargs="?",
        const="docs/benchmarks.md",
        metavar="PATH",
        help="also write the section into PATH (default docs/benchmarks.md)",
    )
    parser.add_argument(
        "--pg-url",
        default=DEFAULT_PG_ADMIN_URL,
        help="PostgreSQL server to use; the bench creates its own databases there"
        " (default $STATESTORE_BENCH_PG_URL or postgresql://postgres@127.0.0.1:5432/test)",
    )
    args = parser.parse_args(argv)
    args.rounds = ENGINE_ROUNDS
    if args.quick:
        args.duration = QUICK_DURATION
        args.executions = QUICK_EXECUTIONS
        args.rounds = QUICK_ENGINE_ROUNDS
    if args.duration <= 0 or args.executions <= 0:
        parser.error("--duration and --executions must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    results = asyncio.run(run(args))
    progress(f"done in {time.perf_counter() - started:.1f} s")
    section = markdown(results, args)
    print(section)
    for error in results.errors:
        print(f"ERROR: {error}", file=sys.stderr)
    if results.errors:
        if args.write:
            print(f"not writing {args.write}: the run had errors", file=sys.stderr)
        return 1
    if args.write:
        target = Path(args.write)
        if not target.is_absolute():
            target = REPO / target
        existing = target.read_text(encoding="utf-8") if target.exists() else "# Benchmarks\n"
        write_document(target, existing, turns=f"{TURNS_BEGIN}\n{section}{TURNS_END}\n")
        progress(f"wrote the turns section of {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
