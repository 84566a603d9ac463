"""Hot-path statements run straight on the DBAPI cursor, compiled once per dialect.

SQLAlchemy's execution machinery (execution context, events, result wrapping) costs about
10-15 µs per statement on top of the driver here; on a hot path of two statements and a
commit that is a third of the call. A :class:`DriverStatement` keeps the Core construct as the
one source of the SQL: it is compiled once per dialect into the driver's SQL string, the
order of its parameters and the dialect's own bind and result processors for their types
(so values are encoded and decoded exactly as the ORM paths do). Executing it is then one
cursor call plus those processors.

Failures are wrapped the way SQLAlchemy wraps them (:meth:`DBAPIError.instance`), and a
connection the dialect reports as disconnected is invalidated, so the pool never hands it
out again; :mod:`statestore.db.errors` translates the rest. When the engine has cursor
listeners (tracing such as OpenTelemetry, statement rewriting, ``handle_error`` hooks), the
same SQL goes through ``Connection.exec_driver_sql`` instead, so they run as usual.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Connection, Dialect, Executable
from sqlalchemy import exc as sa_exc
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import TypeEngine

Processor = Callable[[Any], Any]


class RawValue:
    """A parameter value that is already in the driver's form (e.g. JSON text produced by
    the store's own check): bound as is, skipping the column type's processor."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]
    defaults: dict[str, Any]
    bind: tuple[Processor | None, ...]
    result: tuple[tuple[int, Processor], ...]
    """(column index, result processor) of the columns that have one."""
    row_type: Callable[[Any], NamedTuple] | None


