"""Running Alembic programmatically: upgrade, downgrade, current, head and drift checks.

The revisions live in the repository's ``alembic/`` folder and ship inside the wheel as
``statestore/_migrations`` (forced into the wheel by pyproject.toml), so ``store.migrate()``
and ``statestore db upgrade`` apply exactly the revisions that ``alembic upgrade head``
applies from a checkout.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, text

from statestore.errors import MigrationError

_PACKAGE_DIR = Path(__file__).resolve().parent.parent
# A fixed key for pg_advisory_xact_lock: only one process migrates a database at a time.
PG_MIGRATION_LOCK_KEY = 0x5157A7E5


def migrations_dir() -> Path:
    """The folder holding ``env.py`` and ``versions/``: inside the installed package, or the
    source checkout's ``alembic/`` (editable installs)."""
    for candidate in (_PACKAGE_DIR / "_migrations", _PACKAGE_DIR.parent / "alembic"):
        if (candidate / "env.py").is_file():
            return candidate
    raise MigrationError(f"no migration scripts found next to {_PACKAGE_DIR}")


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at our scripts; with ``connection``, env.py runs on it."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def head_revision() -> str:
    """The head revision this package's scripts define."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise MigrationError("the migration scripts define no revision")
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at (``None`` for an empty database)."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Upgrade the database on ``connection`` to ``revision``."""
    try:
        command.upgrade(alembic_config(connection), revision)
    except CommandError as exc:
        raise MigrationError(f"cannot upgrade to {revision}: {exc}") from exc


def downgrade(connection: Connection, revision: str) -> None:
    """Downgrade the database on ``connection`` to ``revision``."""
    try:
        command.downgrade(alembic_config(connection), revision)
    except CommandError as exc:
        raise MigrationError(f"cannot downgrade to {revision}: {exc}") from exc


# Indexes on expressions (``priority DESC``) that SQLite's reflection cannot compare; their
# exact definition is checked by a test that reads sqlite_master / pg_indexes instead.
EXPRESSION_INDEXES = frozenset({"ix_work_items_claim"})
IncludeObject = Callable[[Any, str | None, str, bool, Any], bool]


def include_object_for(dialect_name: str) -> IncludeObject:
    """Autogenerate filter: on SQLite, leave expression indexes out of the comparison."""

    def include_object(
        obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
    ) -> bool:
        return not (dialect_name == "sqlite" and type_ == "index" and name in EXPRESSION_INDEXES)

    return include_object


def schema_drift(connection: Connection) -> list[Any]:
    """Differences between the database and the ORM metadata (empty: none)."""
    from statestore.db.schema import Base

    options = {
        "compare_type": True,
        "include_object": include_object_for(connection.dialect.name),
    }
    context = MigrationContext.configure(connection, opts=options)
    return list(compare_metadata(context, Base.metadata))


def take_migration_lock(connection: Connection) -> None:
    """Serialise concurrent migrators. PostgreSQL: a transaction-scoped advisory lock.
    SQLite: the transaction already began with BEGIN IMMEDIATE, which holds the write lock."""
    if connection.dialect.name == "postgresql":
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK_KEY}
        )


def require_head(connection: Connection) -> None:
    """Raise :class:`MigrationError` unless the database is at this package's head."""
    current = current_revision(connection)
    head = head_revision()
    if current != head:
        raise MigrationError(
            f"database schema is at revision {current or 'none (empty database)'}, this "
            f"statestore needs {head}; run `statestore db upgrade` (or `await store.migrate()`)"
        )
