"""What importing statestore loads: heavy parts (SQLAlchemy, Alembic, rich) only when used.

Each check runs in a fresh interpreter, whose ``sys.modules`` starts empty."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import statestore

HEAVY = ("alembic", "rich", "sqlalchemy", "asyncpg", "aiosqlite", "statestore.demo")


def loaded_after(statement: str) -> set[str]:
    """Which of :data:`HEAVY` a fresh interpreter has imported after ``statement``."""
    code = f"import sys\n{statement}\nprint(__import__('json').dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(result.stdout)) & set(HEAVY)


def test_import_statestore_loads_nothing_heavy() -> None:
    assert loaded_after("import statestore") == set()


def test_the_store_loads_neither_alembic_nor_rich() -> None:
    """Opening a store needs SQLAlchemy; migrations (Alembic) and rich load only when used."""
    loaded = loaded_after("from statestore import StateStore")
    assert "sqlalchemy" in loaded
    assert not loaded & {"alembic", "rich", "statestore.demo"}


def test_the_cli_loads_no_store_until_a_command_runs() -> None:
    """What ``statestore --help`` imports: click and the models, not the store or rich."""
    assert loaded_after("import statestore.cli") == set()


def test_every_public_name_resolves_to_its_module_object() -> None:
    for name in statestore.__all__:
        value = getattr(statestore, name)
        if name != "__version__":
            module = sys.modules[value.__module__]
            assert getattr(module, name) is value, name
    assert set(statestore.__all__) <= set(dir(statestore))


def test_the_type_checking_imports_are_the_public_names() -> None:
    """Type checkers read the ``if TYPE_CHECKING`` imports, the runtime ``__all__``: the
    same names, so neither a checker nor a user sees a name the other does not."""
    tree = ast.parse(Path(statestore.__file__).read_text(encoding="utf-8"))
    guarded = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    )
    imported = {
        alias.name
        for node in guarded.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert imported == set(statestore.__all__) - {"__version__"}


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = statestore.Nope  # type: ignore[attr-defined]


def test_star_import_gives_every_public_name() -> None:
    namespace: dict[str, object] = {}
    exec("from statestore import *", namespace)
    assert set(statestore.__all__) <= set(namespace)
