"""Faults at the DBAPI level: a proxy around every driver connection an engine's pool
creates, which fails (or cancels the caller) at the N-th driver call.

It sits below SQLAlchemy and below the store's own driver path (``db/driver.py``), so the
path under test is the production one: no SQLAlchemy listener is added (a listener would
switch the hot paths to ``exec_driver_sql``). Counted calls: ``execute`` and
``executemany`` on the connection (SQLite's ``BEGIN IMMEDIATE`` and SAVEPOINTs go there) or
on a cursor (statements; asyncpg's BEGIN and SAVEPOINTs are sent from there), and
``commit``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine

Action = Callable[[str], None]


class DriverFaults:
    """Install on an engine before it opens its first connection."""

    def __init__(self, engine: Engine) -> None:
        self.error_type: type[Exception] = engine.dialect.loaded_dbapi.OperationalError
        self.at = 0
        self.seen = 0
        self.calls: list[str] = []
        self._action: Action | None = None
        pool = engine.pool
        create = pool._invoke_creator

        def wrapped(record: Any) -> Any:
            return _Connection(create(record), self)

        pool._invoke_creator = wrapped

    def fail(self, what: str) -> None:
        """The default action: the driver raises its own error before doing anything."""
        raise self.error_type(f"injected fault at driver call {self.seen} ({what})")

    @contextmanager
    def armed(self, at: int, action: Action | None = None) -> Iterator[None]:
        """Within the block, driver call number ``at`` runs ``action`` (default: fail)."""
        self.at, self.seen, self.calls = at, 0, []
        self._action = action or self.fail
        try:
            yield
        finally:
            self._action = None

    def hit(self, what: str) -> None:
        if self._action is None:
            return
        self.seen += 1
        self.calls.append(what[:60])
        if self.seen == self.at:
            self._action(what)


class _Cursor:
    __slots__ = ("_faults", "_wrapped_cursor")

    def __init__(self, cursor: Any, faults: DriverFaults) -> None:
        self._wrapped_cursor = cursor
        self._faults = faults

    def execute(self, sql: str, *args: Any) -> Any:
        self._faults.hit(sql)
        return self._wrapped_cursor.execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        self._faults.hit(sql)
        return self._wrapped_cursor.executemany(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped_cursor, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _Cursor.__slots__:
            object.__setattr__(self, name, value)
        else:
            setattr(self._wrapped_cursor, name, value)

    def __iter__(self) -> Any:
        return iter(self._wrapped_cursor)


class _Connection:
    __slots__ = ("_faults", "_wrapped")

    def __init__(self, connection: Any, faults: DriverFaults) -> None:
        self._wrapped = connection
        self._faults = faults

    def cursor(self, *args: Any, **kwargs: Any) -> _Cursor:
        return _Cursor(self._wrapped.cursor(*args, **kwargs), self._faults)

    def execute(self, sql: str, *args: Any) -> Any:
        self._faults.hit(sql)
        return self._wrapped.execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        self._faults.hit(sql)
        return self._wrapped.executemany(sql, *args)

    def commit(self) -> Any:
        self._faults.hit("COMMIT")
        return self._wrapped.commit()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _Connection.__slots__:
            object.__setattr__(self, name, value)
        else:
            setattr(self._wrapped, name, value)
