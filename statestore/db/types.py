"""Column types shared by the schema."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Dialect, String
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.types import TypeDecorator, TypeEngine

from statestore.validation import check_datetime


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always an aware UTC datetime in Python.

    Naive datetimes are refused (they are ambiguous). SQLite keeps no offset, so values are
    stored there as naive UTC in SQLAlchemy's fixed-width text form, which sorts
    chronologically; PostgreSQL stores ``timestamptz``.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = check_datetime("timestamp", value)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        """On SQLite, write SQLAlchemy's stored form (``2026-01-02 03:04:05.000006``: fixed
        width, so text order is time order) with ``datetime.isoformat`` (C; the general way
        is two Python calls and a ``%`` format of seven fields, a tenth of a claim's
        Python). Same check, same text (tests/test_driver.py compares them)."""
        general = super().bind_processor(dialect)
        if dialect.name != "sqlite":
            return general

        def process(value: Any) -> str | None:
            if value is None:
                return None
            utc = check_datetime("timestamp", value)
            return utc.replace(tzinfo=None).isoformat(" ", "microseconds")

        return process

    def result_processor(self, dialect: Dialect, coltype: Any) -> Callable[[Any], Any] | None:
        """On SQLite, parse the stored text with ``datetime.fromisoformat`` (C, ~20x faster
        than SQLAlchemy's regular expression; the hot paths read several timestamps per
        row); anything it cannot parse goes the general way."""
        general = super().result_processor(dialect, coltype)
        if dialect.name != "sqlite" or general is None:
            return general

        def process(value: Any) -> datetime | None:
            if value is None:
                return None
            try:
                parsed = datetime.fromisoformat(value)
            except (TypeError, ValueError):
                result: datetime | None = general(value)
                return result
            if parsed.tzinfo is None:
                return parsed.replace(tzinfo=UTC)
            return parsed.astimezone(UTC)

        return process


class JsonText(JSON):
    """JSON stored as the exact text the store wrote, so every value reads back as written
    on both databases (``1e16`` stays a float, ``-0.0`` keeps its sign, keys keep their
    order).

    PostgreSQL: ``json``, which keeps the text; ``jsonb`` re-renders numbers as ``numeric``
    (``1e16`` came back as the int ``10000000000000000``, ``-0.0`` as ``0.0``) and sorts
    keys. SQLite: a ``TEXT`` column; a column declared ``JSON`` has NUMERIC affinity, which
    turns a top-level number into an INTEGER or REAL (``2**63`` came back as a float).
    Values are encoded and decoded as SQLAlchemy's JSON type does; only the DDL differs.
    """

    cache_ok = True


@compiles(JsonText, "sqlite")
def _sqlite_json_text(type_: JsonText, compiler: Any, **kw: Any) -> str:
    return "TEXT"


def json_type(*, nullable: bool = False) -> TypeEngine[Any]:
    """A :class:`JsonText` column. ``nullable=True`` stores Python ``None`` as SQL NULL;
    otherwise ``None`` is JSON ``null``."""
    return JsonText(none_as_null=nullable)


def identifier_type(length: int) -> TypeEngine[str]:
    """A string key that sorts bytewise on both databases (PostgreSQL: collation "C"; SQLite
    compares bytes by default), so listings are ordered the same whatever the server's
    locale."""
    return String(length).with_variant(String(length, collation="C"), "postgresql")
