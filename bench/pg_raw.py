"""PostgreSQL: the store against ``asyncpg`` running the store's statements (``raw``), with
its prepared-statement cache, one connection per caller, in a scratch database created and
dropped by the run."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import otel
from cells import (
    APPEND,
    KIND_JSON,
    KIND_TYPE,
    LEASE,
    PG_WORKERS,
    SINGLE,
    TENANT,
    StoreSide,
    appender,
    claimer,
    event_decoder,
    execution_row,
    item_row,
    queue_cell,
    seed,
    single_ops,
    split_token,
    token_ok,
)
from common import check, dumps, pg_admin, progress, with_database
from harness import BenchError, Cell, Contender, measure
from statements import CLAIM_BATCH, RawStatement, bulk_completion, compiled

from statestore import StateStore
from statestore.repositories.auth import STAND_IN

PG_DATABASE = "statestore_bench"


class PgRaw:
    """The store's statements (bench/statements.py) on one ``asyncpg`` connection; values as
    asyncpg takes them (UUIDs, aware datetimes, JSON as text)."""

    def __init__(self, conn: asyncpg.Connection, sql: dict[str, RawStatement]) -> None:
        self.conn, self.sql = conn, sql
        self._append = sql["append_one"].binder(
            "p_execution_id", "p_count", "id", "event_type", "kind", "created_at"
        )
        self._events = sql["events"].binder("p_id", "p_since", "p_limit")
        self._decode = event_decoder(sql["events"].columns, lambda v: v, lambda v: v)
        self._claim = sql["claim"].binder("p_type0", "p_now", "p_limit", "p_worker", "p_expires")
        self._complete = sql["complete"].binder("p_id0", "p_worker0", "p_fence0", "p_now")
        self._fence = sql["claim"].column("lease_fence")

    async def append(self, execution_id: uuid.UUID) -> int:
        """append_event: the store's one statement, in autocommit as the store sends it."""
        args = self._append(
            execution_id, 1, uuid.uuid4(), KIND_TYPE, dumps(KIND_JSON), datetime.now(UTC)
        )
        return int(await self.conn.fetchval(self.sql["append_one"].sql, *args))

    async def get_events(self, execution_id: uuid.UUID) -> list[dict[str, Any]]:
        return self._decode(
            await self.conn.fetch(self.sql["events"].sql, *self._events(execution_id, 0, 2**62))
        )

    async def create_execution(self) -> None:
        """create_execution: the tenant check and the insert, in one transaction."""
        sql = self.sql
        async with self.conn.transaction():
            tenant = await self.conn.fetchrow(sql["tenant"].sql, TENANT)
            check(tenant is not None and tenant["active"], "tenant inactive")
            row = execution_row(uuid.uuid4(), datetime.now(UTC))
            await self.conn.execute(sql["insert_execution"].sql, *sql["insert_execution"].args(row))

    async def get_execution(self, execution_id: uuid.UUID) -> Any:
        return await self.conn.fetchrow(self.sql["execution"].sql, execution_id)

    async def claim(self, queue_type: str, worker: str, limit: int) -> list[Any]:
        now = datetime.now(UTC)
        args = self._claim(queue_type, now, limit, worker, now + LEASE)
        return list(await self.conn.fetch(self.sql["claim"].sql, *args))

    async def complete(self, rows: Sequence[Any], worker: str) -> int:
        now = datetime.now(UTC)
        if len(rows) == 1:
            args = self._complete(rows[0]["id"], worker, rows[0]["lease_fence"], now)
            return len(await self.conn.fetch(self.sql["complete"].sql, *args))
        sql, args = bulk_completion(self.sql, rows, worker, now, 0, self._fence)
        return len(await self.conn.fetch(sql, *args))

    async def validate(self, token: str) -> bool:
        token_id, secret = split_token(token)
        statement = self.sql["token"]
        row = await self.conn.fetchrow(
            statement.sql, *statement.args({**STAND_IN, "p_id": token_id})
        )
        return token_ok(row, statement.columns, secret, datetime.now(UTC))


