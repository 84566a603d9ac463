"""The ``statestore`` command: thin — parses, calls the facade, prints.

Exit codes: 0 on success, 1 on a reported error (one line on stderr, never a traceback),
2 on bad usage. ``--url`` and ``--json`` are accepted before and after the subcommand.
Commands that only read never create a database: on a missing SQLite file they fail.

The store (SQLAlchemy), rich, asyncio and the demo are imported by the commands that use
them, so ``--help`` and a usage error answer without loading them.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from functools import cache, wraps
from typing import TYPE_CHECKING, Any, TypeVar

import click
from pydantic import BaseModel

from statestore.db.urls import DIRECT_URL_ENV_VAR, URL_ENV_VAR
from statestore.errors import MigrationError, NotFoundError, StateStoreError
from statestore.models import Tenant, TenantStatus, TokenRole, WorkflowStatus

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from statestore.store import StateStore

F = TypeVar("F", bound=Callable[..., Any])


@cache
def _out() -> Console:
    """The console results are printed on, made on first use (--help does not load rich)."""
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


# ---------------------------------------------------------------- shared options and plumbing


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value not in (None, False):
        ctx.find_root().meta[f"statestore.{param.name}"] = value
    return value


def common_options(fn: F) -> F:
    """``--url``, ``--direct-url`` and ``--json``, accepted on the group and on every
    subcommand."""
    fn = click.option(
        "--json",
        "as_json",
        is_flag=True,
        default=False,
        expose_value=False,
        callback=_remember,
        is_eager=True,
        help="Print one JSON document instead of tables.",
    )(fn)
    fn = click.option(
        "--url",
        default=None,
        expose_value=False,
        callback=_remember,
        is_eager=True,
        metavar="URL",
        help=f"Database URL (default: ${URL_ENV_VAR}, else ./statestore.db).",
    )(fn)
    fn = click.option(
        "--direct-url",
        default=None,
        expose_value=False,
        callback=_remember,
        is_eager=True,
        metavar="URL",
        help=(
            "PostgreSQL behind PgBouncer: a direct URL for the sessions a pooler cannot "
            f"hold (wake-ups, the maintenance leader; default: ${DIRECT_URL_ENV_VAR})."
        ),
    )(fn)
    return fn


def _setting(name: str) -> Any:
    return click.get_current_context().find_root().meta.get(f"statestore.{name}")


def json_mode() -> bool:
    return bool(_setting("as_json"))


def with_store(*, read_only: bool) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Any]]:
    """Run an async command with a connected store as its first argument.

    Every command says whether it only reads: opening a SQLite file that does not exist
    creates it and its folder, which a command that only looks must not do, so a read-only
    command on a missing file fails instead.
    """

    def decorate(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        @wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            import asyncio

            async def run() -> Any:
                from statestore.db.engine import parse_database_url, require_existing_database
                from statestore.store import StateStore

                url = _setting("url")
                direct_url = _setting("direct_url")
                if direct_url is None and parse_database_url(url).dialect == "postgresql":
                    # The environment's default is for PostgreSQL behind PgBouncer: an SQLite
                    # --url beside it takes none, rather than every command failing.
                    direct_url = os.environ.get(DIRECT_URL_ENV_VAR)
                if read_only:
                    require_existing_database(parse_database_url(url, direct_url))
                store = await StateStore.connect(url, direct_url=direct_url)
                try:
                    return await fn(store, *args, **kwargs)
                finally:
                    await store.close()

            return asyncio.run(run())

        return command

    return decorate


def emit(data: Any, table: Callable[[], Table | str]) -> None:
    """Print ``data`` as JSON in --json mode, else the human form."""
    if json_mode():
        click.echo(json.dumps(_jsonable(data), indent=2, sort_keys=False))
    else:
        _out().print(table())


def _jsonable(data: Any) -> Any:
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if isinstance(data, dict):
        return {str(k): _jsonable(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_jsonable(v) for v in data]
    if isinstance(data, uuid.UUID):
        return str(data)
    return data


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    return table


def _scoped(store: StateStore, tenant_id: str | None) -> StateStore:
    """The store confined to ``--tenant``, or the unscoped store when none was given."""
    return store.for_tenant(tenant_id) if tenant_id else store


def _time(value: Any) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


# ---------------------------------------------------------------- the command tree


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@common_options
def cli() -> None:
    """statestore: the durable state store of a workflow engine."""


@cli.group()
@common_options
def db() -> None:
    """Schema migrations."""


@db.command("upgrade")
@common_options
@click.argument("revision", default="head")
@with_store(read_only=False)
async def db_upgrade(store: StateStore, revision: str) -> None:
    """Upgrade the schema to REVISION (default: head)."""
    await store.migrate(revision)
    current = await store.current_revision()
    emit({"revision": current}, lambda: f"database at revision {current}")


@db.command("downgrade")
@common_options
@click.argument("revision")
@with_store(read_only=False)
async def db_downgrade(store: StateStore, revision: str) -> None:
    """Downgrade the schema to REVISION ("base" removes everything)."""
    await store.downgrade(revision)
    current = await store.current_revision()
    emit({"revision": current}, lambda: f"database at revision {current or 'base'}")


@db.command("current")
@common_options
@with_store(read_only=True)
async def db_current(store: StateStore) -> None:
    """Show the schema revision of the database and of this package."""
    current, head = await store.current_revision(), store.head_revision()
    emit(
        {"revision": current, "head": head, "at_head": current == head},
        lambda: f"database at {current or 'base (empty)'}; package head {head}",
    )


@db.command("check")
@common_options
@with_store(read_only=True)
async def db_check(store: StateStore) -> None:
    """Exit 0 if the schema is at head and matches the models, else 1."""
    current, head = await store.current_revision(), store.head_revision()
    if current != head:
        raise MigrationError(
            f"database at {current or 'base'}, package head {head}: run `statestore db upgrade`"
        )
    drift = await store.schema_drift()
    if drift:
        raise MigrationError(f"schema differs from the models: {'; '.join(drift)[:300]}")
    emit({"revision": current, "ok": True}, lambda: f"ok: database at {current}, no drift")


@cli.group()
@common_options
def tenants() -> None:
    """Tenant management."""


def _tenant_rows(items: list[Tenant]) -> Table:
    return _table(
        "tenants",
        ["id", "name", "status", "created"],
        [(t.id, t.name, t.status.value, _time(t.created_at)) for t in items],
    )


@tenants.command("list")
@common_options
@with_store(read_only=True)
async def tenants_list(store: StateStore) -> None:
    """List tenants."""
    items = await store.list_tenants()
    emit(items, lambda: _tenant_rows(items))


@tenants.command("create")
@common_options
@click.argument("tenant_id")
@click.option("--name", default=None, help="Display name (default: the id).")
@with_store(read_only=False)
async def tenants_create(store: StateStore, tenant_id: str, name: str | None) -> None:
    """Create tenant TENANT_ID."""
    await store.create_tenant(Tenant(id=tenant_id, name=name or tenant_id))
    created = await store.get_tenant(tenant_id)
    emit(created, lambda: f"created tenant {tenant_id}")


@tenants.command("suspend")
@common_options
@click.argument("tenant_id")
@with_store(read_only=False)
async def tenants_suspend(store: StateStore, tenant_id: str) -> None:
    """Suspend tenant TENANT_ID: new executions, enqueues and tokens are refused."""
    tenant = await store.get_tenant(tenant_id)
    if tenant is None:
        raise NotFoundError(f"tenant {tenant_id!r} not found")
    tenant.status = TenantStatus.SUSPENDED
    await store.update_tenant(tenant)
    emit(await store.get_tenant(tenant_id), lambda: f"suspended tenant {tenant_id}")


@cli.group()
@common_options
def tokens() -> None:
    """API tokens."""


@tokens.command("create")
@common_options
@click.argument("name")
@click.option("--role", required=True, type=click.Choice([r.value for r in TokenRole]))
@click.option("--tenant", "tenant_id", default=None, help="Tenant (default: default).")
@click.option("--expires-in", type=click.IntRange(min=1), default=None, metavar="SECONDS")
@with_store(read_only=False)
async def tokens_create(
    store: StateStore, name: str, role: str, tenant_id: str | None, expires_in: int | None
) -> None:
    """Create a token; the plaintext is printed once and never stored."""
    scoped = _scoped(store, tenant_id)
    lifetime = None if expires_in is None else timedelta(seconds=expires_in)
    token, record = await scoped.create_token(name, role, expires_in=lifetime)
    emit(
        {"token": token, "record": record},
        lambda: f"{token}\n(token {record.id} for tenant {record.tenant_id}; shown only once)",
    )


@tokens.command("list")
@common_options
@click.option("--tenant", "tenant_id", default=None)
@with_store(read_only=True)
async def tokens_list(store: StateStore, tenant_id: str | None) -> None:
    """List tokens (all tenants unless --tenant)."""
    scoped = _scoped(store, tenant_id)
    items = await scoped.list_tokens()
    emit(
        items,
        lambda: _table(
            "tokens",
            ["id", "name", "role", "tenant", "expires", "last used", "revoked"],
            [
                (
                    t.id,
                    t.name,
                    t.role.value,
                    t.tenant_id,
                    _time(t.expires_at),
                    _time(t.last_used_at),
                    _time(t.revoked_at),
                )
                for t in items
            ],
        ),
    )


@tokens.command("revoke")
@common_options
@click.argument("token_id")
@with_store(read_only=False)
async def tokens_revoke(store: StateStore, token_id: str) -> None:
    """Revoke token TOKEN_ID."""
    await store.revoke_token(token_id)
    emit({"revoked": token_id}, lambda: f"revoked token {token_id}")


@cli.group()
@common_options
def executions() -> None:
    """Workflow executions."""


@executions.command("list")
@common_options
@click.option("--status", type=click.Choice([s.value for s in WorkflowStatus]), default=None)
@click.option("--tenant", "tenant_id", default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@with_store(read_only=True)
async def executions_list(
    store: StateStore, status: str | None, tenant_id: str | None, limit: int
) -> None:
    """List executions, most recently updated first."""
    scoped = _scoped(store, tenant_id)
    items = await scoped.list_executions(status, limit)
    emit(
        items,
        lambda: _table(
            "executions",
            ["id", "workflow", "version", "status", "tenant", "updated"],
            [
                (
                    e.execution_id,
                    e.workflow_id,
                    e.workflow_version,
                    e.status.value,
                    e.tenant_id,
                    _time(e.updated_at),
                )
                for e in items
            ],
        ),
    )


@executions.command("show")
@common_options
@click.argument("execution_id")
@with_store(read_only=True)
async def executions_show(store: StateStore, execution_id: str) -> None:
    """Show one execution, its latest sequence and its work items."""
    execution = await store.get_execution(execution_id)
    if execution is None:
        raise NotFoundError(f"execution {execution_id} not found")
    latest = await store.latest_sequence(execution_id)
    items = await store.list_work_items(execution_id)
    data = {"execution": execution, "latest_sequence": latest, "work_items": items}

    def human() -> Table:
        table = _table(f"execution {execution.execution_id}", ["field", "value"], [])
        for key, value in execution.model_dump(mode="json").items():
            table.add_row(key, json.dumps(value) if isinstance(value, dict | list) else str(value))
        table.add_row("latest_sequence", str(latest))
        table.add_row("work_items", ", ".join(f"{i.node_id}:{i.status.value}" for i in items))
        return table

    emit(data, human)


@cli.command("events")
@common_options
@click.argument("execution_id", required=False)
@click.option(
    "--follow",
    is_flag=True,
    help="Keep printing new events: until the execution ends, or (no EXECUTION_ID) until "
    "interrupted.",
)
@click.option("--after", default=0, type=int, help="Feed only: start after this position.")
@click.option("--tenant", "tenant_id", default=None, help="Feed only: this tenant's events.")
@with_store(read_only=True)
async def events(
    store: StateStore, execution_id: str | None, follow: bool, after: int, tenant_id: str | None
) -> None:
    """Print an execution's events, or without EXECUTION_ID the database-wide event feed
    (every committed event in feed order, each once)."""
    if execution_id is None:
        async for event in _scoped(store, tenant_id).iter_feed(after, follow=follow):
            _print_event(event, feed=True)
        return
    if await store.get_execution(execution_id) is None:
        raise NotFoundError(f"execution {execution_id} not found")
    since = 0
    while True:
        batch = await store.get_events_since(execution_id, since, limit=1000)
        for event in batch:
            _print_event(event, feed=False)
            since = event.sequence
        if batch:
            continue
        execution = await store.get_execution(execution_id)
        if not follow or execution is None or execution.status.is_terminal:
            return
        import asyncio

        await asyncio.sleep(0.5)


def _print_event(event: Any, *, feed: bool) -> None:
    """One event: a JSON line with --json, else a line of text (the feed's shows the
    position and execution)."""
    if json_mode():
        click.echo(json.dumps(event.model_dump(mode="json")))
        return
    kind = event.kind.to_json_dict()
    kind_type = kind.pop("type")
    stamp = _time(event.created_at)
    where = f"{event.position:>12}  {event.execution_id}  " if feed else ""
    _out().print(f"{where}{event.sequence:>6}  {stamp}  {kind_type}  {json.dumps(kind)}")


@cli.group()
@common_options
def queue() -> None:
    """The work queue."""


@queue.command("stats")
@common_options
@with_store(read_only=True)
async def queue_stats(store: StateStore) -> None:
    """Count work items per queue type and status."""
    stats = await store.queue_stats()
    statuses = [s.value for s in next(iter(stats.values()), {})] or ["pending"]
    emit(
        {q: {s.value: n for s, n in counts.items()} for q, counts in stats.items()},
        lambda: _table(
            "queue",
            ["queue type", *statuses],
            [(q, *counts.values()) for q, counts in stats.items()],
        ),
    )


@queue.command("reclaim")
@common_options
@click.option(
    "--every",
    type=click.FloatRange(min=0.1),
    default=None,
    metavar="SECONDS",
    help="Keep reclaiming every SECONDS until interrupted.",
)
@with_store(read_only=False)
async def queue_reclaim(store: StateStore, every: float | None) -> None:
    """Return expired leases to the queue (or the dead-letter queue)."""
    if every is not None:
        await store.run_reclaimer(every=every)
        return
    result = await store.reclaim_expired_leases()
    emit(
        result,
        lambda: (
            f"reclaimed {len(result.retryable)} for retry, "
            f"{len(result.exhausted)} to the dead-letter queue"
        ),
    )


@cli.group()
@common_options
def dlq() -> None:
    """The dead-letter queue."""


@dlq.command("list")
@common_options
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@with_store(read_only=True)
async def dlq_list(store: StateStore, limit: int) -> None:
    """List dead-lettered items, newest first."""
    letters = await store.list_dead_letters(limit=limit)
    emit(
        letters,
        lambda: _table(
            "dead letters",
            ["item", "queue", "node", "attempts", "error", "when"],
            [
                (
                    d.item.id,
                    d.item.queue_type,
                    d.item.node_id,
                    d.item.attempt,
                    d.last_error,
                    _time(d.dead_lettered_at),
                )
                for d in letters
            ],
        ),
    )


@dlq.command("requeue")
@common_options
@click.argument("item_id")
@with_store(read_only=False)
async def dlq_requeue(store: StateStore, item_id: str) -> None:
    """Put a dead-lettered item back in its queue with its attempts reset."""
    await store.requeue_dead_letter(item_id)
    emit({"requeued": item_id}, lambda: f"requeued {item_id}")


@cli.command("demo")
@common_options
@click.option(
    "--executions", "count", type=click.IntRange(1, 100_000), default=200, show_default=True
)
@click.option("--workers", type=click.IntRange(1, 256), default=4, show_default=True)
def demo(count: int, workers: int) -> None:
    """Run a durable-workflow demo against the store and summarise it."""
    import asyncio

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from statestore.demo import DEMO_LEASE, run_demo
    from statestore.store import StateStore

    async def run() -> None:
        store = await StateStore.open(_setting("url"), lease_duration=DEMO_LEASE)
        try:
            progress = Progress(
                TextColumn("executions"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                disable=json_mode(),
            )
            with progress:
                bar = progress.add_task("run", total=count)
                result = await run_demo(
                    store,
                    executions=count,
                    workers=workers,
                    progress=lambda done, total: progress.update(bar, completed=done),
                )
            summary = {
                "store": store.url,
                "tenant": result.tenant_id,
                "executions_completed": result.executions_completed,
                "events_written": result.events_written,
                "work_items_completed": result.items_completed,
                "retries": result.retries,
                "dead_letters": result.dead_letters,
                "killed_worker_items": result.killed_worker_items,
                "steps_per_s": round(result.throughput, 1),  # one commit_turn per step
                "seconds": round(result.seconds, 2),
            }
            emit(
                summary,
                lambda: _table("demo summary", ["", ""], [(k, v) for k, v in summary.items()]),
            )
        finally:
            await store.close()

    asyncio.run(run())


@cli.command("maintain")
@common_options
@click.option(
    "--every",
    type=click.FloatRange(min=0.01),
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds between maintenance rounds.",
)
@click.option(
    "--retention",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Delete completed and failed work items settled longer ago than this.",
)
@with_store(read_only=False)
async def maintain(store: StateStore, every: float, retention: float | None) -> None:
    """Run maintenance until SIGINT or SIGTERM: reclaim expired leases, apply retention,
    checkpoint SQLite's WAL. Safe to run on every host: on PostgreSQL one process at a time
    does the work (an advisory lock)."""
    import asyncio
    import signal

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    keep = None if retention is None else timedelta(seconds=retention)
    running = store.run_maintenance(every=timedelta(seconds=every), retention=keep)
    task = asyncio.create_task(running)
    _out().print(f"maintaining {store.url} every {every:g} s; stop with Ctrl-C or SIGTERM")
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        for pending in (task, stopped):
            pending.cancel()
        await asyncio.gather(task, stopped, return_exceptions=True)
    if task.done() and not task.cancelled():
        task.result()  # it ended by itself: its error
    _out().print("maintenance stopped")


@cli.command("ui")
@common_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=8321, show_default=True)
@click.option(
    "--require-token",
    is_flag=True,
    help="Ask for a store API token on loopback too (always asked elsewhere).",
)
def ui(host: str, port: int, require_token: bool) -> None:
    """Serve the read-only web inspector (needs the ui extra: pip install 'statestore[ui]').

    Bound to 127.0.0.1 by default; bound to any other address, every request needs a store
    API token (a Bearer header or the sign-in form), and a tenant's token shows only that
    tenant."""
    try:
        from statestore.ui.server import serve
    except ImportError as error:
        raise click.ClickException(
            f"statestore ui needs the ui extra ({error.name} is missing): "
            "pip install 'statestore[ui]'"
        ) from None
    serve(_setting("url"), host=host, port=port, require_token=require_token)


# ---------------------------------------------------------------- entry point


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:500]


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: exit 0 on success, 1 on a reported error, 2 on bad usage."""
    try:
        cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="statestore",
            standalone_mode=False,
        )
    except click.exceptions.UsageError as error:
        error.show()
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as error:
        click.echo(f"error: {_one_line(error)}", err=True)
        sys.exit(1)
    except StateStoreError as error:
        click.echo(f"error: {_one_line(error)}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as error:  # the promise is one line, never a traceback
        click.echo(f"error: unexpected {type(error).__name__}: {_one_line(error)}", err=True)
        sys.exit(1)
    sys.exit(0)
