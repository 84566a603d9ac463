"""Translate driver and SQLAlchemy exceptions into :mod:`statestore.errors`, in one place."""

from __future__ import annotations

import sqlite3

import pydantic
from sqlalchemy import exc as sa_exc

from statestore.errors import (
    ConflictError,
    DatabaseError,
    NotFoundError,
    StateStoreError,
    ValidationError,
)
from statestore.validation import pydantic_error

_PG_UNIQUE = "23505"
_PG_FOREIGN_KEY = "23503"
_PG_INVALID_TEXT = {"22021", "22P05", "54000"}  # bad encoding, untranslatable, too long


def translate(exc: BaseException) -> StateStoreError:
    """The statestore error for ``exc``; the caller raises it ``from exc``."""
    if isinstance(exc, StateStoreError):
        return exc
    if isinstance(exc, sa_exc.StatementError) and isinstance(exc.orig, StateStoreError):
        return exc.orig  # raised by one of our column types while binding parameters
    if isinstance(exc, pydantic.ValidationError):
        return pydantic_error("value", exc)
    if isinstance(exc, sa_exc.IntegrityError):
        return _integrity(exc)
    if isinstance(exc, sa_exc.DBAPIError):
        code = sqlstate(exc)
        if code in _PG_INVALID_TEXT:
            return ValidationError(f"the database refused a value: {_first_line(exc.orig)}")
        return DatabaseError(f"database error: {_first_line(exc.orig)}")
    if isinstance(exc, sa_exc.SQLAlchemyError | sqlite3.Error | OSError):
        return DatabaseError(f"database error: {_first_line(exc)}")
    return DatabaseError(f"unexpected {type(exc).__name__}: {_first_line(exc)}")


def _integrity(exc: sa_exc.IntegrityError) -> StateStoreError:
    code = sqlstate(exc)
    name = getattr(exc.orig, "sqlite_errorname", "")
    message = _first_line(exc.orig)
    if code == _PG_UNIQUE or name in {"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"}:
        return ConflictError(f"duplicate key: {message}")
    if code == _PG_FOREIGN_KEY or name == "SQLITE_CONSTRAINT_FOREIGNKEY":
        return NotFoundError(f"referenced row does not exist: {message}")
    return ConflictError(f"constraint violated: {message}")


def sqlstate(exc: sa_exc.DBAPIError) -> str | None:
    """The SQLSTATE the server reported for ``exc`` (PostgreSQL), or ``None``."""
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code is None:
        # SQLAlchemy's asyncpg adapter keeps the asyncpg exception as __cause__.
        cause = getattr(orig, "__cause__", None)
        code = getattr(cause, "sqlstate", None)
    return code if isinstance(code, str) else None


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]