async def bench_postgres(duration: float, admin_url: str, info: dict[str, str]) -> list[Cell]:
    """Every PostgreSQL cell, in a scratch database re-created for the run and dropped."""
    progress(f"postgresql: re-creating database {PG_DATABASE}, migrating and seeding")
    try:
        await pg_admin(
            admin_url,
            f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)",
            f"CREATE DATABASE {PG_DATABASE}",
        )
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise BenchError(
            f"PostgreSQL unreachable at {urlsplit(admin_url).netloc}: {exc}"
            " (start it, pass --pg-url, or run with --only sqlite)"
        ) from exc
    url = with_database(admin_url, PG_DATABASE)
    try:
        async with contextlib.AsyncExitStack() as stack:
            # As many pooled connections as the raw workers get (SQLAlchemy's default pool
            # keeps 5 and would close the overflow ones between calls).
            store = await StateStore.open(url, pool_size=PG_WORKERS)
            stack.push_async_callback(store.close)
            return await pg_cells(stack, store, url, duration, info)
    finally:
        await pg_admin(admin_url, f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")


async def pg_cells(
    stack: contextlib.AsyncExitStack,
    store: StateStore,
    url: str,
    duration: float,
    info: dict[str, str],
) -> list[Cell]:
    seeded = await seed(store)
    token, _record = await store.create_token("bench", "viewer")
    sql = compiled(store.engine.dialect)
    conns: list[asyncpg.Connection] = []
    for _ in range(PG_WORKERS):
        conns.append(await asyncpg.connect(url))
        stack.push_async_callback(conns[-1].close)
    raws = [PgRaw(conn, sql) for conn in conns]
    admin = raws[0].conn
    await admin.execute("ANALYZE")
    settings = {
        name: await admin.fetchval(f"SHOW {name}")
        for name in ("server_version", "synchronous_commit", "fsync")
    }
    info["postgresql"] = (
        f"{settings['server_version'].split()[0]} (synchronous_commit="
        f"{settings['synchronous_commit']}, fsync={settings['fsync']})"
    )

    cells: list[Cell] = []
    store_side = single_ops(StoreSide(store), seeded, token)
    raw_side = single_ops(raws[0], seeded, token)
    for operation in SINGLE:
        contenders = [
            Contender("store", async_op=store_side[operation]),
            Contender("raw", async_op=raw_side[operation]),
        ]
        cells.append(await measure("postgresql", operation, contenders, duration))

    shares = seeded.shares(PG_WORKERS)
    contenders = [
        Contender("store", callers=[appender(StoreSide(store), own) for own in shares]),
        Contender(
            "raw", callers=[appender(raw, own) for raw, own in zip(raws, shares, strict=True)]
        ),
    ]
    cells.append(await measure("postgresql", APPEND, contenders, duration, PG_WORKERS))
    if otel.available():
        cells.append(await otel.otel_cell("postgresql", store, seeded, duration))

    analysed: set[str] = set()
    item_sql = sql["insert_item"]

    async def fill(queue_type: str, count: int) -> None:
        now = datetime.now(UTC)
        records = [
            item_sql.args(item_row(uuid.uuid4(), seeded.queue_execution, queue_type, now))
            for _ in range(count)
        ]
        await admin.copy_records_to_table(
            "work_items", records=records, columns=list(item_sql.names)
        )
        # Claimed and completed rows leave dead entries at the head of the claim index,
        # which every later claim steps over until a vacuum: each run starts from a
        # vacuumed table (and the first one from fresh statistics).
        await admin.execute("VACUUM work_items")
        if queue_type not in analysed:
            analysed.add(queue_type)
            await admin.execute("ANALYZE work_items")

    async def counts(queue_type: str) -> list[Any]:
        rows = await admin.fetch(sql["queue_counts"].sql, queue_type)
        return [tuple(row) for row in rows]

    for batch, callers in ((1, 1), (1, PG_WORKERS), (CLAIM_BATCH, 1)):
        sides = {"raw": claimer(raws, batch)}
        cells.append(
            await queue_cell("postgresql", store, (fill, counts), sides, batch, callers, duration)
        )
    return cells
