"""The benchmark harness runs end to end and prints its table (no timing thresholds), and the
raw contenders run the store's own SQL."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy
from conftest import run_bench
from sqlalchemy import event

from statestore import Event, NodeCompleted, StateStore, WorkflowExecution, WorkItem

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


def test_quick_sqlite_run_prints_the_table(tmp_path: Path) -> None:
    """bench/run.py --quick on SQLite: every row with figures and its target, the figures
    saved as JSON, and only the marked blocks of an existing document rewritten."""
    written = tmp_path / "benchmarks.md"
    hand = "# Benchmarks\n\nprose by hand\n\n<!-- results -->\nold\n<!-- /results -->\n\nafter\n"
    other = "<!-- turns -->\n## Atomic turns\n<!-- /turns -->\n\n## The feed\n\nkept\n"
    written.write_text(hand + "\n" + other, encoding="utf-8")
    results = tmp_path / "run.json"
    args = ("--quick", "--only", "sqlite", "--json", str(results), "--write", str(written))
    stdout = run_bench("run.py", *args)

    header = next(line for line in stdout.splitlines() if line.startswith("| backend"))
    columns = [cell.strip() for cell in header.strip().strip("|").split("|")]
    assert columns == list(load_bench_module("render").HEADER)

    rows = [row for row in table_rows(stdout) if len(row) == len(columns)]  # not OTel's
    assert {row[0] for row in rows} == {"sqlite"}
    found = [(row[1], int(row[2])) for row in rows]
    assert sorted(found) == sorted(SQLITE_ROWS)
    for row in rows:
        values = dict(zip(columns, row, strict=True))
        assert number(values["ratio"]) > 0, row
        for column in NUMBER_COLUMNS:
            assert number(values[column]) > 0, row
        # The acceptance ratio, and whether this run met it.
        assert re.fullmatch(r"0\.\d+ (raw|gc): (met|missed by \d+%)", values["target"]), row
        if values["callers"] == "1":
            # One caller: the synchronous sqlite3 reference, no group-commit layer.
            assert number(values["sync sqlite3 ops/s"]) > 0, row
            assert values["gc ops/s"] == values["gc ratio"] == "-", row
        else:
            # Concurrent callers: raw group commit beside one transaction per call.
            assert number(values["gc ops/s"]) > 0 and number(values["gc ratio"]) > 0, row
            assert values["sync sqlite3 ops/s"] == "-", row

    data = json.loads(results.read_text(encoding="utf-8"))
    judged = [cell for cell in data["cells"] if cell["target"] is not None]
    assert len(judged) == len(SQLITE_ROWS)
    for cell in judged:
        assert set(cell["contenders"]) >= {"store", "raw"} and cell["problem"] is None, cell
        assert cell["contenders"]["store"]["ops_s"] > 0 and cell["target"][1] in ("raw", "gc")
    # The cost of tracing: the same append with the OpenTelemetry SDK configured.
    traced = [cell for cell in data["cells"] if "otel" in cell["contenders"]]
    if importlib.util.find_spec("opentelemetry.sdk") is not None:
        assert [cell["operation"] for cell in traced] == ["append_event (OTel SDK)"]
        assert traced[0]["contenders"]["otel"]["ops_s"] > 0

    document = written.read_text(encoding="utf-8")
    assert document.startswith("# Benchmarks\n\nprose by hand\n\n<!-- results -->\n| backend")
    assert "old" not in document and "--quick --only sqlite" in document
    assert document.count("<!-- results -->") == document.count("<!-- /results -->") == 1
    assert "\n\nafter\n" in document and document.count(other) == 1
    for operation, _callers in SQLITE_ROWS:
        assert f"| {operation} " in document, operation
    assert document.count("<!-- standing -->\nTargets met: ") == 1

    # The document re-rendered from the JSON alone is the same.
    again = tmp_path / "again.md"
    again.write_text(hand + "\n" + other, encoding="utf-8")
    run_bench("render.py", str(results), "--write", str(again))
    assert again.read_text(encoding="utf-8") == document


def load_bench_module(name: str) -> Any:
    """``bench/<name>.py`` as a module (the bench scripts import each other from their own
    folder, which is put on the path for them)."""
    folder = str(REPO / "bench")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


async def test_raw_sql_is_the_stores_compiled_sql(store: StateStore) -> None:
    """Every statement a raw contender runs (bench/statements.py) is one the store sends for
    the same operation: the bench's raw SQL cannot drift from the store's."""
    statements = load_bench_module("statements")
    raw = statements.compiled(store.engine.dialect)
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    execution = WorkflowExecution(workflow_id="w", workflow_version="1", initial_input={})
    await store.create_execution(execution)
    for _ in range(statements.CLAIM_BATCH + 2):  # the claim, complete_one, complete_many
        await store.enqueue_work_item(
            WorkItem(execution_id=execution.execution_id, node_id="n", queue_type="q")
        )
    token, _record = await store.create_token("bench", "viewer")
    kind = NodeCompleted(node_id="n", output={"k": 1}, state_patch={}, duration_ms=1)

    async def complete_one() -> None:
        item = await store.claim_work_item("w-0", ["q"])
        assert item is not None
        sent.clear()  # only the completion
        await store.complete_work_item(item.id, worker_id="w-0", lease_fence=item.lease_fence)

    async def complete_many() -> None:
        items = await store.claim_work_items("w-0", ["q"], statements.CLAIM_BATCH)
        assert len(items) == statements.CLAIM_BATCH
        sent.clear()
        assert all(await store.complete_work_items(items))

    append = ["reserve", "insert_event"] if store.dialect == "sqlite" else ["append_one"]
    operations: list[tuple[list[str], Callable[[], Awaitable[object]]]] = [
        (append, lambda: store.append_event(Event(execution_id=execution.execution_id, kind=kind))),
        (["events"], lambda: store.get_events(execution.execution_id)),
        (
            ["tenant", "insert_execution"],
            lambda: store.create_execution(
                WorkflowExecution(workflow_id="w", workflow_version="1", initial_input={})
            ),
        ),
        (["execution"], lambda: store.get_execution(execution.execution_id)),
        (["claim"], lambda: store.claim_work_item("w-1", ["q"])),
        (["complete"], complete_one),
        (["complete_many"], complete_many),
        (["token"], lambda: store.validate_token(token)),
    ]
    untimed = {"insert_item", "queue_counts"}  # the queue's top-up and count, not the store's
    checked = {name for names, _op in operations for name in names}
    assert checked | untimed == set(raw), "a raw statement the test does not check"
    event.listen(sqlalchemy.Engine, "before_cursor_execute", record)
    try:
        for names, operation in operations:
            sent.clear()
            await operation()
            for name in names:
                assert raw[name].sql in sent, (name, raw[name].sql, sent)
    finally:
        event.remove(sqlalchemy.Engine, "before_cursor_execute", record)


async def test_raw_turn_sql_is_the_stores_commit_turn(store: StateStore) -> None:
    """The raw turn of bench/turns.py (bench/statements.py ``compiled_turn``) is, statement
    for statement and in order, what the store sends for the same ``commit_turn``: a
    claimed item settled, one event, a state patch and one successor."""
    statements = load_bench_module("statements")
    raw = statements.compiled_turn(store.engine.dialect)
    execution = WorkflowExecution(workflow_id="w", workflow_version="1", status="running")
    await store.create_execution(execution)
    await store.enqueue_work_item(
        WorkItem(execution_id=execution.execution_id, node_id="n", queue_type="q")
    )
    item = await store.claim_work_item("w-0", ["q"])
    assert item is not None
    kind = NodeCompleted(node_id="n", output={"k": 1}, state_patch={}, duration_ms=1)
    successor = WorkItem(execution_id=execution.execution_id, node_id="next", queue_type="q2")
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    event.listen(sqlalchemy.Engine, "before_cursor_execute", record)
    try:
        result = await store.commit_turn(
            item.id,
            worker_id="w-0",
            lease_fence=item.lease_fence,
            events=[kind],
            state_patch={"n": {"done": True}},
            enqueue=[successor],
        )
    finally:
        event.remove(sqlalchemy.Engine, "before_cursor_execute", record)
    assert len(result.sequences) == 1 and len(result.enqueued) == 1
    assert [statement.sql for statement in raw.values()] == sent, (list(raw), sent)
    assert list(raw) == list(statements.turn_catalogue())


async def test_raw_turn_writes_what_the_store_reads(store: StateStore, database_url: str) -> None:
    """The raw turn binds each value where the store would: run on the bare driver, the
    store reads back its event, its state, the item completed and the successor."""
    cells = load_bench_module("turns_cells")
    execution = WorkflowExecution(workflow_id="w", workflow_version="1", status="running")
    await store.create_execution(execution)
    await store.enqueue_work_item(
        WorkItem(execution_id=execution.execution_id, node_id="n", queue_type="q")
    )
    item = await store.claim_work_item("raw-0", ["q"])
    assert item is not None
    patch = {"n": {"done": True}}
    raw = load_bench_module("statements").compiled_turn(store.engine.dialect)
    if store.dialect == "sqlite":
        sqlite_raw = load_bench_module("sqlite_raw")
        turn = cells.RawTurn(raw, lambda value: value.hex, sqlite_raw.sqlite_now)
        conn = sqlite_raw.sqlite_connect(Path(database_url.removeprefix("sqlite:///")))
        try:
            steps = turn.steps(item.id, "raw-0", patch, item.lease_fence)
            sequence = sqlite_raw.in_transaction(conn, lambda: cells.sqlite_run(conn, steps))
        finally:
            conn.close()
    else:
        conn = await asyncpg.connect(database_url)
        try:
            turn = cells.pg_raw_turn(store)
            sequence = await cells.pg_run(
                conn, turn.steps(item.id, "raw-0", patch, item.lease_fence)
            )
        finally:
            await conn.close()

    assert sequence == 1
    (written,) = await store.get_events(execution.execution_id)
    assert (written.sequence, written.kind) == (1, cells.KIND)
    after = await store.get_execution(execution.execution_id)
    assert after is not None and after.current_state == patch
    assert await store.latest_sequence(execution.execution_id) == 1
    settled = await store.get_work_item(item.id)
    assert settled is not None and settled.status == "completed"
    successor = await store.claim_work_item("w-1", [cells.NEXT_QUEUE])
    assert successor is not None and successor.execution_id == execution.execution_id
    assert (successor.node_id, successor.payload) == ("next", cells.WORK_PAYLOAD)


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
    assert "<!-- peers -->\n| backend" in document and "| eventsourcing recorder " in document


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
    assert "the raw transaction runs the same 5." in stdout  # the store's statements

    document = written.read_text(encoding="utf-8")
    assert document.startswith("# Benchmarks\n\nkept\n")
    assert document.count("<!-- turns -->") == document.count("<!-- /turns -->") == 1
    assert "## Atomic turns" in document and "--quick --only sqlite" in document
    assert document.count(scale) == 1
    common: Any = load_bench_common()
    common.write_document(written, "# Benchmarks\n\nrewritten\n")  # as bench/scale.py does
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


def test_profile_runs_its_cells_and_peels_the_layers() -> None:
    """bench/profile.py at a tiny size: every hot path on SQLite with its layers, and the
    PostgreSQL layer-by-layer run (it calls the runner's internals, which change)."""
    stdout = run_bench("profile.py", "--only", "sqlite", "--calls", "20", "--rounds", "1")
    rows = {row[1]: row for row in table_rows(stdout) if row[0] == "sqlite"}
    assert set(rows) == {
        "append_event",
        "get_execution",
        "get_events",
        "validate_token",
        "claim_complete",
    }
    for row in rows.values():
        assert number(row[2]) > 0 and number(row[3]) > 0, row
    layers = [
        row
        for row in table_rows(run_bench("profile.py", "--layers", "--calls", "20", "--rounds", "1"))
        if row[0] != "path"
    ]
    paths = [row[0] for row in layers]
    assert paths[0] == "asyncpg fetchrow (raw)" and paths[-1] == "+ facade (backend, telemetry)"
    assert len(paths) == 9 and all(number(row[1]) > 0 for row in layers), layers