class DriverStatement:
    """A Core statement run on the DBAPI cursor; compiled lazily, once per dialect.

    Parameters are passed by bind name. Rows come back as named tuples (fields named after
    the statement's columns), already decoded by the column types' result processors.
    """

    __slots__ = ("_by_dialect", "statement")

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._by_dialect: dict[tuple[str, object, object], _Compiled] = {}

    def execute(self, connection: Connection, params: Mapping[str, Any]) -> list[Any]:
        """Run with ``params``; the decoded rows (empty for statements without rows)."""
        compiled = self._compiled_for(connection.dialect)
        args = _bind_args(compiled, params)
        return _execute_and_decode(connection, compiled, args)

    def execute_many(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run once per parameter set (``executemany``); for statements without rows."""
        compiled = self._compiled_for(connection.dialect)
        batch = [_bind_args(compiled, params) for params in rows]
        _execute_and_decode(connection, compiled, batch, many=True)

    def _compiled_for(self, dialect: Dialect) -> _Compiled:
        # The processors depend on the dialect and on the engine's JSON (de)serialisers.
        key = (
            dialect.name,
            getattr(dialect, "_json_serializer", None),
            getattr(dialect, "_json_deserializer", None),
        )
        compiled = self._by_dialect.get(key)
        if compiled is None:  # a race compiles it twice; both are equal
            compiled = _compile(self.statement, dialect)
            self._by_dialect[key] = compiled
        return compiled


def _bind_args(compiled: _Compiled, params: Mapping[str, Any]) -> tuple[Any, ...]:
    args = []
    defaults = compiled.defaults
    for name, process in zip(compiled.names, compiled.bind, strict=True):
        value = params[name] if name in params else defaults[name]
        if type(value) is RawValue:
            args.append(value.value)
        elif process is None:
            args.append(value)
        else:
            args.append(process(value))
    return tuple(args)


def _compile(statement: Executable, dialect: Dialect) -> _Compiled:
    compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
    assert isinstance(compiled, SQLCompiler)
    if compiled.positiontup is None:
        raise TypeError(f"{dialect.name}: DriverStatement needs a positional paramstyle")
    names = tuple(compiled.positiontup)
    expanding = [name for name in names if compiled.binds[name].expanding]
    if expanding:  # their SQL is rendered per call; build one statement per list length
        raise TypeError(f"DriverStatement cannot take expanding parameters: {expanding}")
    # Parameters the compiler added with a value of their own (e.g. SQLite's "OFFSET ?").
    defaults = {
        name: compiled.binds[name].effective_value
        for name in names
        if not compiled.binds[name].required
    }
    bind = tuple(
        compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names
    )
    # Each result column's key and type, in order (the statement's own columns: no text SQL).
    columns = compiled._result_columns
    processors = [_result_processor(column[3], dialect) for column in columns]
    result = tuple((i, process) for i, process in enumerate(processors) if process is not None)
    row_type = None
    if columns:
        row_type = namedtuple("Row", [key for key, *_ in columns])._make  # type: ignore[attr-defined]
    return _Compiled(compiled.string, names, defaults, bind, result, row_type)


def _result_processor(column_type: TypeEngine[Any], dialect: Dialect) -> Processor | None:
    return column_type.dialect_impl(dialect).result_processor(dialect, None)


def _execute_and_decode(
    connection: Connection, compiled: _Compiled, args: Any, *, many: bool = False
) -> list[Any]:
    """Run the statement (on the cursor, or through SQLAlchemy's execution when listeners
    want to see it); its rows as named tuples, decoded by the result processors."""
    if _instrumented(connection) or connection._echo:
        # Instrumented (tracing, statement rewriting, tests capturing the SQL) or logged
        # (``echo=True``, or the ``sqlalchemy.engine`` logger at INFO): listeners and the
        # log get SQLAlchemy's own execution, with a real context, for the same SQL.
        rows = _execute_through_sqlalchemy(connection, compiled, args, many)
    else:
        rows = _execute_on_cursor(connection, compiled, args, many)
    make = compiled.row_type
    if make is None:
        return []
    processors = compiled.result
    if not processors:
        return [make(row) for row in rows]
    # Only the columns with a processor are converted, in place in a copy of the row: most
    # columns (text, integers, and on asyncpg UUIDs and timestamps) have none.
    decoded = []
    for row in rows:
        values = list(row)
        for i, process in processors:
            values[i] = process(values[i])
        decoded.append(make(values))
    return decoded


def _instrumented(connection: Connection) -> bool:
    """Whether a listener wants to see this connection's statements (or their errors).

    SQLAlchemy sets ``_has_events`` on whatever a listener is added to (a connection or
    engine, their classes, a dialect) and never clears it; it reads these same flags to
    decide whether to dispatch an event at all. They are plain attributes, read live, so a
    listener added after the hot calls is seen at the next statement; only when one is set
    are the listener collections themselves looked at (each a method call)."""
    if connection._has_events or connection.engine._has_events:
        dispatch = connection.dispatch
        if dispatch.before_cursor_execute or dispatch.after_cursor_execute:
            return True
    dialect = connection.dialect
    return bool(dialect._has_events and dialect.dispatch.handle_error)


def _execute_on_cursor(
    connection: Connection, compiled: _Compiled, args: Any, many: bool
) -> Sequence[Any]:
    dbapi_connection = connection.connection.dbapi_connection
    assert dbapi_connection is not None
    cursor = dbapi_connection.cursor()
    try:
        if many:
            cursor.executemany(compiled.sql, args)
            return []
        cursor.execute(compiled.sql, args)
        return [] if compiled.row_type is None else cursor.fetchall()
    except Exception as exc:
        raise _wrapped(connection, compiled, args, exc, cursor) from exc
    finally:
        cursor.close()


def _execute_through_sqlalchemy(
    connection: Connection, compiled: _Compiled, args: Any, many: bool
) -> Sequence[Any]:
    result = connection.exec_driver_sql(compiled.sql, list(args) if many else args)
    return result.fetchall() if compiled.row_type is not None and not many else []


def _wrapped(
    connection: Connection, compiled: _Compiled, args: Any, exc: Exception, cursor: Any
) -> BaseException:
    dialect = connection.dialect
    dbapi = dialect.loaded_dbapi
    if not isinstance(exc, dbapi.Error):
        return exc
    lost = dialect.is_disconnect(exc, connection.connection.dbapi_connection, cursor)
    if lost:
        # What SQLAlchemy's own handler does on a disconnect: a server restart or a
        # terminated backend drops every connection the pool made before now, so the pool
        # replaces each of them at its next checkout; this one is invalidated at once.
        connection.engine.pool._invalidate(connection.connection, exc)
        connection.invalidate(exc)
    return sa_exc.DBAPIError.instance(
        compiled.sql, args, exc, dbapi.Error, connection_invalidated=lost, dialect=dialect
    )
