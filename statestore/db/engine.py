"""URL normalisation and engine creation: every dialect-specific setting lives here.

SQLite: WAL, ``foreign_keys=ON``, a busy timeout and ``synchronous`` on every connection; the
driver's own transaction handling is switched off and we emit ``BEGIN IMMEDIATE`` (writers)
or ``BEGIN`` (readers) ourselves, the recipe from SQLAlchemy's SQLite dialect docs. Writers
take the write lock up front, so a read-then-write transaction never fails with SQLITE_BUSY
half-way.

PostgreSQL: asyncpg, READ COMMITTED (AUTOCOMMIT for reads and single statements). Behind
PgBouncer in transaction pooling mode (``?pgbouncer=true``) without prepared-statement caches,
and the connections that hold a session (LISTEN, the maintenance leader's lock) go to a
direct URL.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Connection, Dialect, Engine, create_engine, event
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool, StaticPool

from statestore.db.urls import (
    ACCEPTED_SCHEMES,
    check_single_at,
    normalise_postgres_url,
    parse_url,
    resolve_url,
)
from statestore.errors import ConfigurationError
from statestore.validation import dump_json

_SQLITE_DRIVERS = {"sqlite", "sqlite+aiosqlite", "sqlite+pysqlite"}
_POSTGRES_DRIVERS = {"postgresql", "postgres", "postgresql+asyncpg"}

Durability = Literal["NORMAL", "FULL"]
PG_CONNECT_TIMEOUT_S = 10


@dataclass(frozen=True)
class DatabaseConfig:
    """A normalised database location."""

    dialect: Literal["sqlite", "postgresql"]
    async_url: URL
    """URL for the user-facing AsyncEngine (aiosqlite / asyncpg)."""
    sync_url: URL | None = None
    """SQLite only: URL of the stdlib driver the store's own threads use."""
    sqlite_path: Path | None = None
    """SQLite file, or ``None`` for an in-memory database."""
    pgbouncer: bool = False
    """PostgreSQL: ``async_url`` leads to PgBouncer in transaction pooling mode, where
    consecutive transactions of one client connection may run on different server
    connections."""
    direct_url: URL | None = None
    """PostgreSQL: the database without a transaction pooler in between, for the
    connections that hold a session (``direct_url`` of :meth:`StateStore.connect`)."""

    @property
    def is_memory(self) -> bool:
        """An in-memory SQLite database: the one definition every in-memory decision uses."""
        return self.dialect == "sqlite" and self.sqlite_path is None

    @property
    def session_url(self) -> URL | None:
        """Where a connection that keeps session state (LISTEN, a session advisory lock)
        goes: the direct URL if given, else the store's own URL unless that leads to a
        transaction pooler (``None``: such connections cannot be made)."""
        if self.direct_url is not None:
            return self.direct_url
        return None if self.pgbouncer else self.async_url

    def redacted(self) -> str:
        """The URL with its password hidden (a ``?password=`` was moved into it on parsing)."""
        return self.async_url.render_as_string(hide_password=True)


def parse_database_url(
    url: str | URL | None, direct_url: str | URL | None = None
) -> DatabaseConfig:
    """Normalise a URL to the async driver of its database.

    Raises :class:`ConfigurationError` for anything that is not SQLite or PostgreSQL, a bad
    port and a query option asyncpg does not take; no message repeats the URL's password.
    ``direct_url`` (PostgreSQL only) is checked the same way and must not lead to PgBouncer.
    """
    raw = resolve_url(url)
    if not isinstance(raw, str | URL):
        raise ConfigurationError(f"database URL must be a string, got {type(raw).__name__}")
    parsed = parse_url(raw)
    driver = parsed.drivername
    if driver in _SQLITE_DRIVERS:
        if direct_url is not None:
            raise ConfigurationError("direct_url is for PostgreSQL; an SQLite store takes none")
        return _sqlite_config(parsed)
    if driver in _POSTGRES_DRIVERS:
        check_single_at(raw)
        async_url, pgbouncer = normalise_postgres_url(parsed)
        direct = None if direct_url is None else _direct_url(direct_url)
        return DatabaseConfig("postgresql", async_url, pgbouncer=pgbouncer, direct_url=direct)
    raise ConfigurationError(
        f"unsupported database URL scheme {driver!r}; accepted: " + ", ".join(ACCEPTED_SCHEMES)
    )


