"""Hot-path benchmark: the store against the raw driver running the store's own SQL on the
same schema, in the same run.

Cells (bench/cells.py): append_event, get_events of 100 events, create_execution,
get_execution, claim+complete of one work item and of 100, validate_token, with one caller;
append_event and claim+complete with concurrent callers too (16 asyncio tasks on SQLite, 8
workers on PostgreSQL). Contenders: ``store``, the public facade; ``raw``, the store's
compiled statements (bench/statements.py) through stdlib ``sqlite3`` behind one thread hop
(bench/sqlite_raw.py, which also has ``gc``, raw group commit, and ``sync``, a reference)
or through ``asyncpg`` (bench/pg_raw.py). Each cell: a warm-up, then ``--duration`` seconds
per contender in rounds that alternate them (bench/harness.py); queue cells end with a check
that every claimed item was completed exactly once.

The figures go to stdout as Markdown and, with ``--json``, to a JSON file; ``--write`` also
renders them (bench/render.py) into the marked blocks of docs/benchmarks.md, leaving the
hand-written prose around them as it is.

Usage::

    .venv/bin/python bench/run.py [--duration 1.0] [--quick] [--only sqlite|postgresql]
                                  [--peers] [--json [PATH]] [--write [PATH]] [--pg-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import otel
import sqlalchemy
from cells import target
from common import (
    code_version,
    command_line,
    cpu_model,
    nproc,
    progress,
    progress_bar,
    replace_blocks,
)
from harness import ROUNDS, BenchError, Cell
from pg_raw import bench_postgres
from render import DEFAULT_JSON, blocks

BACKENDS = ("sqlite", "postgresql")
CELLS = {"sqlite": 10 + otel.available(), "postgresql": 9 + otel.available()}
"""Rows each backend adds to the table (the progress bar's length)."""
DEFAULT_DURATION, QUICK_DURATION = 1.0, 0.2
DEFAULT_PG_ADMIN_URL = os.environ.get(
    "STATESTORE_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION,
        help=f"seconds per cell and contender (default {DEFAULT_DURATION})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_DURATION} s per cell: checks the harness, not a measurement",
    )
    parser.add_argument("--only", choices=BACKENDS, help="run one backend only")
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also measure the peer libraries (bench/peers.py; the bench extra)",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const=str(DEFAULT_JSON),
        metavar="PATH",
        help="write the figures as JSON (default path bench/results/run.json)",
    )
    parser.add_argument(
        "--write",
        nargs="?",
        const="docs/benchmarks.md",
        metavar="PATH",
        help="render the figures into the marked blocks of PATH (default docs/benchmarks.md)",
    )
    parser.add_argument(
        "--pg-url",
        default=DEFAULT_PG_ADMIN_URL,
        help="PostgreSQL server; the bench creates its own database there"
        " (default $STATESTORE_BENCH_PG_URL or the local test server)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = QUICK_DURATION
    if args.duration <= 0:
        parser.error("--duration must be positive")
    return args


async def run(args: argparse.Namespace, info: dict[str, str]) -> tuple[list[Cell], list[str]]:
    cells: list[Cell] = []
    errors: list[str] = []
    backends = [args.only] if args.only else list(BACKENDS)
    progress(f"statestore bench: {', '.join(backends)}, {args.duration:g} s per cell")
    if "sqlite" in backends:
        from sqlite_raw import bench_sqlite

        cells += await bench_sqlite(args.duration, info)
    if "postgresql" in backends:
        try:
            cells += await bench_postgres(args.duration, args.pg_url, info)
        except BenchError as exc:
            errors.append(str(exc))
    return cells, errors


def results(
    args: argparse.Namespace, cells: list[Cell], info: dict[str, str], peers: list[Any] | None
) -> dict[str, Any]:
    """The run as JSON: where and how it ran, and every cell's figures and target."""
    software = ", ".join(
        [
            f"Python {platform.python_version()}",
            f"SQLite {info.get('sqlite', 'not measured')}",
            f"PostgreSQL {info.get('postgresql', 'not measured')}",
            f"SQLAlchemy {sqlalchemy.__version__}",
            f"asyncpg {asyncpg.__version__}",
        ]
    )
    return {
        "command": command_line(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "code": code_version(),
        "machine": f"{nproc()} CPUs (nproc), {cpu_model()}; {platform.system()}"
        f" {platform.release()}",
        "software": software,
        "duration": args.duration,
        "rounds": ROUNDS,
        "cells": [
            {
                **cell.to_json(),
                "target": target(cell.backend, cell.operation, cell.callers)
                if "raw" in cell.timings
                else None,
            }
            for cell in cells
        ],
        "peers": None if peers is None else [dataclasses.asdict(cell) for cell in peers],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info: dict[str, str] = {}
    started = time.perf_counter()
    backends = [args.only] if args.only else list(BACKENDS)
    with progress_bar(sum(CELLS[backend] for backend in backends)):
        cells, errors = asyncio.run(run(args, info))
    peers = None
    if args.peers:
        from peers import bench_peers

        peers = asyncio.run(bench_peers(args.duration, args.pg_url, only=args.only))
    for cell in cells:
        errors += cell.errors()
    progress(f"done in {time.perf_counter() - started:.1f} s")
    data = results(args, cells, info, peers)
    print("\n\n".join(blocks(data).values()))
    for error in errors:
        print(f"ERROR: {error}", file=sys.stderr)
    if errors:
        if args.json or args.write:
            print("not writing the results: the run had errors", file=sys.stderr)
        return 1
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        progress(f"wrote {path}")
    if args.write:
        replace_blocks(Path(args.write), blocks(data))
        progress(f"wrote the marked blocks of {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
