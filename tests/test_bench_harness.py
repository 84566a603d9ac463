"""The benchmark harness runs end to end and prints its table (no timing thresholds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OPERATIONS = {"append_event", "get_events", "create_execution", "get_execution"}


def table_rows(output: str) -> list[list[str]]:
    """The cells of every Markdown table row, header and separator excluded."""
    rows = []
    for line in output.splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] != "backend":
            rows.append(cells)
    return rows


def test_quick_sqlite_run_prints_the_table(tmp_path: Path) -> None:
    written = tmp_path / "benchmarks.md"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "run.py"),
            "--quick",
            "--only",
            "sqlite",
            "--write",
            str(written),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    header = next(line for line in result.stdout.splitlines() if line.startswith("| backend"))
    columns = [cell.strip() for cell in header.strip().strip("|").split("|")]
    assert columns[:8] == [
        "backend",
        "operation",
        "store ops/s",
        "store p50 µs",
        "store p99 µs",
        "raw ops/s",
        "raw p50 µs",
        "ratio",
    ]

    rows = table_rows(result.stdout)
    assert {row[0] for row in rows} == {"sqlite"}
    assert sorted(row[1] for row in rows) == sorted(OPERATIONS)
    for row in rows:
        ratio = float(row[columns.index("ratio")])
        assert ratio > 0, row
        for column in ("store ops/s", "raw ops/s", "sync sqlite3 ops/s"):
            assert float(row[columns.index(column)].replace(",", "")) > 0, row

    document = written.read_text(encoding="utf-8")
    assert "--quick --only sqlite" in document
    assert "| backend" in document and "## Where we stand" in document
