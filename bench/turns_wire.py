"""bench/turns.py, part 3: the PostgreSQL round trips of one turn, counted on the wire by a
relay (:class:`WireCounter`), and the statements one turn sends."""

from __future__ import annotations

import asyncio
import re
import statistics
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import sqlalchemy
from cells import WORK_PAYLOAD
from common import progress
from sqlalchemy import event
from turns_cells import WORKFLOW_ID, WORKFLOW_VERSION, pg_raw_turn, pg_run, state_patch, store_turn

from statestore import StateStore, WorkflowExecution, WorkItem

STARTUP_CODES = {80877103, 80877104}
"""SSLRequest and GSSENCRequest: untyped messages before the StartupMessage."""


class WireCounter:
    """A TCP relay to PostgreSQL that counts the client's round trips: the messages after
    which a client waits for the server (Sync of the extended protocol, Query of the simple
    one). Pipelined messages up to one Sync count once, as they travel together."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self.round_trips = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        tasks = [
            asyncio.create_task(self._pump(reader, up_writer, count=True)),
            asyncio.create_task(self._pump(up_reader, writer, count=False)),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for closing in (writer, up_writer):
                closing.close()
            self._tasks.difference_update(tasks)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, count: bool
    ) -> None:
        buffer = b""
        startup = True
        while data := await reader.read(65536):
            writer.write(data)
            if count:
                buffer += data
                while True:
                    if startup:  # untyped: int32 length, int32 code
                        if len(buffer) < 8:
                            break
                        length, code = struct.unpack("!ii", buffer[:8])
                        if len(buffer) < length:
                            break
                        buffer = buffer[length:]
                        startup = code in STARTUP_CODES
                        continue
                    if len(buffer) < 5:
                        break
                    kind, length = buffer[:1], struct.unpack("!i", buffer[1:5])[0]
                    if len(buffer) < 1 + length:
                        break
                    buffer = buffer[1 + length :]
                    if kind in (b"S", b"Q"):
                        self.round_trips += 1
            await writer.drain()


@dataclass
class RoundTrips:
    store: int = 0
    raw: int = 0
    statements: list[str] = field(default_factory=list)
    """The statements of one store turn, in order (BEGIN and COMMIT included)."""
    sqlite_statements: list[str] = field(default_factory=list)


def statement_name(statement: str) -> str:
    """e.g. "SELECT workflow_executions FOR UPDATE", "UPDATE work_items"."""
    text = " ".join(statement.split())
    verb = text.split(" ", 1)[0].upper()
    pattern = {"SELECT": r"\bFROM (\w+)", "UPDATE": r"^UPDATE (\w+)", "INSERT": r"\bINTO (\w+)"}
    match = re.search(pattern.get(verb, r"$^"), text, re.IGNORECASE)
    name = f"{verb} {match.group(1)}" if match else verb
    if verb == "WITH":
        name = "WITH … " + " ".join(re.findall(r"\b(UPDATE|INSERT INTO) (\w+)", text)[-1])
    if re.search(r"FOR UPDATE", text, re.IGNORECASE):
        name += " FOR UPDATE"
    return name


async def turn_statements(store: StateStore, execution_id: uuid.UUID, samples: int) -> list[str]:
    """The statements of one ``commit_turn``, from ``before_cursor_execute``, ``begin`` and
    ``commit`` listeners (with a cursor listener the store runs its statements through
    ``exec_driver_sql``: this run is separate from the timed ones). On PostgreSQL they listen
    on ``store.engine.sync_engine``; on SQLite, whose writer has an engine of its own, on
    every engine of the process (nothing else runs meanwhile)."""
    seen: list[str] = []

    def on_statement(*args: Any) -> None:
        seen.append(statement_name(args[2]))

    target: Any = store.engine.sync_engine if store.dialect == "postgresql" else sqlalchemy.Engine
    hooks: list[tuple[str, Callable[..., None]]] = [
        ("before_cursor_execute", on_statement),
        ("begin", lambda _conn: seen.append("BEGIN")),
        ("commit", lambda _conn: seen.append("COMMIT")),
    ]
    for name, hook in hooks:
        event.listen(target, name, hook)
    try:
        turns: list[list[str]] = []
        for _ in range(samples):
            item = await claimed(store, execution_id, "statements")
            seen.clear()
            await store_turn(store, item.id, item.execution_id, "statements", item.lease_fence)
            turns.append(list(seen))
    finally:
        for name, hook in hooks:
            event.remove(target, name, hook)
    return turns[-1]


async def claimed(store: StateStore, execution_id: uuid.UUID, worker: str) -> WorkItem:
    await store.enqueue_work_item(
        WorkItem(execution_id=execution_id, node_id="n", queue_type=worker, payload=WORK_PAYLOAD)
    )
    item = await store.claim_work_item(worker, [worker])
    assert item is not None
    return item


async def pg_round_trips(url: str, samples: int, result: RoundTrips) -> None:
    """Round trips of one store turn and one raw turn through :class:`WireCounter`, each
    the median over ``samples`` turns after a warm-up (prepared statements cached), into
    ``result``."""
    parts = urlsplit(url)
    counter = WireCounter(parts.hostname or "127.0.0.1", parts.port or 5432)
    port = await counter.start()
    netloc = f"{parts.username}@127.0.0.1:{port}" if parts.username else f"127.0.0.1:{port}"
    relayed = urlunsplit(parts._replace(netloc=netloc))
    try:
        store = await StateStore.connect(relayed)
        try:
            execution = WorkflowExecution(
                workflow_id=WORKFLOW_ID, workflow_version=WORKFLOW_VERSION, status="running"
            )
            await store.create_execution(execution)
            counts = []
            for sample in range(samples + 3):
                item = await claimed(store, execution.execution_id, "wire")
                before = counter.round_trips
                await store_turn(store, item.id, item.execution_id, "wire", item.lease_fence)
                if sample >= 3:
                    counts.append(counter.round_trips - before)
            result.store = int(statistics.median(counts))
            result.statements = await turn_statements(store, execution.execution_id, 3)
            turn = pg_raw_turn(store)
            conn = await asyncpg.connect(relayed)
            try:
                counts = []
                for sample in range(samples + 3):
                    item = await claimed(store, execution.execution_id, "wire-raw")
                    before = counter.round_trips
                    await pg_run(
                        conn,
                        turn.steps(item.id, "wire-raw", state_patch("wire-raw"), item.lease_fence),
                    )
                    if sample >= 3:
                        counts.append(counter.round_trips - before)
                result.raw = int(statistics.median(counts))
            finally:
                await conn.close()
        finally:
            await store.close()
    finally:
        await counter.close()
    progress(
        f"  postgresql round trips per turn: store {result.store}, raw {result.raw};"
        f" statements: {', '.join(result.statements)}"
    )