def _direct_url(raw: str | URL) -> URL:
    """The direct URL: a PostgreSQL URL checked like the store's, without ``pgbouncer``."""
    if not isinstance(raw, str | URL):
        raise ConfigurationError(f"direct_url must be a string, got {type(raw).__name__}")
    try:
        parsed = parse_url(raw)
        if parsed.drivername not in _POSTGRES_DRIVERS:
            raise ConfigurationError("direct_url must be a PostgreSQL URL (postgresql://…)")
        check_single_at(raw)
        url, pgbouncer = normalise_postgres_url(parsed)
    except ConfigurationError as exc:
        # The checks are the store URL's own and speak of "the database URL": say which of
        # the two URLs it is (the message never holds the URL itself).
        message = str(exc)
        if not message.startswith("direct_url"):
            message = f"direct_url: {message}"
        raise ConfigurationError(message) from None
    if pgbouncer:
        raise ConfigurationError(
            "direct_url says pgbouncer=true: it must lead to PostgreSQL itself (or to a "
            "PgBouncer pool in session mode)"
        )
    return url


def _sqlite_config(parsed: URL) -> DatabaseConfig:
    if parsed.username or parsed.password or parsed.host or parsed.port:
        # Not shown: these parts may hold a password (and sqlite://name.db would silently
        # be an in-memory database, "name.db" being read as a host).
        raise ConfigurationError(
            "an SQLite URL has no user, password, host or port: write sqlite:///PATH "
            "(three slashes) or sqlite:///:memory:"
        )
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        # One named shared-cache in-memory database, so that the store's connection and
        # the user-facing AsyncEngine see the same data for the life of the store.
        name = f"file:statestore-{uuid.uuid4().hex}"
        query = {"mode": "memory", "cache": "shared", "uri": "true"}
        return DatabaseConfig(
            "sqlite",
            async_url=URL.create("sqlite+aiosqlite", database=name, query=query),
            sync_url=URL.create("sqlite+pysqlite", database=name, query=query),
        )
    path = Path(database).expanduser()
    return DatabaseConfig(
        "sqlite",
        async_url=parsed.set(drivername="sqlite+aiosqlite", database=str(path)),
        sync_url=parsed.set(drivername="sqlite+pysqlite", database=str(path)),
        sqlite_path=path,
    )


def ensure_sqlite_folder(config: DatabaseConfig) -> None:
    """Create the SQLite file's folder if missing."""
    if config.sqlite_path is None:
        return
    folder = config.sqlite_path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(f"cannot create folder {folder} for the database: {exc}") from exc


def require_existing_database(config: DatabaseConfig) -> None:
    """Raise :class:`ConfigurationError` unless the SQLite file exists, for callers that
    only read: opening a missing file would create it (and :func:`ensure_sqlite_folder` its
    folder). PostgreSQL and in-memory databases have nothing to check here."""
    path = config.sqlite_path
    if path is not None and not path.is_file():
        raise ConfigurationError(
            f"no SQLite database at {path}: a read-only command does not create one "
            "(`statestore db upgrade` does)"
        )


@dataclass(frozen=True)
class SqliteSettings:
    """Connection settings for SQLite."""

    durability: Durability = "NORMAL"
    busy_timeout_ms: int = 30_000


def install_sqlite_setup(
    engine: Engine, config: DatabaseConfig, settings: SqliteSettings, *, begin: str
) -> None:
    """Pragmas on connect, and our own ``BEGIN`` statement (``begin`` is e.g. "BEGIN
    IMMEDIATE") instead of the driver's implicit transactions."""
    # WAL needs a file; an in-memory database keeps its own "memory" journal. Decided from
    # the parsed config, never from the path's text: /srv/agent-memory/state.db is a file.
    wal = not config.is_memory

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(settings.busy_timeout_ms)}")
            if wal:
                cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute(f"PRAGMA synchronous = {settings.durability}")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    def do_begin(connection: Any) -> None:
        # On the driver connection: SQLAlchemy's execution path would cost more than the
        # BEGIN itself, once per transaction. The dialect's own hook, not a "begin"
        # listener: any engine listener makes SQLAlchemy dispatch events at every BEGIN,
        # COMMIT and SAVEPOINT of the engine, and makes the store's driver path look for
        # cursor listeners at every statement (see statestore.db.driver), all for nothing.
        # ``connection`` is the pool's proxy; its driver connection runs the statement.
        connection.dbapi_connection.execute(begin)

    # The engine's own dialect instance (like _use_driver_savepoints): no other engine's.
    engine.dialect.do_begin = do_begin  # type: ignore[method-assign,assignment]


LOGGING_OPTIONS = ("echo", "echo_pool", "hide_parameters", "logging_name", "pool_logging_name")
"""Engine options about logging that the SQLite writer and reader engines take from the
user's engine options: ``echo=True`` logs every statement the store sends, theirs too."""


