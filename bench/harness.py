"""How a cell is measured: contenders, warm-up, alternating rounds, the queue's top-up and
its exactly-once check. Shared by bench/run.py and bench/turns.py."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from common import Timing, progress, step, timed_calls, timed_sync_calls

AsyncOp = Callable[[], Awaitable[object]]
SyncOp = Callable[[], object]
ROUNDS = 4
"""Timed rounds per cell; each round runs every contender, starting with a different one."""


class BenchError(Exception):
    """The bench cannot run a backend (e.g. PostgreSQL is unreachable)."""


@dataclass
class Contender:
    """One way of doing an operation: an async callable, several concurrent ones (one per
    caller, each may hold its own connection), or a sync one (a reference)."""

    label: str
    async_op: AsyncOp | None = None
    sync_op: SyncOp | None = None
    callers: Sequence[AsyncOp] = ()
    prepare: Callable[[float], Awaitable[None]] | None = None
    """Untimed work before each run, given the run's length in seconds (queue top-up)."""
    items_per_call: int = 1
    runner: Callable[[float, Timing], Awaitable[None]] | None = None
    """Runs the contender its own way for the given seconds, adding to the timing (e.g. a
    worker draining a backlog), instead of timed calls."""

    async def run_for(self, seconds: float, into: Timing) -> None:
        if self.prepare is not None:
            await self.prepare(seconds)
        if self.runner is not None:
            return await self.runner(seconds, into)
        clock = time.perf_counter_ns
        start = clock()
        deadline = start + int(seconds * 1e9)
        if self.callers:
            calls = sum(
                await _all(timed_calls(op, deadline, into.latencies_ns) for op in self.callers)
            )
            end = clock()
        elif self.async_op is not None:
            calls, end = await timed_calls(self.async_op, deadline, into.latencies_ns)
        else:
            assert self.sync_op is not None
            calls, end = timed_sync_calls(self.sync_op, deadline, into.latencies_ns)
        into.calls += calls
        into.items += calls * self.items_per_call
        into.elapsed_ns += end - start


async def _all(runs: Any) -> list[int]:
    """Every concurrent caller's call count; the first failure stops the cell."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(run) for run in runs]
    except BaseExceptionGroup as errors:
        raise errors.exceptions[0] from None
    return [task.result()[0] for task in tasks]


@dataclass
class Cell:
    """One row of the table: an operation on a backend, every contender's timing."""

    backend: str
    operation: str
    timings: dict[str, Timing]
    callers: int = 1
    problem: str | None = None
    """Set when the data is wrong after the cell (e.g. an item not completed exactly once)."""

    def ratio_to(self, label: str) -> float | None:
        store, other = self.timings["store"], self.timings.get(label)
        if other is None or not (store.ok and other.ok) or other.ops_s == 0:
            return None
        return store.ops_s / other.ops_s

    @property
    def ratio(self) -> float | None:
        return self.ratio_to("raw")

    def errors(self) -> list[str]:
        name = f"{self.backend} {self.operation} ({self.callers} callers)"
        errors = [f"{name} {label}: {t.error}" for label, t in self.timings.items() if t.error]
        return errors + ([f"{name}: {self.problem}"] if self.problem else [])

    def to_json(self) -> dict[str, Any]:
        """The cell's figures (what bench/render.py needs; no per-call latencies)."""
        return {
            "backend": self.backend,
            "operation": self.operation,
            "callers": self.callers,
            "contenders": {
                label: {
                    "ops_s": round(t.ops_s, 1) if t.ok else None,
                    "p50_us": round(t.percentile_us(50), 1) if t.ok else None,
                    "p99_us": round(t.percentile_us(99), 1) if t.ok else None,
                    "calls": t.calls,
                    "error": t.error,
                }
                for label, t in self.timings.items()
            },
            "problem": self.problem,
        }


