"""The benchmark harness runs end to end and prints its table (no timing thresholds)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
# (operation, callers) of every SQLite row.
SQLITE_ROWS = {
    ("append_event", 1),
    ("append_event", 16),
    ("append_event (FULL)", 16),
    ("get_events", 1),
    ("create_execution", 1),
    ("get_execution", 1),
    ("claim+complete", 1),
    ("claim+complete", 16),
    ("claim+complete x100", 1),
    ("validate_token", 1),
}
NUMBER_COLUMNS = ("store ops/s", "store p99 µs", "raw ops/s", "raw p99 µs")


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


def number(text: str) -> float:
    return float(text.replace(",", ""))


def run_bench(script: str, *args: str) -> str:
    """Run ``bench/<script>`` with ``args``; its standard output (it must succeed)."""
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_quick_sqlite_run_prints_the_table(tmp_path: Path) -> None:
    written = tmp_path / "benchmarks.md"
    stdout = run_bench("run.py", "--quick", "--only", "sqlite", "--write", str(written))

    header = next(line for line in stdout.splitlines() if line.startswith("| backend"))
    columns = [cell.strip() for cell in header.strip().strip("|").split("|")]
    assert columns == [
        "backend",
        "operation",
        "callers",
        "store ops/s",
        "store p50 µs",
        "store p99 µs",
        "raw ops/s",
        "raw p50 µs",
        "raw p99 µs",
        "ratio",
        "gc ops/s",
        "gc ratio",
        "sync sqlite3 ops/s",
        "target",
    ]

    rows = table_rows(stdout)
    assert {row[0] for row in rows} == {"sqlite"}
    found = [(row[1], int(row[2])) for row in rows]
    assert sorted(found) == sorted(SQLITE_ROWS)
    for row in rows:
        values = dict(zip(columns, row, strict=True))
        assert number(values["ratio"]) > 0, row
        for column in NUMBER_COLUMNS:
            assert number(values[column]) > 0, row
        # The acceptance ratio, and whether this run met it.
        assert re.fullmatch(r"0\.\d (raw|gc): (met|missed by \d+%)", values["target"]), row
        if values["callers"] == "1":
            # One caller: the synchronous sqlite3 reference, no group-commit layer.
            assert number(values["sync sqlite3 ops/s"]) > 0, row
            assert values["gc ops/s"] == values["gc ratio"] == "-", row
        else:
            # Concurrent callers: raw group commit beside one transaction per call.
            assert number(values["gc ops/s"]) > 0 and number(values["gc ratio"]) > 0, row
            assert values["sync sqlite3 ops/s"] == "-", row

    document = written.read_text(encoding="utf-8")
    assert "--quick --only sqlite" in document
    assert "| backend" in document and "## Where we stand" in document
    for operation, _callers in SQLITE_ROWS:
        assert f"| {operation} " in document, operation
    for cell in ("**claim+complete**", "**claim+complete x100**", "**validate_token**"):
        assert cell in document, cell


# The SQLite peers of `bench/run.py --peers` (the bench extra), as (operation, peer) rows.
SQLITE_PEER_ROWS = {
    ("append_event", "eventsourcing recorder"),
    ("get_events", "eventsourcing recorder"),
    ("enqueue", "persist-queue SQLiteAckQueue"),
    ("claim+complete", "persist-queue SQLiteAckQueue"),
}
PEER_NUMBER_COLUMNS = ("peer ops/s", "peer p50 µs", "peer p99 µs", "store ops/s", "ratio")


def test_quick_sqlite_run_with_peers_prints_the_peers_table(tmp_path: Path) -> None:
    missing = [m for m in ("eventsourcing", "persistqueue") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: pip install -e '.[bench]'")
    written = tmp_path / "benchmarks.md"
    stdout = run_bench("run.py", "--quick", "--only", "sqlite", "--peers", "--write", str(written))

    lines = stdout.splitlines()
    start = next(
        i for i, line in enumerate(lines) if line.startswith("| backend") and "peer ops/s" in line
    )
    columns = [cell.strip() for cell in lines[start].strip().strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        rows.append(dict(zip(columns, cells, strict=True)))
    assert {(row["operation"], row["peer"]) for row in rows} == SQLITE_PEER_ROWS
    for row in rows:
        assert row["backend"] == "sqlite", row
        for column in PEER_NUMBER_COLUMNS:
            assert number(row[column]) > 0, (column, row)
    # The legend says what each peer does and at which durability both sides ran.
    assert "synchronous" in stdout and "persist-queue" in stdout
    document = written.read_text(encoding="utf-8")
    assert "## Peers" in document and "| eventsourcing recorder " in document


def test_scale_run_measures_both_sizes_and_memory(tmp_path: Path) -> None:
    """bench/scale.py at a small size: both table sizes, the claim plan, RSS samples, and
    its section written between the markers of an existing document (the rest kept)."""
    written = tmp_path / "benchmarks.md"
    written.write_text("# Benchmarks\n\nkept\n", encoding="utf-8")
    args = ("--rows", "3000", "--small", "300", "--only", "sqlite", "--write", str(written))
    stdout = run_bench("scale.py", *args)
    latency = {
        (row[0], row[1])
        for row in table_rows(stdout)
        if row[1] in ("claim_work_item", "append_event")
    }
    assert latency == {("sqlite", "claim_work_item"), ("sqlite", "append_event")}
    assert "ix_work_items_claim" in stdout
    memory = [row for row in table_rows(stdout) if row[1] in ("append_events", "iter_events")]
    assert [row[2] for row in memory] == ["3,000", "3,000"]
    document = written.read_text(encoding="utf-8")
    assert document.startswith("# Benchmarks\n\nkept\n")
    assert document.count("<!-- scale -->") == 1 and "## Scale" in document
    run_bench("scale.py", *args)  # a second run replaces the section
    assert written.read_text(encoding="utf-8").count("## Scale") == 1


def load_bench_common() -> object:
    """bench/common.py as a module (the bench scripts import it from their own folder)."""
    spec = importlib.util.spec_from_file_location("bench_common", REPO / "bench" / "common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_turns_quick_run_writes_its_section(tmp_path: Path) -> None:
    """bench/turns.py --quick on SQLite: the commit_turn rows against raw, the engine rows
    (turns, separate calls, DBOS or why not), the statements of a turn; its section written
    between its markers with the rest of the document (the scale section too) kept, and
    kept again when bench/run.py rewrites the document."""
    written = tmp_path / "benchmarks.md"
    scale = "<!-- scale -->\n## Scale\n\nmeasured\n<!-- /scale -->\n"
    written.write_text(f"# Benchmarks\n\nkept\n\n{scale}", encoding="utf-8")
    stdout = run_bench("turns.py", "--quick", "--only", "sqlite", "--write", str(written))

    rows = table_rows(stdout)
    turns = {int(row[1]): row for row in rows if row[1].isdigit()}
    assert sorted(turns) == [1, 16]
    for row in turns.values():
        assert row[0] == "sqlite"
        assert number(row[2]) > 0 and number(row[5]) > 0 and number(row[8]) > 0, row
        assert re.fullmatch(r"0\.6x: (met|missed by \d+%)", row[9]), row
    engines = {row[1].split(" (")[0]: row for row in rows if not row[1].isdigit()}
    assert set(engines) == {"turns", "separate calls", "DBOS"}
    for name in ("turns", "separate calls"):
        assert number(engines[name][5]) > 0 and number(engines[name][6]) > 0, engines[name]
    assert re.fullmatch(r"3x: (met|missed by \d+%)", engines["separate calls"][8])
    if importlib.util.find_spec("dbos") is not None:
        assert number(engines["DBOS"][5]) > 0, engines["DBOS"]
        assert re.fullmatch(r"10x: (met|missed by \d+%)", engines["DBOS"][8])
    else:
        assert engines["DBOS"][5] == "not run"
    assert "statements in the writer's transaction, SELECT work_items" in stdout

    document = written.read_text(encoding="utf-8")
    assert document.startswith("# Benchmarks\n\nkept\n")
    assert document.count("<!-- turns -->") == document.count("<!-- /turns -->") == 1
    assert "## Atomic turns" in document and "--quick --only sqlite" in document
    assert document.count(scale) == 1
    common: Any = load_bench_common()
    common.write_document(written, "# Benchmarks\n\nrewritten\n")  # as bench/run.py does
    rewritten = written.read_text(encoding="utf-8")
    assert rewritten.startswith("# Benchmarks\n\nrewritten\n") and "kept" not in rewritten
    assert rewritten.count("## Atomic turns") == 1 and rewritten.count(scale) == 1


def test_wakeup_run_measures_the_store_and_its_peers(tmp_path: Path) -> None:
    """bench/wakeup.py at a small size: the store on SQLite (in-process and cross-process)
    and on PostgreSQL beside pgqueuer and procrastinate (those installed), and its section
    replaced in an existing document with the sections around it kept."""
    from conftest import PG_ADMIN_URL

    written = tmp_path / "benchmarks.md"
    written.write_text(
        "# Benchmarks\n\nkept\n\n## Waking waiting workers\n\nold\n\n## The feed\n\nkept too\n",
        encoding="utf-8",
    )
    args = ("--rounds", "5", "--idle-seconds", "0", "--pg-url", PG_ADMIN_URL)
    stdout = run_bench("wakeup.py", *args, "--write", str(written))

    rows = {(row[0], row[1].split(" ")[0]): row for row in table_rows(stdout)}
    peers = [name for name in ("pgqueuer", "procrastinate") if importlib.util.find_spec(name)]
    expected = {("SQLite file", "store"), ("PostgreSQL", "store")}
    assert set(rows) == expected | {("PostgreSQL", name) for name in peers}
    latency = r"\d+\.\d / \d+\.\d ms"
    for (database, contender), row in rows.items():
        assert re.fullmatch(latency, row[2]), row
        if contender == "store":  # the store alone is also measured across processes
            assert re.fullmatch(latency, row[3]), row
        else:
            assert row[3] == "-", row
        idle = "not measured" if database == "PostgreSQL" else "no transactions"  # --idle 0
        assert row[4].startswith(idle), row
    assert re.search(r"PostgreSQL p50 ≤ 5 ms: (met|missed)", stdout)
    assert re.search(r"SQLite in-process p50 ≤ 2 ms: (met|missed)", stdout)
    document = written.read_text(encoding="utf-8")
    assert document.startswith("# Benchmarks\n\nkept\n\n## Waking waiting workers\n")
    assert document.endswith("## The feed\n\nkept too\n") and "old" not in document
    assert document.count("## Waking waiting workers") == 1 and "--rounds 5" in document
