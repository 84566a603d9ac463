"""Run the Python examples of one docs page, in order, in one namespace.

    python doc_runner.py PAGE.md

A block that calls ``asyncio.run(`` is a complete program and runs as one. Other blocks are
fragments: they share a namespace and may use top-level ``await`` (like ``python -m asyncio``),
so a page can build on its earlier examples.
"""

from __future__ import annotations

import ast
import asyncio
import re
import sys
import types
from pathlib import Path
from typing import Any

BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text())


async def run_fragments(fragments: list[tuple[int, str]], page: str) -> None:
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    for number, code in fragments:
        compiled = compile(code, f"{page}#{number}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        result = eval(compiled, namespace)
        if isinstance(result, types.CoroutineType):
            await result


def main() -> None:
    page = Path(sys.argv[1])
    programs, fragments = [], []
    for number, code in enumerate(blocks(page)):
        (programs if "asyncio.run(" in code else fragments).append((number, code))
    for number, code in programs:
        exec(compile(code, f"{page.name}#{number}", "exec"), {"__name__": "__main__"})
    if fragments:
        asyncio.run(run_fragments(fragments, page.name))


if __name__ == "__main__":
    main()
