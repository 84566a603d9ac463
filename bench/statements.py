"""The store's own SQL, for the raw contenders: no statement is written out by hand.

Each raw statement is the Core construct the store runs, taken from the builder in
statestore/db/queries.py (through ``queries._prepared``, the store's own cache of them) and
compiled by the store's own :class:`statestore.db.driver.DriverStatement` for the dialect the
store runs it on. That dialect already speaks the raw driver's paramstyle (``?`` for
sqlite3, ``$1`` for asyncpg), so what changes for the raw driver is only how the arguments
are passed: positionally, in the compiled statement's order (:meth:`RawStatement.args`),
values in the driver's own form (encoded by the raw contender, not by the store's type
processors). tests/test_bench_harness.py checks that every one of them is a statement the
store sends for the operation: those of the hot-path cells (:func:`compiled`) and those of
the turn bench/turns.py runs raw (:func:`compiled_turn`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Dialect, Executable, bindparam, func, select

from statestore.db import queries
from statestore.db.driver import DriverStatement
from statestore.db.schema import EventRow, ExecutionRow, WorkItemRow


@dataclass(frozen=True)
class RawStatement:
    """One store statement as the raw driver runs it."""

    sql: str
    names: tuple[str, ...]
    """The parameters, by bind name, in the driver's positional order."""
    defaults: dict[str, Any]
    """Parameters the compiler added with a value of their own (e.g. ``+ 1``, ``OFFSET``)."""
    columns: tuple[str, ...]
    """The result columns, by name, in order (empty without rows)."""

    def args(self, values: dict[str, Any]) -> tuple[Any, ...]:
        """The positional arguments for ``values`` (by bind name) plus the defaults."""
        defaults = self.defaults
        return tuple(values[n] if n in values else defaults[n] for n in self.names)

    def binder(self, *given: str) -> Callable[..., tuple[Any, ...]]:
        """A fast ``args`` for a hot loop: ``binder("a", "b")(a, b)`` is ``args({"a": a,
        "b": b})``, the reordering done by one ``itemgetter``."""
        extra = [name for name in self.defaults if name not in given]
        pool = [*given, *extra]
        fixed = tuple(self.defaults[name] for name in extra)
        pick = operator.itemgetter(*(pool.index(name) for name in self.names))
        if len(self.names) == 1:
            return lambda *values: (pick((*values, *fixed)),)
        return lambda *values: pick((*values, *fixed))

    def column(self, name: str) -> int:
        """The index of a result column."""
        return self.columns.index(name)


def _queue_counts() -> Executable:
    """Untimed check after a queue cell: (status, worker_id, count) of one queue type."""
    return (
        select(WorkItemRow.status, WorkItemRow.worker_id, func.count())
        .where(WorkItemRow.queue_type == bindparam("p_type"))
        .group_by(WorkItemRow.status, WorkItemRow.worker_id)
    )


CLAIM_BATCH = 100
"""Items per call of the batched queue cell."""
COMPLETE_BATCH = 1 << (min(CLAIM_BATCH, queries.COMPLETE_CHUNK) - 1).bit_length()
"""The bulk completion statement the store uses for ``CLAIM_BATCH`` items (padded to a power
of two)."""


def catalogue(
    dialect_name: str,
) -> dict[str, tuple[Callable[..., Executable], tuple[Hashable, ...]]]:
    """Every raw statement by name: the store's builder and its shape on ``dialect_name``,
    as the store calls it for the operation (unscoped: the bench's store is the default,
    unscoped one)."""
    sqlite = dialect_name == "sqlite"
    statements: dict[str, tuple[Callable[..., Executable], tuple[Hashable, ...]]] = {
        # append_event: on PostgreSQL one statement; on SQLite the bump, then the insert.
        "append_one": (queries._append_one, (False,)),
        "reserve": (queries._reserve, (False,)),
        "insert_event": (queries._insert, (EventRow,)),
        "events": (queries._events_since, ()),
        "tenant": (queries._tenant, (False,)),
        "insert_execution": (queries._insert, (ExecutionRow,)),
        "execution": (queries._execution, ()),
        "claim": (queries._claim, (1,)),
        "complete": (queries._complete, (1, True, True)),
        "complete_many": (queries._complete, (COMPLETE_BATCH, True, True, sqlite)),
        "token": (queries._token, ()),
        # Untimed: the queue's top-up and the exactly-once check.
        "insert_item": (queries._insert, (WorkItemRow,)),
        "queue_counts": (_queue_counts, ()),
    }
    if sqlite:
        del statements["append_one"]
    else:
        del statements["reserve"], statements["insert_event"]
    return statements


def turn_catalogue() -> dict[str, tuple[Callable[..., Executable], bool, tuple[Hashable, ...]]]:
    """The statements of ``commit_turn`` for a claimed item with one event, a state patch
    and one successor, in the order the store sends them (statestore/repositories/turns.py),
    by name: the builder, whether the store runs it confined to the tenant ``:p_tenant``,
    and its shape. The same on both databases. The lock runs as the unscoped store's
    statements do; then the turn acts for the item's tenant only, so the settle, the
    execution's update and the successor's insert are confined to it, while the event's
    insert is run as built (its tenant given)."""
    return {
        "lock": (queries._turn_lock, False, ()),
        "settle": (queries._complete, True, (1, True, True)),
        "advance": (queries._advance, True, (True,)),
        "insert_event": (queries._insert, False, (EventRow,)),
        "enqueue": (queries._enqueue, True, ()),
    }


def _raw(statement: DriverStatement, dialect: Dialect) -> RawStatement:
    """``statement`` as the store's driver compiles it for ``dialect``."""
    done = statement._compiled_for(dialect)
    columns = () if done.row_type is None else done.row_type.__self__._fields  # type: ignore[attr-defined]
    return RawStatement(done.sql, done.names, dict(done.defaults), tuple(columns))


def compiled(dialect: Dialect) -> dict[str, RawStatement]:
    """The catalogue compiled for ``dialect`` (the store's: ``store.engine.dialect``)."""
    out = {}
    for name, (build, shape) in catalogue(dialect.name).items():
        if build is _queue_counts:
            statement = DriverStatement(build())
        else:
            statement = queries._prepared(build, False, *shape)
        out[name] = _raw(statement, dialect)
    return out


def compiled_turn(dialect: Dialect) -> dict[str, RawStatement]:
    """The turn's statements (:func:`turn_catalogue`) compiled for ``dialect``."""
    return {
        name: _raw(queries._prepared(build, scoped, *shape), dialect)
        for name, (build, scoped, shape) in turn_catalogue().items()
    }


def bulk_completion(
    sql: dict[str, RawStatement],
    rows: Sequence[Any],
    worker: str,
    now: Any,
    i_id: int,
    i_fence: int,
) -> tuple[str, tuple[Any, ...]]:
    """The store's bulk completion of claimed ``rows`` (their id and fence at ``i_id`` and
    ``i_fence``), padded like the store's to the statement's size by repeating the first:
    its SQL and arguments."""
    statement = sql["complete_many"]
    values: dict[str, Any] = {"p_now": now}
    padded = [*rows, *[rows[0]] * (COMPLETE_BATCH - len(rows))]
    for i, row in enumerate(padded):
        values[f"p_id{i}"], values[f"p_worker{i}"] = row[i_id], worker
        values[f"p_fence{i}"] = row[i_fence]
    return statement.sql, statement.args(values)