async def measure(
    backend: str,
    operation: str,
    contenders: Sequence[Contender],
    duration: float,
    callers: int = 1,
) -> Cell:
    """Warm every contender up, then run them for ``duration`` each, in ``ROUNDS``
    alternating rounds (so drift on a noisy machine hits all of them alike)."""
    timings = {c.label: Timing() for c in contenders}

    async def run(contender: Contender, seconds: float, into: Timing) -> None:
        try:
            await contender.run_for(seconds, into)
        except Exception as exc:
            timings[contender.label].error = f"{type(exc).__name__}: {exc}"

    for contender in contenders:
        await run(contender, min(0.2, max(0.05, duration / 5)), Timing())
    for round_no in range(ROUNDS):
        shift = round_no % len(contenders)
        for contender in [*contenders[shift:], *contenders[:shift]]:
            if timings[contender.label].error is None:
                await run(contender, duration / ROUNDS, timings[contender.label])
    name = f"{operation}, {callers} callers" if callers > 1 else operation
    for label, t in timings.items():
        figures = (
            f"FAILED: {t.error}"
            if t.error
            else f"{t.ops_s:>9,.0f} ops/s  p50 {t.percentile_us(50):>9,.1f} µs"
            f"  p99 {t.percentile_us(99):>9,.1f} µs"
        )
        progress(f"  {backend:<10} {name:<30} {label:<6} {figures}")
    step(f"{backend} {name}")
    return Cell(backend, operation, timings, callers)


class WorkQueue:
    """The pending items of one queue type, with what the contenders did to them.

    Before every timed run the queue is topped up in bulk, untimed, to twice the items the
    run can claim at the fastest rate seen so far (or a generous first guess), so a run never
    finds it empty and every run starts from about the same depth. Ops report each claim
    (``took``) and each completion (``done``, per contender); :meth:`check` then compares
    that with the table."""

    def __init__(
        self,
        queue_type: str,
        fill: Callable[[str, int], Awaitable[None]],
        counts: Callable[[str], Awaitable[Sequence[tuple[str, str | None, int]]]],
        rate_guess: float,
        headroom: int,
    ) -> None:
        self.queue_type = queue_type
        self._fill, self._counts = fill, counts
        self._rate, self._headroom = rate_guess, headroom
        self.pending = 0
        self.completed: Counter[str] = Counter()
        self._taken = 0
        self._since: int | None = None

    async def top_up(self, seconds: float) -> None:
        now = time.perf_counter_ns()
        if self._since is not None and now > self._since:
            self._rate = max(self._rate, self._taken / ((now - self._since) / 1e9))
        missing = int(self._rate * seconds * 2) + self._headroom - self.pending
        if missing > 0:
            await self._fill(self.queue_type, missing)
            self.pending += missing
        self._taken = 0
        self._since = time.perf_counter_ns()

    def took(self, count: int) -> None:
        self.pending -= count
        self._taken += count

    def done(self, label: str, count: int) -> None:
        self.completed[label] += count

    async def check(self, cell: Cell) -> Cell:
        """Set ``cell.problem`` unless the table holds, per contender (the worker id's
        prefix), exactly the items it completed, the rest pending and none left claimed."""
        if any(t.error for t in cell.timings.values()):
            return cell
        found: Counter[str] = Counter()
        for status, worker_id, count in await self._counts(self.queue_type):
            found[f"{status} {(worker_id or '').split('-', 1)[0]}".strip()] += count
        expected = Counter({f"completed {label}": n for label, n in self.completed.items()})
        expected["pending"] = self.pending
        if +found != +expected:
            cell.problem = (
                f"queue {self.queue_type}: by status and contender, expected {dict(+expected)},"
                f" the table holds {dict(+found)}"
            )
        return cell


def fmt_ops(value: float | None) -> str:
    """ops/s as the tables show it ("FAILED" without a figure)."""
    return "FAILED" if value is None else f"{value:,.0f}"


def fmt_latency(value: float | None) -> str:
    """A latency in µs as the tables show it."""
    if value is None:
        return "FAILED"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def fmt_rate(timing: Timing | None) -> str:
    """A contender's ops/s ("-" when the cell has no such contender)."""
    if timing is None:
        return "-"
    return fmt_ops(timing.ops_s if timing.ok else None)


def fmt_us(timing: Timing, p: float) -> str:
    """A contender's latency percentile ``p`` in µs."""
    return fmt_latency(timing.percentile_us(p) if timing.ok else None)
