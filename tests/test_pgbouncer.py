"""The store behind PgBouncer in transaction pooling mode (Debian's ``pgbouncer`` in front of
the test database, two server connections: ``tests/pgbouncer_server.py``).

Several stores with several concurrent callers each share the two server connections, so
consecutive statements of one client connection land on different server connections and
statements of different clients interleave on one. Without ``?pgbouncer=true`` asyncpg's
named, cached prepared statements fail here ("prepared statement "__asyncpg_stmt_1__"
already exists" / "does not exist"). The queue and event tests also run through PgBouncer
(their modules are marked ``pgbouncer``); the URL checks need no server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import PG_ADMIN_URL, PGBOUNCER, Clock
from test_crash import run_and_kill, verify

from statestore import (
    ConfigurationError,
    Event,
    StateStore,
    WorkflowExecution,
    WorkItem,
)
from statestore.db.engine import parse_database_url
from statestore.db.maintenance import MAINTENANCE_LOCK_KEY
from statestore.db.wakeup import asyncpg_dsn
from statestore.models import utc_now

through_pgbouncer = pytest.mark.parametrize("backend", [PGBOUNCER], indirect=True)

STORES = 3
CALLERS = 4
ROUNDS = 12


def note(text: str) -> dict[str, Any]:
    return {"type": "note", "text": text}


async def caller(store: StateStore, name: str) -> uuid.UUID:
    """Appends (one statement, and a transaction), enqueues, claims, commits turns and reads,
    ``ROUNDS`` times, checking each answer."""
    run = WorkflowExecution(workflow_id="wf", workflow_version="1")
    await store.create_execution(run)
    eid = run.execution_id
    for i in range(ROUNDS):
        sequence = await store.append_event(Event(execution_id=eid, kind=note(f"{name}-{i}")))
        assert await store.append_events(eid, [note("a"), note("b")]) == [
            sequence + 1,
            sequence + 2,
        ]
        await store.enqueue_work_item(WorkItem(execution_id=eid, node_id=f"{i}", queue_type="q"))
        item = await store.claim_work_item(name, ["q"])
        if item is not None:  # possibly another caller's item: its turn goes to that run
            result = await store.commit_turn(
                item.id, worker_id=name, lease_fence=item.lease_fence, events=[note("turn")]
            )
            assert result.sequences
        stored = await store.get_execution(eid)
        assert stored is not None and stored.execution_id == eid
        assert (await store.get_events(eid))[-1].kind.type == "note"
        await store.read_feed(limit=50)
    return eid


@through_pgbouncer
async def test_stores_and_callers_sharing_two_server_connections(make_store: Any) -> None:
    stores: list[StateStore] = [await make_store() for _ in range(STORES)]
    runs = await asyncio.gather(
        *[caller(store, f"s{s}c{c}") for s, store in enumerate(stores) for c in range(CALLERS)]
    )
    store = stores[0]
    while (left := await store.claim_work_item("finisher", ["q"])) is not None:
        await store.complete_work_item(left.id, worker_id="finisher", lease_fence=left.lease_fence)

    appended = 0
    for eid in runs:
        sequences = [event.sequence for event in await store.get_events(eid)]
        assert sequences == list(range(1, len(sequences) + 1))  # gapless, each exactly once
        appended += len(sequences)
    assert appended == STORES * CALLERS * ROUNDS * 3 + (await _turns(store))
    feed = await store.read_feed(limit=10_000)
    positions = [event.position for event in feed]
    assert len(feed) == appended and positions == sorted(set(positions))
    stats = await store.queue_stats()
    assert stats["q"]["completed"] == STORES * CALLERS * ROUNDS
    assert all(count == 0 for status, count in stats["q"].items() if status != "completed")


async def _turns(store: StateStore) -> int:
    """Events the turns appended (one each): the items completed by a turn, not by the
    finisher."""
    feed = await store.read_feed(limit=10_000)
    return sum(1 for event in feed if getattr(event.kind, "text", None) == "turn")


@through_pgbouncer
async def test_a_waiting_claim_is_woken_over_the_direct_url(make_store: Any) -> None:
    waiter: StateStore = await make_store()
    writer: StateStore = await make_store()
    run = WorkflowExecution(workflow_id="wf", workflow_version="1")
    await writer.create_execution(run)
    claim = asyncio.create_task(waiter.claim_work_item("w", ["q"], wait=20))
    waker = waiter._backend.waker
    for _ in range(400):  # the listener connects in the background: up to 10 s
        if waker.listener_pid is not None:
            break
        await asyncio.sleep(0.025)
    assert waker.reliable and waker.listener_pid is not None
    item = WorkItem(execution_id=run.execution_id, node_id="n", queue_type="q")
    await writer.enqueue_work_item(item)
    claimed = await asyncio.wait_for(claim, 20)
    assert claimed is not None and claimed.id == item.id
    assert waker.wakeups >= 2  # the listener's start, then the enqueue's notification


@through_pgbouncer
async def test_without_a_direct_url_waiters_poll_and_maintenance_refuses(
    make_store: Any,
) -> None:
    store: StateStore = await make_store(direct_url=None)
    run = WorkflowExecution(workflow_id="wf", workflow_version="1")
    await store.create_execution(run)
    claim = asyncio.create_task(store.claim_work_item("w", ["q"], wait=20))
    await asyncio.sleep(0.1)
    item = WorkItem(execution_id=run.execution_id, node_id="n", queue_type="q")
    await store.enqueue_work_item(item)
    claimed = await asyncio.wait_for(claim, 20)
    assert claimed is not None and claimed.id == item.id
    waker = store._backend.waker
    assert not waker.reliable and waker.listener_pid is None  # polled: no LISTEN
    with pytest.raises(ConfigurationError, match="direct_url"):
        await store.run_maintenance(every=0.05)


@through_pgbouncer
async def test_the_maintenance_leader_holds_its_lock_on_the_direct_url(
    make_store: Any, clock: Clock, pg_url: str
) -> None:
    store: StateStore = await make_store(clock=clock)
    run = WorkflowExecution(workflow_id="wf", workflow_version="1")
    await store.create_execution(run)
    item = WorkItem(execution_id=run.execution_id, node_id="n", queue_type="q")
    await store.enqueue_work_item(item)
    assert await store.claim_work_item("dead", ["q"]) is not None
    clock.advance(minutes=5)  # the lease expired: the leader's round reclaims it
    maintenance = asyncio.create_task(store.run_maintenance(every=0.05))
    try:
        for _ in range(400):
            reclaimed = await store.get_work_item(item.id)
            if reclaimed is not None and reclaimed.status == "pending":
                break
            await asyncio.sleep(0.025)
        assert reclaimed is not None and reclaimed.status == "pending"
        # Held by the leader's session, straight to the server (a server connection of the
        # pool would show the store's statements of whichever client it served last).
        holders = await _maintenance_lock_holders(pg_url)
        assert len(holders) == 1  # its last statement is the leader's own, no store's SQL
        assert holders[0]["query"] in ("SELECT 1", "SELECT pg_try_advisory_lock($1, hashtext($2))")
    finally:
        maintenance.cancel()
        with pytest.raises(asyncio.CancelledError):
            await maintenance


def test_session_connections_go_to_the_direct_url() -> None:
    config = parse_database_url(
        "postgresql://app:pw@127.0.0.1:6432/app?pgbouncer=true",
        "postgresql://app:pw@127.0.0.1:5432/app?sslmode=require",
    )
    assert config.pgbouncer and "pgbouncer" not in config.async_url.query
    assert asyncpg_dsn(config) == "postgresql://app:pw@127.0.0.1:5432/app?sslmode=require"
    plain = parse_database_url("postgresql://app@127.0.0.1:5432/app")
    assert not plain.pgbouncer and asyncpg_dsn(plain) == "postgresql://app@127.0.0.1:5432/app"


@pytest.mark.parametrize(
    ("url", "options", "named"),
    [
        ("postgresql://u:secret@h/db?pgbouncer=yes", {}, "pgbouncer option"),
        ("postgresql://u:secret@h/db?pgbouncer=true&prepared_statement_cache_size=100", {}, "0"),
        (
            "postgresql://u:secret@h/db?pgbouncer=true",
            {"connect_args": {"statement_cache_size": 100}},
            "statement_cache_size",
        ),
        ("postgresql://u:secret@h/db", {"direct_url": "sqlite:///x.db"}, "PostgreSQL URL"),
        ("postgresql://u:secret@h/db", {"direct_url": 5432}, "must be a string"),
        (
            "postgresql://u:secret@h/db?pgbouncer=true",
            {"direct_url": "postgresql://u:secret@h/db?pgbouncer=true"},
            "direct_url says pgbouncer=true",
        ),
        (
            "postgresql://u:secret@h/db?pgbouncer=true",
            {"direct_url": "postgresql://u:secret@h:99999/db"},
            "port",
        ),
        (
            "postgresql://u:secret@h/db",
            {"direct_url": "postgresql://u:secret@h/db?statement_timeout=1"},
            "statement_timeout",
        ),
    ],
)
async def test_bad_pgbouncer_settings_are_refused_at_connect(
    url: str, options: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigurationError, match=named) as raised:
        await StateStore.connect(url, **options)
    assert "secret" not in str(raised.value)
    if "direct_url" in options:  # the message says which of the two URLs is wrong
        assert str(raised.value).startswith("direct_url"), raised.value


async def test_an_sqlite_store_takes_no_direct_url(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with pytest.raises(ConfigurationError, match="direct_url"):
        await StateStore.connect(f"sqlite:///{path}", direct_url="postgresql://h/db")
    assert not path.exists()  # refused before anything was created


def test_the_bench_runs(pgbouncer_port: int) -> None:
    """``bench/pgbouncer.py`` end to end with a few calls (it starts a PgBouncer of its own;
    the fixture only makes this test skip, or fail under CI, like the others)."""
    bench = Path(__file__).parents[1] / "bench" / "pgbouncer.py"
    done = subprocess.run(
        [sys.executable, str(bench), PG_ADMIN_URL, "5"],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ.copy(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows[1:]] == [  # after the header
        "| append_event",
        "| claim + complete",
        "| get_execution",
        "| raw point read",
    ]


@through_pgbouncer
async def test_cli_maintain_takes_the_direct_url(database_url: str, pg_url: str) -> None:
    """``statestore maintain`` behind PgBouncer: refused without ``--direct-url`` (its
    leader's lock would be a session lock on a pooled connection), and with it (here from
    ``$STATESTORE_DIRECT_URL``) it leads and stops on SIGTERM."""
    statestore = str(Path(sys.executable).with_name("statestore"))
    environment = {k: v for k, v in os.environ.items() if k != "STATESTORE_DIRECT_URL"}

    async def maintain(env: dict[str, str]) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            statestore,
            *("maintain", "--url", database_url, "--every", "0.1"),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    refused = await maintain(environment)
    out, err = await asyncio.wait_for(refused.communicate(), 60)
    assert refused.returncode != 0
    assert b"direct_url" in out + err
    process = await maintain({**environment, "STATESTORE_DIRECT_URL": pg_url})
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 30)
    assert b"maintaining" in line
    for _ in range(200):
        held = len(await _maintenance_lock_holders(pg_url))
        if held:
            break
        await asyncio.sleep(0.05)
    assert held == 1  # the CLI's leader holds the lock on its direct session
    process.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, err.decode()
    assert b"maintenance stopped" in out


async def _maintenance_lock_holders(pg_url: str) -> list[Any]:
    """The sessions holding the maintenance leader's advisory lock on the test database,
    with their last statement (pid, query), asked of the server directly."""
    direct = await asyncpg.connect(pg_url.replace("postgresql://", "postgres://"))
    try:
        return list(
            await direct.fetch(
                "SELECT l.pid, a.query FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
                " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1::int::oid"
                " AND l.database ="
                " (SELECT oid FROM pg_database WHERE datname = current_database())",
                MAINTENANCE_LOCK_KEY,
            )
        )
    finally:
        await direct.close()


CHILD_LEASE_S = 60
"""The killed worker's lease: longer than the test runs, so that the held item is leased
until a clock moved past it says otherwise."""


@through_pgbouncer
async def test_kill_9_through_pgbouncer_loses_no_acknowledged_write(
    make_store: Any, database_url: str, pg_url: str
) -> None:
    """A child appending events, enqueueing, claiming and completing items through the
    pooler is killed with SIGKILL mid-stream, while it holds one item leased: every write
    it acknowledged is there, read through the pooler and directly; the pooler serves a
    new store; the held item stays leased (never claimed twice) until its lease expires,
    and is then reclaimed and claimed again."""
    store: StateStore = await make_store()
    run = WorkflowExecution(workflow_id="wf", workflow_version="1")
    await store.create_execution(run)
    eid = str(run.execution_id)
    held = WorkItem(execution_id=run.execution_id, node_id="held", queue_type="held")
    await store.enqueue_work_item(held)
    acks = await run_and_kill(database_url, eid, 300, "bounced", "held", str(CHILD_LEASE_S))
    assert [a for a in acks if a["op"] == "hold"] == [
        {"op": "hold", "id": str(held.id), "lease_fence": 1}
    ]
    assert {a["op"] for a in acks} >= {"append", "enqueue", "claim", "complete"}

    for url in (database_url, pg_url):  # through the pooler, and directly
        reopened = await StateStore.connect(url)
        try:
            await verify(reopened, eid, acks)
        finally:
            await reopened.close()

    # The pooler serves a new store: writes, a claim and a completion, read back.
    fresh = await make_store()
    sequence = await fresh.append_event(Event(execution_id=run.execution_id, kind=note("after")))
    assert [e.sequence for e in await fresh.get_events(eid)][-1] == sequence
    await fresh.enqueue_work_item(
        WorkItem(execution_id=run.execution_id, node_id="n", queue_type="after")
    )
    after = await fresh.claim_work_item("after", ["after"])
    assert after is not None
    await fresh.complete_work_item(after.id, worker_id="after", lease_fence=after.lease_fence)

    # The killed worker's item is still leased to it: nobody else gets it, and reclaim
    # leaves it alone while its lease runs.
    leased = await fresh.get_work_item(held.id)
    assert leased is not None and (leased.status, leased.worker_id) == ("claimed", "holder")
    assert await fresh.claim_work_item("other", ["held"]) is None
    assert (await fresh.reclaim_expired_leases()).retryable == []
    # Once its lease has expired (a clock moved past it), reclaim gives it back, and the
    # next worker claims it under a greater fence.
    later = Clock(utc_now() + timedelta(seconds=CHILD_LEASE_S + 1))
    reclaimer = await make_store(clock=later)
    reclaimed = await reclaimer.reclaim_expired_leases()
    # (With the items the worker was killed between claiming and completing.)
    ids = {str(item.id) for item in reclaimed.retryable}
    completed = {a["id"] for a in acks if a["op"] == "complete"}
    assert str(held.id) in ids and not ids & completed
    later.advance(minutes=2)  # past the retry backoff
    again = await reclaimer.claim_work_item("rescuer", ["held"])
    assert again is not None and again.id == held.id
    assert (again.attempt, again.lease_fence) == (2, 2)
    await reclaimer.complete_work_item(held.id, worker_id="rescuer", lease_fence=again.lease_fence)