def create_sqlite_engine(
    config: DatabaseConfig,
    settings: SqliteSettings,
    *,
    begin: str,
    pool_size: int,
    engine_options: dict[str, Any] | None = None,
) -> Engine:
    """A sync engine on the stdlib driver, for the store's writer or reader threads (with
    the logging options among ``engine_options``)."""
    assert config.sync_url is not None
    options: dict[str, Any] = {
        "connect_args": {"check_same_thread": False},
        "json_serializer": dump_json,
    }
    for key in LOGGING_OPTIONS:
        if engine_options and key in engine_options:
            options[key] = engine_options[key]
    if config.is_memory:
        options["poolclass"] = StaticPool
    else:
        options.update(pool_size=pool_size, max_overflow=0)
    engine = create_engine(config.sync_url, **options)
    install_sqlite_setup(engine, config, settings, begin=begin)
    _use_driver_savepoints(engine.dialect)
    return engine


def _use_driver_savepoints(dialect: Dialect) -> None:
    """Send this engine's SAVEPOINT statements straight to the driver.

    Group commit wraps every write in a savepoint; SQLAlchemy compiles each SAVEPOINT and
    RELEASE anew and runs it through its full execution path, which cost more than the
    write itself. SQLAlchemy still does the bookkeeping (which savepoint is open, names like
    ``sa_savepoint_1``); only the statement is sent directly. This dialect instance belongs
    to the store's own engine, so nothing else is affected.
    """

    def driver(connection: Connection) -> Any:
        return connection.connection.dbapi_connection

    def do_savepoint(connection: Connection, name: str) -> None:
        driver(connection).execute(f"SAVEPOINT {name}")

    def do_release_savepoint(connection: Connection, name: str) -> None:
        driver(connection).execute(f"RELEASE SAVEPOINT {name}")

    def do_rollback_to_savepoint(connection: Connection, name: str) -> None:
        driver(connection).execute(f"ROLLBACK TO SAVEPOINT {name}")

    dialect.do_savepoint = do_savepoint  # type: ignore[method-assign]
    dialect.do_release_savepoint = do_release_savepoint  # type: ignore[method-assign]
    dialect.do_rollback_to_savepoint = do_rollback_to_savepoint  # type: ignore[method-assign]


# asyncpg's own statement cache and the one SQLAlchemy's asyncpg dialect keeps on top of it.
_STATEMENT_CACHES = ("statement_cache_size", "prepared_statement_cache_size")


def _pooler_args(config: DatabaseConfig) -> dict[str, Any]:
    """Behind PgBouncer's transaction pooling: no prepared-statement caches. A cached
    statement is named and lives on the server connection that prepared it, which the
    next transaction may not get. Without the caches asyncpg prepares each statement
    unnamed, and sends its Parse and its Execute before one Sync, so PgBouncer keeps both
    on one server connection even outside a transaction (AUTOCOMMIT)."""
    return dict.fromkeys(_STATEMENT_CACHES, 0) if config.pgbouncer else {}


def _check_pooler_args(config: DatabaseConfig, connect_args: Any) -> None:
    """Refuse ``connect_args`` that turn a statement cache back on behind PgBouncer."""
    if not config.pgbouncer or not isinstance(connect_args, dict):
        return
    for name in _STATEMENT_CACHES:
        if connect_args.get(name, 0) != 0:
            raise ConfigurationError(
                f"connect_args {name} must be 0 with pgbouncer=true: behind PgBouncer's "
                "transaction pooling a cached statement may be run on a server connection "
                "that never prepared it"
            )


def create_user_engine(
    config: DatabaseConfig, settings: SqliteSettings, engine_options: dict[str, Any]
) -> AsyncEngine:
    """The user-facing AsyncEngine (``store.engine``), also used by Alembic's env.py."""
    options: dict[str, Any] = {"json_serializer": dump_json}
    if config.dialect == "postgresql":
        options.update(
            # No pre-ping: the asyncpg dialect's ping is three round trips (BEGIN, a query,
            # ROLLBACK) on every checkout, more than most operations. A connection found
            # dead is invalidated with every older one; reads retry once (PostgresRunner).
            pool_pre_ping=False,
            isolation_level="READ COMMITTED",
            # Fail fast (DatabaseError) instead of asyncpg's 60 s default on a dead host.
            connect_args={"timeout": PG_CONNECT_TIMEOUT_S, **_pooler_args(config)},
        )
    elif config.is_memory:
        options["poolclass"] = StaticPool
    else:
        options["poolclass"] = NullPool
    for key, value in engine_options.items():
        if key == "connect_args" and isinstance(value, dict):
            options[key] = {**options.get(key, {}), **value}  # keep our connect timeout
        else:
            options[key] = value
    _check_pooler_args(config, options.get("connect_args", {}))
    try:
        engine = create_async_engine(config.async_url, **options)
    except (ArgumentError, TypeError) as exc:
        raise ConfigurationError(f"invalid engine options: {exc}") from exc
    if config.dialect == "sqlite":
        install_sqlite_setup(engine.sync_engine, config, settings, begin="BEGIN IMMEDIATE")
    return engine
