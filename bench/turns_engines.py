"""bench/turns.py, part 2: a workflow engine on turns against the same engine on the
separate calls from before turns (:class:`TurnsEngine`, :class:`SeparateCallsEngine`, on
one store) and against DBOS (:func:`dbos_child`, in a process of its own: run as
``bench/turns_engines.py BACKEND URL EXECUTIONS``)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.metadata
import json
import sqlite3
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy
from common import check, progress
from sqlalchemy import event
from turns_cells import WORKFLOW_ID, WORKFLOW_VERSION

from statestore import (
    NodeCompleted,
    NodeScheduled,
    Snapshot,
    StateStore,
    WorkflowCompleted,
    WorkflowExecution,
    WorkflowStarted,
    WorkflowStatus,
    WorkItem,
)

REPO = Path(__file__).resolve().parent.parent
WARMUP_EXECUTIONS = 4
"""Executions each engine runs untimed before its timed ones (connections, caches)."""
ENGINE_WORKERS = 4
GIVE_UP_AFTER = 300.0
"""Seconds an engine run may take before the bench calls it stuck."""
ENGINE_QUEUE = "engine"
NODES = ("a", "b", "c", "d", "e")
"""The workflow: a chain a -> b -> c -> d -> e (see turns.py's ENGINE_NOTE)."""
DBOS_MARK = "DBOS-RESULT "

TURNS_ENGINE = "turns"
SEPARATE_ENGINE = "separate calls"
DBOS_ENGINE = "DBOS"


@dataclass
class EngineRun:
    """What one engine did on one backend, over its timed rounds."""

    backend: str
    engine: str
    executions: int = 0
    steps: int = 0
    seconds: float = 0.0
    calls: int = 0
    """Store calls the engine made (starts included), each one transaction; for DBOS the
    commits on its system database (all its threads) over the timed run."""
    statements: int = 0
    """DBOS only: the statements it sent over the timed run."""
    note: str = ""
    error: str | None = None

    @property
    def steps_s(self) -> float:
        return self.steps / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and self.steps > 0


class Engine:
    """A workflow engine on the store: a starter task starts the executions while
    ENGINE_WORKERS worker tasks claim items and run their nodes, until every execution is
    completed. ``calls`` counts the store calls it made."""

    label = ""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.calls = 0
        self.steps = 0
        self.completed = 0
        self._target = 0
        self._done = asyncio.Event()

    async def start(self, execution: WorkflowExecution) -> None:
        raise NotImplementedError

    async def step(self, worker: str, item: WorkItem) -> None:
        raise NotImplementedError

    def finished_one(self) -> None:
        self.completed += 1
        if self.completed >= self._target:
            self._done.set()

    async def run(self, executions: int) -> float:
        """Start ``executions`` executions and run them to completion; the seconds taken."""
        self._target = self.completed + executions
        self._done.clear()
        started = time.perf_counter()

        async def starter() -> None:
            for number in range(executions):
                await self.start(
                    WorkflowExecution(
                        workflow_id=WORKFLOW_ID,
                        workflow_version=WORKFLOW_VERSION,
                        status="running",
                        initial_input={"n": number},
                    )
                )

        async def worker(name: str) -> None:
            while not self._done.is_set():
                item = await self.store.claim_work_item(name, [ENGINE_QUEUE])
                self.calls += 1
                if item is None:
                    await asyncio.sleep(0.002)
                    continue
                await self.step(name, item)
                self.steps += 1

        tasks = [asyncio.create_task(starter())]
        tasks += [asyncio.create_task(worker(f"w{n}")) for n in range(ENGINE_WORKERS)]
        try:
            await asyncio.wait_for(self._done.wait(), timeout=GIVE_UP_AFTER)
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return time.perf_counter() - started


def node_events(node: str, output: dict[str, Any]) -> list[Any]:
    """The events of a node's step: the node completed, then the next one scheduled (or
    the workflow completed). Both engines write exactly these."""
    index = NODES.index(node)
    done = NodeCompleted(node_id=node, output=output, state_patch={node: output}, duration_ms=1)
    if index + 1 < len(NODES):
        return [done, NodeScheduled(node_id=NODES[index + 1], queue_type=ENGINE_QUEUE)]
    return [done, WorkflowCompleted(final_state={})]


def node_work(item: WorkItem) -> dict[str, Any]:
    """The node's work (none: the bench measures what the engine costs around it)."""
    return {"node": item.node_id, "attempt": item.attempt, "tokens": 412}


def first_events(execution: WorkflowExecution) -> list[Any]:
    return [
        WorkflowStarted(
            workflow_id=WORKFLOW_ID,
            workflow_version=WORKFLOW_VERSION,
            initial_input=execution.initial_input,
        ),
        NodeScheduled(node_id=NODES[0], queue_type=ENGINE_QUEUE),
    ]


def engine_item(execution_id: uuid.UUID, node: str) -> WorkItem:
    return WorkItem(
        execution_id=execution_id, node_id=node, queue_type=ENGINE_QUEUE, payload={"node": node}
    )


class TurnsEngine(Engine):
    """Each step: claim, the node's work under ``heartbeat``, ONE ``commit_turn`` (the
    item settled, the events, the state patch, the next item; on the last node also the
    status and the snapshot). Each start: ONE ``start_execution``."""

    label = TURNS_ENGINE

    async def start(self, execution: WorkflowExecution) -> None:
        await self.store.start_execution(
            execution,
            events=first_events(execution),
            enqueue=[engine_item(execution.execution_id, NODES[0])],
        )
        self.calls += 1

    async def step(self, worker: str, item: WorkItem) -> None:
        store = self.store
        async with store.heartbeat(item, worker_id=worker):
            output = node_work(item)
        index = NODES.index(item.node_id)
        last = index + 1 == len(NODES)
        await store.commit_turn(
            item.id,
            worker_id=worker,
            lease_fence=item.lease_fence,
            events=node_events(item.node_id, output),
            state_patch={item.node_id: output},
            enqueue=[] if last else [engine_item(item.execution_id, NODES[index + 1])],
            status=WorkflowStatus.COMPLETED if last else None,
            snapshot=last,
        )
        self.calls += 1
        if last:
            self.finished_one()


class SeparateCallsEngine(Engine):
    """The same engine on the calls of the store before turns (the demo at commit 278d6f7):
    each step claims, renews the lease, appends the events, patches the state, completes the
    item and enqueues the next: six transactions. The last node instead reads the execution
    and its last sequence, writes the snapshot and moves the status. Each start: create the
    execution, append its first events, enqueue the first item."""

    label = SEPARATE_ENGINE

    async def start(self, execution: WorkflowExecution) -> None:
        store = self.store
        await store.create_execution(execution)
        await store.append_events(execution.execution_id, first_events(execution))
        await store.enqueue_work_item(engine_item(execution.execution_id, NODES[0]))
        self.calls += 3

    async def step(self, worker: str, item: WorkItem) -> None:
        store, eid = self.store, item.execution_id
        await store.renew_lease(item.id, worker, lease_fence=item.lease_fence)
        output = node_work(item)
        await store.append_events(eid, node_events(item.node_id, output))
        await store.patch_append_array(eid, "completed_nodes", item.node_id)
        await store.complete_work_item(item.id, worker_id=worker, lease_fence=item.lease_fence)
        self.calls += 4
        index = NODES.index(item.node_id)
        if index + 1 < len(NODES):
            await store.enqueue_work_item(engine_item(eid, NODES[index + 1]))
            self.calls += 1
            return
        execution = await store.get_execution(eid)
        latest = await store.latest_sequence(eid)
        final = execution.current_state if execution is not None else {}
        await store.write_snapshot(Snapshot(execution_id=eid, at_sequence=latest, state=final))
        await store.update_execution_status(
            eid, WorkflowStatus.COMPLETED, expected=WorkflowStatus.RUNNING
        )
        self.calls += 4
        self.finished_one()


async def engine_runs(
    backend: str, store: StateStore, executions: int, rounds: int
) -> list[EngineRun]:
    """Both store engines on one store, in alternating rounds after an untimed warm-up;
    then the check that every execution completed and no item was left behind."""
    engines: list[Engine] = [TurnsEngine(store), SeparateCallsEngine(store)]
    runs = {engine.label: EngineRun(backend, engine.label) for engine in engines}
    for engine in engines:
        await engine.run(WARMUP_EXECUTIONS)
    per_round = max(1, executions // rounds)
    for round_no in range(rounds):
        order = engines if round_no % 2 == 0 else engines[::-1]
        for engine in order:
            run = runs[engine.label]
            steps, calls = engine.steps, engine.calls
            try:
                run.seconds += await engine.run(per_round)
            except Exception as exc:
                run.error = f"{type(exc).__name__}: {exc}"
                continue
            run.steps += engine.steps - steps
            run.calls += engine.calls - calls
            run.executions += per_round
    stats = (await store.queue_stats()).get(ENGINE_QUEUE, {})
    left = {status.value: n for status, n in stats.items() if n and status.value != "completed"}
    total = sum(engine.completed for engine in engines)
    for run in runs.values():
        if left and run.error is None:
            run.error = f"items left in the queue: {left}"
        expected = run.executions * len(NODES)
        if run.error is None and run.steps != expected:
            run.error = f"{run.steps} steps recorded, {expected} expected"
    check(total == (WARMUP_EXECUTIONS + per_round * rounds) * 2, "an execution did not complete")
    for run in runs.values():
        progress(
            f"  {backend:<10} engine {run.engine:<15} {run.steps_s:>9,.0f} steps/s"
            f"  ({run.steps} steps in {run.seconds:.2f} s,"
            f" {run.calls / max(run.steps, 1):.1f} store calls per step)"
        )
    return list(runs.values())


# ------------------------------------------------------------------------------ DBOS peer


def dbos_version() -> str | None:
    try:
        return importlib.metadata.version("dbos")
    except importlib.metadata.PackageNotFoundError:
        return None


def dbos_child(backend: str, url: str, executions: int) -> int:
    """The DBOS side of the engine cell, in its own process (DBOS is a process-wide
    singleton with threads of its own): a workflow of five steps per execution, run by
    ENGINE_WORKERS threads that each call the workflow function for their share of the
    executions; prints one line ``DBOS-RESULT {json}``."""
    from dbos import DBOS, DBOSConfig

    if backend == "sqlite":
        # The store's SQLite settings: WAL (persistent in the file) and synchronous=NORMAL
        # on every connection (DBOS's own default is the rollback journal and FULL).
        path = url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("PRAGMA journal_mode = WAL")

        @event.listens_for(sqlalchemy.engine.Engine, "connect")
        def _normal(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute("PRAGMA synchronous = NORMAL")

    config: DBOSConfig = {
        "name": "statestore-bench",
        "system_database_url": url,
        "log_level": "WARNING",
        "sys_db_pool_size": ENGINE_WORKERS + 4,
    }
    DBOS(config=config)

    @DBOS.step()
    def node(name: str, number: int) -> dict[str, Any]:
        return {"node": name, "attempt": 1, "tokens": 412, "n": number}

    @DBOS.workflow()
    def workflow(number: int) -> dict[str, Any]:
        state = {}
        for name in NODES:
            state[name] = node(name, number)
        return state

    DBOS.launch()
    counted = collections.Counter[str]()

    def on_statement(*_args: Any) -> None:
        counted["statements"] += 1

    def on_commit(_connection: Any) -> None:
        counted["commits"] += 1

    event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", on_statement)
    event.listen(sqlalchemy.engine.Engine, "commit", on_commit)
    try:

        def drive(start: int, count: int, done: list[int]) -> None:
            for number in range(start, start + count * ENGINE_WORKERS, ENGINE_WORKERS):
                result = workflow(number)
                check(len(result) == len(NODES), "DBOS workflow lost a step")
                done.append(number)

        def crew(first: int, count: int) -> float:
            done: list[int] = []
            per = max(1, count // ENGINE_WORKERS)
            threads = [
                threading.Thread(target=drive, args=(first + w, per, done))
                for w in range(ENGINE_WORKERS)
            ]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - started
            check(len(done) == per * ENGINE_WORKERS, "a DBOS driver thread failed")
            return elapsed

        crew(1_000_000, WARMUP_EXECUTIONS)
        count = max(ENGINE_WORKERS, executions // ENGINE_WORKERS * ENGINE_WORKERS)
        counted.clear()
        seconds = crew(0, count)
        result = {
            "executions": count,
            "steps": count * len(NODES),
            "seconds": seconds,
            "statements": counted["statements"],
            "transactions": counted["commits"],
        }
        print(DBOS_MARK + json.dumps(result), flush=True)
    finally:
        DBOS.destroy()
    return 0


async def dbos_run(backend: str, url: str, executions: int) -> EngineRun:
    """Run :func:`dbos_child` in a subprocess on ``url``."""
    run = EngineRun(backend, DBOS_ENGINE)
    version = dbos_version()
    if version is None:
        run.error = "dbos not installed (pip install -e '.[bench]')"
        run.note = "not installed"
        return run
    run.note = f"dbos {version}"
    command = [sys.executable, __file__, backend, url, str(executions)]
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(REPO),
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=GIVE_UP_AFTER)
    except TimeoutError:
        process.kill()
        await process.wait()
        run.error = f"DBOS run took more than {GIVE_UP_AFTER:.0f} s"
        return run
    lines = [line for line in out.decode().splitlines() if line.startswith(DBOS_MARK)]
    if process.returncode != 0 or not lines:
        tail = err.decode().strip().splitlines()[-3:]
        run.error = f"DBOS child exited {process.returncode}: {' | '.join(tail)}"
        return run
    result = json.loads(lines[-1].removeprefix(DBOS_MARK))
    run.executions, run.steps, run.seconds = (
        result["executions"],
        result["steps"],
        result["seconds"],
    )
    run.calls = result["transactions"]
    run.statements = result["statements"]
    progress(
        f"  {backend:<10} engine {run.engine:<15} {run.steps_s:>9,.0f} steps/s ({version};"
        f" {run.calls / run.steps:.1f} transactions, {run.statements / run.steps:.1f}"
        " statements per step)"
    )
    return run


if __name__ == "__main__":
    backend, url, executions = sys.argv[1:]
    sys.exit(dbos_child(backend, url, int(executions)))
