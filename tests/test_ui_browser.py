"""The inspector in a real headless browser: Debian's ``chromium`` driven by Playwright
(``executable_path``; nothing is downloaded), against ``statestore ui`` in a subprocess on
both databases. A person opens the overview, clicks through to an execution and reads its
timeline and state; screenshots of each page land in the test's temporary folder (and in
``$STATESTORE_UI_SCREENSHOTS`` when set: ``docs/images`` holds the ones made so).

Chromium comes from ``make install`` / ``.ci/run`` (``apt-get install chromium``). Without
it these tests skip, except under ``CI=true``, where they fail."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import IN_CI
from playwright.async_api import Browser, Page, async_playwright, expect
from ui_server import Server, start_ui, stop

from statestore import (
    Snapshot,
    StateStore,
    Tenant,
    TokenRole,
    WorkflowExecution,
    WorkflowStatus,
    WorkItem,
)
from statestore.event_kinds import (
    CustomEvent,
    NodeCompleted,
    NodeScheduled,
    NodeStarted,
    WorkflowCompleted,
    WorkflowStarted,
)

CHROMIUM = os.environ.get("STATESTORE_CHROMIUM") or shutil.which("chromium")
SCRIPT = "<script>window.owned = true; alert('owned')</script>"
TIMELINE = [
    "workflow_started",
    "node_scheduled",
    "node_started",
    "node_completed",
    "user_note",
    "workflow_completed",
]

if CHROMIUM is None:
    if IN_CI:
        raise RuntimeError("CI=true but chromium is missing: .ci/run installs it")
    pytest.skip("no chromium (make install installs it)", allow_module_level=True)
if not IN_CI:
    pytest.importorskip("playwright.async_api")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


async def new_page(browser: Browser) -> tuple[Page, list[str]]:
    """A page that records every dialog (an alert would mean a script of the data ran)."""
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    dialogs: list[str] = []

    async def dismiss(dialog: Any) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", dismiss)
    return page, dialogs


async def screenshot(page: Page, folder: Path, name: str) -> None:
    path = folder / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    publish(path)


def publish(path: Path) -> None:
    """Check a screenshot shows a rendered page, and copy it to $STATESTORE_UI_SCREENSHOTS."""
    assert path.stat().st_size > 10_000  # not a blank page
    folder = os.environ.get("STATESTORE_UI_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(folder) / path.name)


async def populate(store: StateStore) -> WorkflowExecution:
    """A completed execution with a timeline, a snapshot and a retried work item; another
    tenant with a running one; a dead letter."""
    await store.create_tenant(Tenant(id="acme", name="Acme Corp"))
    done = WorkflowExecution(
        workflow_id="ingest-document",
        workflow_version="3",
        initial_input={"document": "report.pdf"},
    )
    await store.create_execution(done)
    eid = done.execution_id
    await store.append_events(
        eid,
        [
            WorkflowStarted(
                workflow_id="ingest-document",
                workflow_version="3",
                initial_input={"document": "report.pdf"},
            ),
            NodeScheduled(node_id="summarise", queue_type="llm"),
            NodeStarted(node_id="summarise", worker_id="worker-7", attempt=2),
            NodeCompleted(
                node_id="summarise",
                output={"summary": "Quarterly numbers are up"},
                state_patch={"summary": "Quarterly numbers are up"},
                duration_ms=812,
            ),
            CustomEvent(type="user_note", text=SCRIPT),
            WorkflowCompleted(final_state={"summary": "Quarterly numbers are up"}),
        ],
    )
    await store.update_execution_current_state(
        eid, {"summary": "Quarterly numbers are up", "pages": 12}
    )
    await store.write_snapshot(
        Snapshot(execution_id=eid, at_sequence=4, state={"summary": "Quarterly numbers are up"})
    )
    item = await store.enqueue_work_item(
        WorkItem(execution_id=eid, node_id="summarise", queue_type="llm")
    )
    claimed = await store.claim_work_item("worker-7", ["llm"])
    assert claimed is not None and claimed.id == item
    await store.fail_work_item(
        item, "model timed out", worker_id="worker-7", lease_fence=claimed.lease_fence
    )
    await store.update_execution_status(eid, WorkflowStatus.COMPLETED)

    acme = store.for_tenant("acme")
    running = WorkflowExecution(
        workflow_id="triage", workflow_version="1", status=WorkflowStatus.RUNNING, tenant_id="acme"
    )
    await acme.create_execution(running)
    poison = await acme.enqueue_work_item(
        WorkItem(execution_id=running.execution_id, node_id="parse", queue_type="parse")
    )
    await acme.move_to_dead_letter(poison, "unparseable input after 3 attempts")
    return done


@pytest.fixture
async def server(database_url: str, store: StateStore) -> AsyncIterator[Server]:
    running = start_ui(database_url)
    try:
        yield running
    finally:
        stop(running)


async def test_a_person_clicks_from_the_overview_to_an_execution(
    store: StateStore, server: Server, browser: Browser, tmp_path: Path
) -> None:
    done = await populate(store)
    page, dialogs = await new_page(browser)

    await page.goto(server.url + "/")
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    tenants = page.locator("#tenants tbody tr")
    await expect(tenants).to_have_count(2)
    await expect(tenants.nth(0)).to_contain_text("Acme Corp")
    await expect(page.locator("#queues")).to_contain_text("llm")
    await screenshot(page, tmp_path, "overview")

    await page.get_by_role("link", name="Executions").click()
    await expect(page.get_by_role("heading", name="Executions")).to_be_visible()
    await expect(page.locator("#executions tbody tr")).to_have_count(2)
    await screenshot(page, tmp_path, "executions")

    row = page.locator("#executions tbody tr", has_text="ingest-document")
    await row.locator("a.execution-link").click()
    await expect(page.locator("h1")).to_contain_text(str(done.execution_id))

    # what a person reads: the timeline in order, the status, the state, the work item
    assert await page.locator("#timeline .kind").all_inner_texts() == TIMELINE
    assert await page.locator("#timeline .seq").all_inner_texts() == [f"#{n}" for n in range(1, 7)]
    await expect(page.get_by_test_id("status")).to_have_text("completed")
    await expect(page.locator("#current-state")).to_contain_text(
        '"summary": "Quarterly numbers are up"'
    )
    await expect(page.locator("#work-items")).to_contain_text("model timed out")
    await expect(page.locator("#work-items")).to_contain_text("1/3")
    await expect(page.locator("#snapshots")).to_contain_text("4")
    # the payload's script is text on the page, and it never ran
    note = page.locator("#timeline li", has_text="user_note")
    await expect(note).to_contain_text("<script>window.owned = true;")
    assert await page.evaluate("window.owned === undefined")
    assert dialogs == []
    await screenshot(page, tmp_path, "execution")

    await page.get_by_role("link", name="Dead letters").click()
    await expect(page.locator("#dead-letters")).to_contain_text(
        "unparseable input after 3 attempts"
    )
    await screenshot(page, tmp_path, "dead_letters")


async def test_the_timeline_loads_more_events_from_the_api(
    store: StateStore, server: Server, browser: Browser
) -> None:
    long = WorkflowExecution(workflow_id="long", workflow_version="1")
    await store.create_execution(long)
    await store.append_events(
        long.execution_id, [CustomEvent(type="tick", n=n, text=SCRIPT) for n in range(1, 131)]
    )
    page, dialogs = await new_page(browser)
    await page.goto(f"{server.url}/executions/{long.execution_id}")
    events = page.locator("#timeline li.event")
    await expect(events).to_have_count(100)

    await page.get_by_role("button", name="Load more events").click()
    await expect(events).to_have_count(130)
    await expect(page.get_by_role("button", name="Load more events")).to_have_count(0)
    sequences = [
        int(s) for s in await events.evaluate_all("els => els.map(e => e.dataset.sequence)")
    ]
    assert sequences == list(range(1, 131))
    await expect(events.nth(129)).to_contain_text('"n": 130')
    await expect(events.nth(129)).to_contain_text("<script>window.owned")
    assert await page.evaluate("window.owned === undefined") and dialogs == []


async def test_signing_in_with_a_tenant_token_shows_that_tenant(
    database_url: str, store: StateStore, browser: Browser, tmp_path: Path
) -> None:
    await populate(store)
    token, _ = await store.for_tenant("acme").create_token("acme viewer", TokenRole.VIEWER)
    server = start_ui(database_url, "--require-token")
    try:
        page, _ = await new_page(browser)
        await page.goto(server.url + "/executions")
        await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        await expect(page.get_by_test_id("who")).to_have_text("not signed in")
        await page.get_by_label("token").fill("sst_not_a_real_token")
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("alert")).to_have_text("this token is not valid")
        await screenshot(page, tmp_path, "sign_in")

        await page.get_by_label("token").fill(token)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("heading", name="Executions")).to_be_visible()
        await expect(page.get_by_test_id("who")).to_have_text("acme viewer (viewer), tenant acme")
        rows = page.locator("#executions tbody tr")
        await expect(rows).to_have_count(1)
        await expect(rows).to_contain_text("triage")
        cookies = await page.context.cookies()
        [cookie] = [c for c in cookies if c["name"] == "statestore_token"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert await page.evaluate("document.cookie") == ""  # not readable by scripts

        await page.get_by_role("button", name="Sign out").click()
        await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    finally:
        stop(server)
