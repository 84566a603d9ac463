"""What the benchmark scripts share: the event they write, JSON text, timing, output, where a
run ran, and writing their sections of docs/benchmarks.md."""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from statestore.event_kinds import NodeCompleted
from statestore.validation import dump_json

# The event (~200 B of JSON) every timed append writes and every read returns.
KIND = NodeCompleted(
    node_id="summarise",
    output={"summary": "The page describes the quarterly results and the outlook.", "tokens": 412},
    state_patch={"summarise": "done", "step": 3},
    duration_ms=1834,
)


dumps = dump_json
"""JSON text the way the store serialises it: the store's own serialiser."""


_console = Console(stderr=True, highlight=False, soft_wrap=True)
_bar: Progress | None = None
_task: TaskID | None = None


def progress(message: str) -> None:
    """A progress line on stderr (stdout carries the results), printed above the progress
    bar when one is showing."""
    _console.print(message, markup=False)


@contextlib.contextmanager
def progress_bar(total: int, description: str = "cells") -> Iterator[None]:
    """Show a bar of ``total`` steps on stderr while the block runs (a terminal only; logs
    keep the plain lines); :func:`step` advances it."""
    global _bar, _task
    if not _console.is_terminal:
        yield
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=_console, transient=True) as bar:
        _bar, _task = bar, bar.add_task(description, total=total)
        try:
            yield
        finally:
            _bar = _task = None


def step(description: str | None = None) -> None:
    """One step of the current progress bar done (nothing without a bar)."""
    if _bar is not None and _task is not None:
        _bar.update(_task, advance=1, description=description or _bar.tasks[0].description)


def check(condition: bool, message: str) -> None:
    """Stop the run when a benchmarked call did not do what it should."""
    if not condition:
        raise RuntimeError(message)


@dataclass
class Timing:
    """Calls, items, timed wall time and per-call latencies of one side of a cell."""

    calls: int = 0
    items: int = 0
    elapsed_ns: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.calls > 0

    @property
    def ops_s(self) -> float:
        """Operations per second; for batched calls, items per second."""
        return self.items / (self.elapsed_ns / 1e9) if self.elapsed_ns else 0.0

    def percentile_us(self, p: float) -> float:
        """Nearest-rank percentile of the per-call latency in µs; NaN without latencies."""
        values = sorted(self.latencies_ns)
        if not values:
            return float("nan")
        k = min(len(values) - 1, max(0, round(p / 100.0 * (len(values) - 1))))
        return values[k] / 1000.0


async def timed_calls(
    op: Callable[[], Awaitable[object]], deadline: int, latencies: list[int]
) -> tuple[int, int]:
    """Await ``op`` again and again until ``deadline`` (``perf_counter_ns``), each call's
    latency appended to ``latencies``; returns (calls, the clock after the last one)."""
    clock = time.perf_counter_ns
    calls = 0
    end = clock()
    while end < deadline:
        before = clock()
        await op()
        end = clock()
        latencies.append(end - before)
        calls += 1
    return calls, end


def timed_sync_calls(
    op: Callable[[], object], deadline: int, latencies: list[int]
) -> tuple[int, int]:
    """:func:`timed_calls` for a synchronous ``op``."""
    clock = time.perf_counter_ns
    calls = 0
    end = clock()
    while end < deadline:
        before = clock()
        op()
        end = clock()
        latencies.append(end - before)
        calls += 1
    return calls, end


def fmt_ratio(ratio: float | None) -> str:
    """A ratio with two decimals (three below 0.1); "n/a" when there is none."""
    if ratio is None:
        return "n/a"
    return f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.3f}"


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database on the same server."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def pg_admin(admin_url: str, *statements: str) -> None:
    """Run administrative statements (CREATE/DROP DATABASE) one by one, outside a
    transaction."""
    conn = await asyncpg.connect(admin_url, timeout=5)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


SCALE_BEGIN, SCALE_END = "<!-- scale -->", "<!-- /scale -->"
"""Markers of the section bench/scale.py writes into docs/benchmarks.md."""
TURNS_BEGIN, TURNS_END = "<!-- turns -->", "<!-- /turns -->"
"""Markers of the section bench/turns.py writes into docs/benchmarks.md."""
SECTIONS = {"turns": (TURNS_BEGIN, TURNS_END), "scale": (SCALE_BEGIN, SCALE_END)}
"""The sections other scripts own, by name, in the order they close the document."""


def section_block(text: str, name: str) -> str:
    """The named section (``SECTIONS``) of a document, markers included ("" if none)."""
    begin, end = SECTIONS[name]
    if begin not in text or end not in text:
        return ""
    inside = text.split(begin, 1)[1].split(end, 1)[0]
    return f"{begin}{inside}{end}\n"


def scale_block(text: str) -> str:
    """The scale section of a document, markers included ("" if it has none)."""
    return section_block(text, "scale")


def write_document(
    path: Path, text: str, *, scale: str | None = None, turns: str | None = None
) -> None:
    """Write ``path``: ``text`` (less any marked section it holds) plus the marked sections
    of ``SECTIONS``, each the one given here (markers included) or else the one ``path``
    already holds, so that every script may rewrite the document without losing the
    others' parts."""
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    given = {"scale": scale, "turns": turns}
    body = text
    for name in SECTIONS:
        block = section_block(body, name)
        if block:
            body = body.replace(block, "")
    blocks = [
        kept
        for name in SECTIONS
        if (kept := given[name] if given[name] is not None else section_block(existing, name))
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    body = body.rstrip("\n") + "\n"
    path.write_text(body + "".join("\n" + kept for kept in blocks), encoding="utf-8")


# ------------------------------------------------------------------ where a run ran

REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for text in cpuinfo:
                if text.startswith("model name"):
                    return text.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def nproc() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 0


def command_line() -> str:
    """This process's command line, the interpreter relative to the working directory."""
    python = Path(sys.executable)
    try:
        shown = str(python.relative_to(Path.cwd()))
    except ValueError:
        shown = str(python)
    return shlex.join([shown, *sys.argv])


def code_version() -> str:
    """The commit the store was measured at, and whether its code had local changes."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "statestore", "alembic"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return f"commit {commit}" + (" with uncommitted changes to the store" if dirty else "")


def replace_blocks(path: Path, blocks: dict[str, str]) -> None:
    """Write each ``blocks[name]`` between the ``<!-- name -->`` and ``<!-- /name -->``
    markers of ``path``, leaving everything outside them as it is; a block the document
    does not hold yet is added at its end (a new document starts with a title)."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    for name, content in blocks.items():
        begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
        block = f"{begin}\n{content.strip()}\n{end}"
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            text = head + block + rest.split(end, 1)[1]
        else:
            text = text.rstrip("\n") + f"\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
