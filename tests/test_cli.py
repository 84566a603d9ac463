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

from statestore import StateStore, WorkItemStatus

STATESTORE = str(Path(sys.executable).with_name("statestore"))


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
    assert ok_json("db", "current", url=url) == {"revision": None, "head": "0001", "at_head": False}
    assert_one_line_error(run("db", "check", url=url))
    assert ok_json("db", "upgrade", url=url) == {"revision": "0001"}
    assert ok_json("db", "check", url=url) == {"revision": "0001", "ok": True}
    assert ok_json("db", "downgrade", "base", url=url) == {"revision": None}
    assert_one_line_error(run("tenants", "list", url=url))  # not at head: MigrationError
    # python -m statestore and $STATESTORE_DATABASE_URL work the same way
    result = subprocess.run(
        [sys.executable, "-m", "statestore", "db", "upgrade", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "STATESTORE_DATABASE_URL": url},
    )
    assert result.returncode == 0 and json.loads(result.stdout) == {"revision": "0001"}


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


@pytest.mark.parametrize("argv", [["--help"], ["db", "--help"], ["demo", "--help"]])
def test_help(argv: list[str]) -> None:
    result = run(*argv)
    assert result.returncode == 0 and "Usage" in result.stdout
