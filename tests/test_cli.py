"""The installed ``statestore`` command, run in a subprocess against both databases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from statestore import StateStore, WorkItemStatus

STATESTORE = str(Path(sys.executable).with_name("statestore"))
HEAD = StateStore.head_revision()


def run(
    *args: str, url: str | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("STATESTORE_DATABASE_URL", None) if env is None else None
    argv = [STATESTORE, *args] if url is None else [STATESTORE, "--url", url, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=full_env)


def ok_json(*args: str, url: str) -> Any:
    result = run(*args, "--json", url=url)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr


def test_db_commands_on_a_fresh_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert_one_line_error(run("db", "current", url=url))  # read-only: creates nothing
    assert_one_line_error(run("db", "check", url=url))
    assert ok_json("db", "upgrade", url=url) == {"revision": HEAD}
    assert ok_json("db", "check", url=url) == {"revision": HEAD, "ok": True}
    assert ok_json("db", "downgrade", "base", url=url) == {"revision": None}
    assert ok_json("db", "current", url=url) == {"revision": None, "head": HEAD, "at_head": False}
    assert_one_line_error(run("tenants", "list", url=url))  # not at head: MigrationError
    # python -m statestore and $STATESTORE_DATABASE_URL work the same way
    result = subprocess.run(
        [sys.executable, "-m", "statestore", "db", "upgrade", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "STATESTORE_DATABASE_URL": url},
    )
    assert result.returncode == 0 and json.loads(result.stdout) == {"revision": HEAD}


def test_tenants_tokens_and_option_placement(database_url: str) -> None:
    created = ok_json("tenants", "create", "acme", "--name", "Acme Corp", url=database_url)
    assert created["id"] == "acme" and created["name"] == "Acme Corp"
    # --url and --json both before and after the subcommand
    before = run("--url", database_url, "--json", "tenants", "list")
    after = run("tenants", "list", "--url", database_url, "--json")
    assert before.returncode == after.returncode == 0
    assert json.loads(before.stdout) == json.loads(after.stdout)
    assert [t["id"] for t in json.loads(after.stdout)] == ["acme", "default"]
    human = run("tenants", "list", url=database_url)
    assert human.returncode == 0 and "acme" in human.stdout and "Acme Corp" in human.stdout

    issued = ok_json(
        "tokens",
        "create",
        "ci",
        "--role",
        "viewer",
        "--tenant",
        "acme",
        "--expires-in",
        "3600",
        url=database_url,
    )
    assert issued["token"].startswith("sst_") and issued["record"]["tenant_id"] == "acme"
    listed = ok_json("tokens", "list", "--tenant", "acme", url=database_url)
    assert [t["id"] for t in listed] == [issued["record"]["id"]]
    assert ok_json("tokens", "revoke", issued["record"]["id"], url=database_url)
    (revoked,) = ok_json("tokens", "list", url=database_url)
    assert revoked["revoked_at"] is not None

    suspended = ok_json("tenants", "suspend", "acme", url=database_url)
    assert suspended["status"] == "suspended"
    assert_one_line_error(
        run("tokens", "create", "x", "--role", "viewer", "--tenant", "acme", url=database_url)
    )


def test_errors_and_usage(database_url: str) -> None:
    reported = [
        ["executions", "show", str(uuid.uuid4())],
        ["executions", "show", "not-a-uuid"],
        ["dlq", "requeue", str(uuid.uuid4())],
        ["tokens", "revoke", str(uuid.uuid4())],
        ["--url", "mysql://nope/db", "tenants", "list"],
        ["--url", "postgresql://postgres@127.0.0.1:1/x", "tenants", "list"],
    ]
    usage = [
        ["tenants", "bogus"],
        ["tokens", "create", "x"],
        ["executions", "list", "--limit", "0"],
        ["tokens", "create", "x", "--role", "root"],
    ]
    # Independent invocations: run them side by side to keep the suite fast.
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda argv: run(*argv, url=database_url), reported + usage))
    for result in results[: len(reported)]:
        assert_one_line_error(result)
    for argv, result in zip(usage, results[len(reported) :], strict=True):
        assert result.returncode == 2, (argv, result.stderr)
        assert "Traceback" not in result.stderr


def test_demo_then_inspect_with_the_other_commands(database_url: str) -> None:
    summary = ok_json("demo", "--executions", "12", "--workers", "3", url=database_url)
    assert summary["executions_completed"] == 12
    assert summary["work_items_completed"] == 12 * 4
    assert summary["dead_letters"] == 1 and summary["killed_worker_items"] == 1
    assert summary["retries"] >= 1

    executions = ok_json(
        "executions",
        "list",
        "--tenant",
        summary["tenant"],
        "--status",
        "completed",
        "--limit",
        "1000",
        url=database_url,
    )
    assert len(executions) == 12
    shown = ok_json("executions", "show", executions[0]["execution_id"], url=database_url)
    assert {i["status"] for i in shown["work_items"]} == {"completed"}
    events = run("events", executions[0]["execution_id"], "--json", url=database_url)
    assert events.returncode == 0
    sequences = [json.loads(line)["sequence"] for line in events.stdout.splitlines()]
    assert sequences == list(range(1, shown["latest_sequence"] + 1))
    followed = run(
        "events", executions[0]["execution_id"], "--follow", url=database_url, timeout=30
    )
    assert followed.returncode == 0 and "workflow_completed" in followed.stdout

    stats = ok_json("queue", "stats", url=database_url)
    assert stats["demo"] == {
        "pending": 0,
        "claimed": 0,
        "completed": 48,
        "failed": 0,
        "dead_lettered": 1,
    }
    (letter,) = ok_json("dlq", "list", url=database_url)
    assert letter["item"]["node_id"] == "poison" and letter["last_error"] == "lease expired"
    reclaimed = ok_json("queue", "reclaim", url=database_url)
    assert reclaimed == {"retryable": [], "exhausted": []}

    # the summary agrees with the database
    async def check() -> None:
        store = await StateStore.connect(database_url)
        try:
            scoped = store.for_tenant(summary["tenant"])
            finished = await scoped.list_executions("completed", limit=1000)
            total_events = sum([await scoped.latest_sequence(e.execution_id) for e in finished])
            assert total_events == summary["events_written"]
            counts = (await scoped.queue_stats())["demo"]
            assert counts[WorkItemStatus.COMPLETED] == summary["work_items_completed"]
        finally:
            await store.close()

    import asyncio

    asyncio.run(check())

    requeued = run("dlq", "requeue", letter["item"]["id"], url=database_url)
    assert_one_line_error(requeued)  # its execution was failed after the demo: no new work


READ_ONLY_COMMANDS = [
    ["db", "current"],
    ["db", "check"],
    ["tenants", "list"],
    ["tokens", "list"],
    ["executions", "list"],
    ["executions", "show", str(uuid.uuid4())],
    ["events", str(uuid.uuid4())],
    ["queue", "stats"],
    ["dlq", "list"],
]


def test_read_only_commands_never_create_a_database(tmp_path: Path) -> None:
    missing_folder = tmp_path / "missing" / "dir" / "x.db"
    missing_file = tmp_path / "x.db"
    # Each command once, alternating a missing folder and a missing file in an existing one.
    calls = [
        (argv, (missing_folder, missing_file)[i % 2]) for i, argv in enumerate(READ_ONLY_COMMANDS)
    ]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda c: run(*c[0], url=f"sqlite:///{c[1]}"), calls))
    for (argv, path), result in zip(calls, results, strict=True):
        assert_one_line_error(result)
        assert str(path) in result.stderr, (argv, result.stderr)
    # The default URL from the environment is treated the same way.
    from_env = run("tenants", "list", env={"STATESTORE_DATABASE_URL": f"sqlite:///{missing_file}"})
    assert_one_line_error(from_env)
    assert str(missing_file) in from_env.stderr
    assert list(tmp_path.iterdir()) == []  # no folder, no file
    # Commands that write still create it.
    assert ok_json("db", "upgrade", url=f"sqlite:///{missing_folder}") == {"revision": HEAD}
    assert [t["id"] for t in ok_json("tenants", "list", url=f"sqlite:///{missing_folder}")] == [
        "default"
    ]


SECRET = "SeCrEt"
LEAKY_URLS = [
    f"postgresql://user:{SECRET}@127.0.0.1:abc/db",
    f"postgresql://user:{SECRET}@127.0.0.1:99999/db",
    f"postgresql://user:{SECRET}a@{SECRET}b@127.0.0.1:1/db",
    f"postgr esql://user:{SECRET}@h/db",
    f"{SECRET}-only",
    f"postgresql://user@127.0.0.1:1/db?password={SECRET}",
    f"postgresql://user@127.0.0.1:1/db?sslmode=require&api_key={SECRET}",
    f"postgresql://user:{SECRET}@127.0.0.1:1/db?sslmode=require",
    f"sqlite://user:{SECRET}@host/x.db",
]


def test_the_database_password_is_never_printed() -> None:
    calls = [("--url", url) for url in LEAKY_URLS]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda c: run(*c, "tenants", "list"), calls))
        results += list(
            pool.map(
                lambda url: run("queue", "stats", env={"STATESTORE_DATABASE_URL": url}),
                LEAKY_URLS[:3],
            )
        )
    for result in results:
        assert_one_line_error(result)
        assert SECRET not in result.stdout + result.stderr, result.stderr
        assert "unexpected" not in result.stderr


def test_the_demo_summary_hides_a_query_password(pg_database: str) -> None:
    summary = ok_json(
        "demo", "--executions", "1", "--workers", "1", url=f"{pg_database}?password={SECRET}"
    )
    assert summary["executions_completed"] == 1
    assert SECRET not in summary["store"] and "***" in summary["store"]


@pytest.mark.parametrize("argv", [["--help"], ["db", "--help"], ["demo", "--help"]])
def test_help(argv: list[str]) -> None:
    result = run(*argv)
    assert result.returncode == 0 and "Usage" in result.stdout


async def test_events_without_an_execution_follows_the_feed(database_url: str) -> None:
    from statestore import Tenant, WorkflowExecution

    store = await StateStore.connect(database_url)
    try:
        await store.create_tenant(Tenant(id="acme", name="Acme"))
        runs = []
        for tenant in ("default", "acme"):
            run_ = WorkflowExecution(workflow_id="wf", workflow_version="1", tenant_id=tenant)
            await store.create_execution(run_)
            await store.append_events(run_.execution_id, [{"type": f"{tenant}-1"}, {"type": "x"}])
            runs.append(run_)
    finally:
        await store.close()
    everything = run("events", "--json", url=database_url)
    assert everything.returncode == 0, everything.stderr
    lines = [json.loads(line) for line in everything.stdout.splitlines()]
    assert len(lines) == 4 and len({line["position"] for line in lines}) == 4
    assert [line["position"] for line in lines] == sorted(line["position"] for line in lines)
    acme = run("events", "--json", "--tenant", "acme", url=database_url)
    kinds = [json.loads(line)["kind"]["type"] for line in acme.stdout.splitlines()]
    assert kinds == ["acme-1", "x"]
    later = run("events", "--json", "--after", str(lines[1]["position"]), url=database_url)
    assert [json.loads(line)["position"] for line in later.stdout.splitlines()] == [
        line["position"] for line in lines[2:]
    ]


def test_the_direct_url_password_is_never_printed(pg_database: str) -> None:
    """``--direct-url`` and ``$STATESTORE_DIRECT_URL`` holding a password, malformed or
    leading nowhere, beside a PostgreSQL URL: one line of error, no password."""
    url = make_url(pg_database).set(query={"pgbouncer": "true"}).render_as_string(False)
    calls = [("--url", url, "--direct-url", direct) for direct in LEAKY_URLS]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda c: run(*c, "queue", "stats"), calls))
        results += list(
            pool.map(
                lambda direct: run(
                    "--url", url, "queue", "stats", env={"STATESTORE_DIRECT_URL": direct}
                ),
                LEAKY_URLS[:3],
            )
        )
    for result in results:
        assert SECRET not in result.stdout + result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_an_sqlite_url_ignores_the_environment_s_direct_url(tmp_path: Path) -> None:
    """``$STATESTORE_DIRECT_URL`` is a default for PostgreSQL stores behind PgBouncer: it
    does not make every command on an SQLite file fail; ``--direct-url`` given with one
    is still refused."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {"STATESTORE_DIRECT_URL": f"postgresql://app:{SECRET}@127.0.0.1:1/app"}
    result = run("db", "upgrade", "--json", url=url, env=env)
    assert result.returncode == 0, result.stderr
    assert_one_line_error(run("--direct-url", env["STATESTORE_DIRECT_URL"], "db", "check", url=url))
