"""db/driver.py: hot-path statements compiled once per dialect, run on the DBAPI cursor."""

from __future__ import annotations

import inspect
import itertools
import logging
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    create_engine,
    event,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.types import TypeDecorator

from statestore import Event, StateStore, WorkflowDefinition, WorkflowExecution
from statestore.db import queries
from statestore.db.driver import DriverStatement, RawValue
from statestore.db.schema import TENANT_OWNED_MODELS, EventRow, ExecutionRow
from statestore.db.sqlite_runner import SqliteRunner
from statestore.db.types import UTCDateTime, json_type
from statestore.errors import ValidationError
from statestore.event_kinds import NodeCompleted

KIND = NodeCompleted(node_id="n", output={}, state_patch={}, duration_ms=1)
DIALECTS = [sqlite.pysqlite.dialect(), postgresql.asyncpg.dialect()]


# Every statement builder of queries.py with the shapes it is built in (a few counts where
# it takes one).
SHAPES: dict[str, list[tuple[Any, ...]]] = {
    "_tenant": [(False,), (True,)],
    "_execution": [()],
    "_insert": [(ExecutionRow,), (EventRow,)],
    "_reserve": [(False,), (True,)],
    "_append_one": [(False,), (True,)],
    "_events_since": [()],
    "_feed": [()],
    "_checkpoint": [()],
    "_artifact": [(False,), (True,)],
    "_latest_sequence": [()],
    "_enqueue": [(), ("sqlite",), ("postgresql",)],  # deduped: one construct per dialect
    "_deduped": [()],
    "_new_work": [()],
    "_claim": [(1,), (3,)],
    "_lease": [shape for shape in itertools.product((False, True), repeat=3)],
    "_renew": [(False,), (True,)],
    "_complete": [
        (1, False, False),
        (1, True, True),
        (4, True, True, False),
        (4, True, True, True),
    ],
    "_release": [(1,), (4,)],
    "_token": [()],
    "_turn_lock": [()],
    "_advance": [(False,), (True,)],
    "_record_effect": [()],
    "_notify": [(1,), (3,)],
    "_next_due": [(1,), (3,)],
}


def test_every_statement_builder_is_listed() -> None:
    """A builder missing from SHAPES would escape the checks below."""
    builders = {
        name
        for name, value in vars(queries).items()
        if inspect.isfunction(value)
        and value.__module__ == queries.__name__
        and inspect.get_annotations(value).get("return") in ("Executable", "Update")
    }
    assert builders == set(SHAPES)


def every_statement(scoped: bool, dialect: Any = None) -> list[tuple[str, DriverStatement]]:
    """Every statement queries.py builds, in every listed shape (a shape naming a dialect
    is built with that dialect's own construct: only for ``dialect``, when given)."""
    names = {d.name for d in DIALECTS}
    return [
        (f"{name}{shape}", queries._prepared(getattr(queries, name), scoped, *shape))
        for name, shapes in SHAPES.items()
        for shape in shapes
        if dialect is None or not (names & set(shape)) or dialect.name in shape
    ]


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_every_hot_path_statement_compiles_for_both_dialects(dialect: Any) -> None:
    statements = every_statement(False, dialect) + every_statement(True, dialect)
    assert len(statements) >= 40  # every shape of every hot path, scoped and not
    for _name, statement in statements:
        compiled = statement._compiled_for(dialect)
        assert compiled.sql and "POSTCOMPILE" not in compiled.sql


TENANT_OWNED = [model.__tablename__ for model in TENANT_OWNED_MODELS]


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_scoped_statements_confine_every_tenant_owned_table(dialect: Any) -> None:
    """The scoped form of each statement carries ``tenant_id = :p_tenant`` wherever it reads
    or updates a tenant-owned table (its CTEs, subqueries and joins included); the unscoped
    form never does. tenancy.confine adds it through the ORM, which only sees ORM-enabled
    statements: a statement built on Core tables would come back unconfined, and fail here."""
    # An inserted event's feed position is database-wide by design (queries.feed_position:
    # on SQLite one more than the highest position of any tenant); it returns no row.
    feed_position = str(queries.feed_position().compile(dialect=dialect))
    for name, statement in every_statement(True, dialect):
        compiled = statement._compiled_for(dialect)
        sql = compiled.sql.replace(feed_position, "")
        for table in TENANT_OWNED:
            uses = len(re.findall(rf"\b(?:FROM|JOIN|UPDATE) {table}\b", sql))
            confined = sql.count(f"{table}.tenant_id = ")
            assert confined >= uses, f"{name}: {table} unconfined in {compiled.sql}"
        assert queries.TENANT in compiled.names or "tenant_id = " not in compiled.sql, name
    for name, statement in every_statement(False, dialect):
        assert queries.TENANT not in statement._compiled_for(dialect).names, name


def test_expanding_parameters_are_refused() -> None:
    table = Table("t", MetaData(), Column("x", Integer))
    statement = DriverStatement(select(table.c.x).where(table.c.x.in_([1, 2])))
    with pytest.raises(TypeError, match="expanding"):
        statement._compiled_for(sqlite.pysqlite.dialect())


