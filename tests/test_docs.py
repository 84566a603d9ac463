"""Every Python example in docs/ runs: each page's examples, in order, in a temporary folder
(see doc_runner.py for how complete programs and fragments are told apart)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
RUNNER = Path(__file__).with_name("doc_runner.py")
PAGES = sorted(page for page in DOCS.glob("*.md") if "```python" in page.read_text())


def test_docs_have_examples() -> None:
    assert {p.name for p in PAGES} >= {"index.md", "api.md"}


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_doc_examples_run(page: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(RUNNER), str(page)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{page.name} failed:\n{result.stderr[-4000:]}"