def test_values_are_encoded_and_decoded_by_the_column_types(tmp_path: Path) -> None:
    """Binds go through the types' processors (an aware datetime stored as SQLAlchemy
    stores it, JSON serialised), rows come back decoded; a RawValue is bound as given; a
    driver error arrives wrapped as SQLAlchemy wraps it."""
    metadata = MetaData()
    table = Table(
        "t",
        metadata,
        Column("id", String(8), primary_key=True),
        Column("at", UTCDateTime()),
        Column("doc", json_type()),
    )
    engine = create_engine(f"sqlite:///{tmp_path / 'd.db'}")
    metadata.create_all(engine)
    insert = DriverStatement(
        table.insert().values(
            id=bindparam("id"), at=bindparam("at", type_=UTCDateTime()), doc=bindparam("doc")
        )
    )
    read = DriverStatement(select(table).where(table.c.id == bindparam("id")))
    at = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    with engine.begin() as connection:
        insert.execute(connection, {"id": "a", "at": at, "doc": {"k": [1, "two"]}})
        insert.execute(connection, {"id": "b", "at": at, "doc": RawValue('{"raw":true}')})
        stored = connection.exec_driver_sql("SELECT at, doc FROM t WHERE id = 'a'").one()
        assert stored == ("2026-01-02 03:04:05.000006", '{"k": [1, "two"]}')
        (row,) = read.execute(connection, {"id": "a"})
        assert (row.id, row.at, row.doc) == ("a", at, {"k": [1, "two"]})
        assert read.execute(connection, {"id": "b"})[0].doc == {"raw": True}
        with pytest.raises(IntegrityError):
            insert.execute(connection, {"id": "a", "at": at, "doc": {}})
    engine.dispose()


async def test_cursor_listeners_see_hot_path_statements_with_a_context(
    store: StateStore,
) -> None:
    """Tracing listeners keep state on the execution context and may rewrite the statement
    (``retval=True``): the hot paths then run through SQLAlchemy's execution for them."""
    engines = [store.engine.sync_engine]
    runner = store._shared.runner
    if isinstance(runner, SqliteRunner):
        engines = [runner.writer.engine, *([runner.readers.engine] if runner.readers else [])]
    seen: list[str] = []

    def before(_c: Any, _cur: Any, statement: str, params: Any, context: Any, _m: bool) -> Any:
        context.span = statement.split()[0]
        return "/* traced */ " + statement, params

    def after(_c: Any, _cur: Any, statement: str, _p: Any, context: Any, _m: bool) -> None:
        assert statement.startswith("/* traced */")
        seen.append(context.span)

    for engine in engines:
        event.listen(engine, "before_cursor_execute", before, retval=True)
        event.listen(engine, "after_cursor_execute", after)
    try:
        await store.store_workflow(WorkflowDefinition(workflow_id="wf", version="1", ir={}))
        execution = WorkflowExecution(workflow_id="wf", workflow_version="1")
        await store.create_execution(execution)
        await store.append_event(Event(execution_id=execution.execution_id, kind=KIND))
        assert [e.sequence for e in await store.get_events(execution.execution_id)] == [1]
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", before)
            event.remove(engine, "after_cursor_execute", after)
    assert {"INSERT", "SELECT"} <= set(seen)
    assert any(span in ("UPDATE", "WITH") for span in seen)  # the append


def test_sqlite_timestamps_parse_fast_and_exactly() -> None:
    """UTCDateTime on SQLite reads SQLAlchemy's stored form (and other ISO forms) back as
    the aware UTC datetime that was written; what it cannot parse goes SQLAlchemy's way."""
    dialect = sqlite.pysqlite.dialect()
    process = UTCDateTime().dialect_impl(dialect).result_processor(dialect, None)
    assert process is not None
    written = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    stored = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)(written)  # type: ignore[misc]
    assert stored == "2026-01-02 03:04:05.000006"
    assert process(stored) == written and process(stored).tzinfo is UTC
    assert process("2026-01-02 03:04:05") == written.replace(microsecond=0)
    assert process("2026-01-02T05:04:05.000006+02:00") == written
    assert process(None) is None
    with pytest.raises(ValueError):
        process("not a time")


def test_sqlite_timestamps_are_written_in_sqlalchemys_form() -> None:
    """UTCDateTime's own SQLite bind processor writes exactly the text SQLAlchemy's
    DateTime would (what is stored already, and what its result processor parses), in
    UTC; a naive datetime is refused as before."""
    dialect = sqlite.pysqlite.dialect()
    fast = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    general = TypeDecorator.bind_processor(UTCDateTime().dialect_impl(dialect), dialect)
    assert fast is not None and general is not None
    east = timezone(timedelta(hours=5, minutes=30))
    values = [
        datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),  # no microseconds: still six digits
        datetime(1, 1, 1, tzinfo=UTC),  # years below 1000: still four digits
        datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 3, 1, 2, 0, tzinfo=east),  # converted to UTC: the day before
    ]
    for value in values:
        assert fast(value) == general(value), value
    assert fast(datetime(2026, 3, 1, 2, 0, tzinfo=east)) == "2026-02-28 20:30:00.000000"
    assert fast(None) is None
    with pytest.raises(ValidationError, match="timezone-aware"):
        fast(datetime(2026, 1, 2))


async def test_sqlalchemy_statement_logging_sees_hot_path_statements(
    make_store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """``echo=True`` or the ``sqlalchemy.engine`` logger at INFO logs every statement the
    store sends, the hot paths on the DBAPI cursor included."""
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")
    store: StateStore = await make_store()
    execution = WorkflowExecution(workflow_id="wf", workflow_version="1")
    await store.create_execution(execution)
    await store.append_event(Event(execution_id=execution.execution_id, kind=KIND))
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert "INSERT INTO workflow_executions" in logged
    assert "INSERT INTO events" in logged
