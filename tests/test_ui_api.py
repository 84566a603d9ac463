"""The inspector's JSON API and pages through httpx's ASGI transport (the app runs on the
test's event loop, like the store), on both databases: what each endpoint shows, keyset
pages, bounded counts, who may see what, and that user data is shown as text."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Clock, StoreFactory
from ui_server import start_ui, stop

from statestore import (
    Event,
    Snapshot,
    StateStore,
    Tenant,
    TokenRole,
    WorkflowExecution,
    WorkflowStatus,
    WorkItem,
)
from statestore.event_kinds import CustomEvent, NodeCompleted, WorkflowStarted
from statestore.ui import data
from statestore.ui.app import COOKIE, create_app
from statestore.ui.server import is_loopback

LOCAL = "http://127.0.0.1:8321"
SCRIPT = "<script>alert('owned')</script>"


def client(store: StateStore, **options: Any) -> httpx.AsyncClient:
    app = create_app(store, **options)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=LOCAL)


@pytest.fixture
async def local(store: StateStore) -> AsyncIterator[httpx.AsyncClient]:
    async with client(store) as http:
        yield http


async def ok(http: httpx.AsyncClient, path: str, **options: Any) -> Any:
    response = await http.get(path, **options)
    assert response.status_code == 200, response.text
    return response.json()


async def new_execution(
    store: StateStore,
    *,
    workflow: str = "ingest",
    status: WorkflowStatus = WorkflowStatus.RUNNING,
    state: Any = None,
) -> uuid.UUID:
    execution = WorkflowExecution(
        workflow_id=workflow,
        workflow_version="1",
        status=status,
        current_state=state if state is not None else {},
        tenant_id=store.tenant_id or "default",
    )
    await store.create_execution(execution)
    return execution.execution_id


# ---------------------------------------------------------------- what the API shows


async def test_overview_counts_per_tenant(store: StateStore, local: httpx.AsyncClient) -> None:
    await store.create_tenant(Tenant(id="acme", name="Acme"))
    acme = store.for_tenant("acme")
    first = await new_execution(store, status=WorkflowStatus.RUNNING)
    await new_execution(store, status=WorkflowStatus.COMPLETED)
    await new_execution(acme, status=WorkflowStatus.FAILED)
    await store.enqueue_work_item(WorkItem(execution_id=first, node_id="a", queue_type="fetch"))
    await store.enqueue_work_item(WorkItem(execution_id=first, node_id="b", queue_type="fetch"))
    item = await store.enqueue_work_item(
        WorkItem(execution_id=first, node_id="c", queue_type="llm")
    )
    await store.move_to_dead_letter(item, "boom")

    body = await ok(local, "/api/overview")

    assert [t["id"] for t in body["tenants"]] == ["acme", "default"]
    assert body["executions_by_status"]["default"]["running"] == 1
    assert body["executions_by_status"]["default"]["completed"] == 1
    assert body["executions_by_status"]["default"]["failed"] == 0
    assert body["executions_by_status"]["acme"]["failed"] == 1
    assert body["queues"] == {
        "default": {
            "fetch": {"pending": 2, "claimed": 0, "completed": 0, "failed": 0, "dead_lettered": 0},
            "llm": {"pending": 0, "claimed": 0, "completed": 0, "failed": 0, "dead_lettered": 1},
        }
    }


async def test_counts_stop_at_the_cap(
    store: StateStore, local: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data, "COUNT_CAP", 3)
    for _ in range(5):
        await new_execution(store, status=WorkflowStatus.PENDING)
    await new_execution(store, status=WorkflowStatus.PAUSED)
    body = await ok(local, "/api/overview")
    assert body["executions_by_status"]["default"]["pending"] == "3+"
    assert body["executions_by_status"]["default"]["paused"] == 1
    page = (await local.get("/")).text
    assert "3+" in page


async def test_executions_keyset_pages_and_filters(make_store: StoreFactory, clock: Clock) -> None:
    store = await make_store(clock=clock)
    await store.create_tenant(Tenant(id="acme", name="Acme"))
    acme = store.for_tenant("acme")
    made: list[tuple[Any, str]] = []
    for n in range(7):
        if n != 3:  # two executions share an updated_at: the id breaks the tie
            clock.advance(1)
        view = acme if n % 3 == 0 else store
        status = WorkflowStatus.COMPLETED if n % 2 else WorkflowStatus.RUNNING
        eid = await new_execution(view, workflow="a" if n < 4 else "b", status=status)
        made.append((clock.now, str(eid)))
    newest_first = [eid for _, eid in sorted(made, key=lambda m: (m[0], m[1]), reverse=True)]

    async with client(store) as http:
        seen: list[str] = []
        after: str | None = None
        while True:
            query = "/api/executions?limit=3" + (f"&after={after}" if after else "")
            page = await ok(http, query)
            assert len(page["items"]) <= 3
            seen += [e["execution_id"] for e in page["items"]]
            after = page["next"]
            if after is None:
                break
        assert seen == newest_first  # every execution once, newest first, over both tenants

        running = await ok(http, "/api/executions?status=running")
        assert {e["status"] for e in running["items"]} == {"running"}
        assert len(running["items"]) == 4
        b = await ok(http, "/api/executions?workflow=b&limit=200")
        assert {e["workflow_id"] for e in b["items"]} == {"b"} and len(b["items"]) == 3
        only_acme = await ok(http, "/api/executions?tenant=acme")
        assert [e["execution_id"] for e in only_acme["items"]] == [
            eid for eid in newest_first if eid in {made[0][1], made[3][1], made[6][1]}
        ]
        assert (await ok(http, "/api/executions?tenant=nobody"))["items"] == []


async def test_lists_over_more_tenants_than_are_merged(
    make_store: StoreFactory, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond MAX_TENANTS a list is one range over all tenants, paged the same way; a
    tenant filter names any tenant."""
    monkeypatch.setattr(data, "MAX_TENANTS", 1)
    store = await make_store(clock=clock)
    await store.create_tenant(Tenant(id="acme", name="Acme"))
    made = []
    for view in (store, store.for_tenant("acme"), store, store.for_tenant("acme")):
        clock.advance(1)
        made.append(str(await new_execution(view)))
        item = await view.enqueue_work_item(
            WorkItem(execution_id=made[-1], node_id="n", queue_type="q")
        )
        await view.move_to_dead_letter(item, "x")
    async with client(store) as http:
        first = await ok(http, "/api/executions?limit=3")
        rest = await ok(http, f"/api/executions?limit=3&after={first['next']}")
        seen = [e["execution_id"] for e in first["items"] + rest["items"]]
        assert seen == made[::-1] and rest["next"] is None
        acme = await ok(http, "/api/executions?tenant=acme")
        assert [e["execution_id"] for e in acme["items"]] == [made[3], made[1]]
        letters = await ok(http, "/api/dead-letters")
        assert [d["execution_id"] for d in letters["items"]] == made[::-1]


async def test_one_execution_timeline_state_snapshots_and_work_items(
    store: StateStore, local: httpx.AsyncClient
) -> None:
    eid = await new_execution(store, state={"step": 2})
    kinds = [
        WorkflowStarted(workflow_id="ingest", workflow_version="1", initial_input={}),
        NodeCompleted(node_id="fetch", output={"ok": True}, state_patch={}, duration_ms=5),
        CustomEvent(type="engine_note", text="hello"),
    ]
    await store.append_events(eid, kinds)
    await store.write_snapshot(Snapshot(execution_id=eid, at_sequence=2, state={"s": 2}))
    item_id = await store.enqueue_work_item(
        WorkItem(execution_id=eid, node_id="fetch", queue_type="q", max_attempts=3)
    )
    claimed = await store.claim_work_item("w1", ["q"])
    assert claimed is not None
    await store.fail_work_item(
        item_id,
        "timeout talking to the model",
        retry_in=timedelta(seconds=60),
        worker_id="w1",
        lease_fence=claimed.lease_fence,
    )

    body = await ok(local, f"/api/executions/{eid}")

    assert body["execution"]["current_state"] == {"step": 2}
    assert body["execution"]["status"] == "running"
    assert body["latest_sequence"] == 3
    assert [e["type"] for e in body["events"]["items"]] == [
        "workflow_started",
        "node_completed",
        "engine_note",
    ]
    assert [e["sequence"] for e in body["events"]["items"]] == [1, 2, 3]
    assert body["events"]["items"][2]["data"] == {"text": "hello"}
    assert body["events"]["items"][0]["created_at"]
    assert body["snapshots"] == [
        {"at_sequence": 2, "created_at": body["snapshots"][0]["created_at"]}
    ]
    assert body["latest_snapshot"] == {"at_sequence": 2, "state": {"s": 2}}
    [item] = body["work_items"]
    assert item["status"] == "pending" and item["attempt"] == 1 and item["max_attempts"] == 3
    assert item["last_error"] == "timeout talking to the model"

    # the timeline's keyset pages: after a sequence, in order
    page = await ok(local, f"/api/executions/{eid}/events?after=0&limit=2")
    assert [e["sequence"] for e in page["items"]] == [1, 2] and page["next"] == 2
    page = await ok(local, f"/api/executions/{eid}/events?after=2&limit=2")
    assert [e["sequence"] for e in page["items"]] == [3] and page["next"] is None

    html = (await local.get(f"/executions/{eid}")).text
    assert html.index("workflow_started") < html.index("node_completed") < html.index("engine_note")
    assert "timeout talking to the model" in html


async def test_dead_letter_queue_pages(make_store: StoreFactory, clock: Clock) -> None:
    store = await make_store(clock=clock)
    eid = await new_execution(store)
    ids = []
    for n in range(3):
        clock.advance(1)
        item = await store.enqueue_work_item(
            WorkItem(execution_id=eid, node_id=f"n{n}", queue_type="q")
        )
        await store.move_to_dead_letter(item, f"error {n}")
        ids.append(str(item))
    async with client(store) as http:
        first = await ok(http, "/api/dead-letters?limit=2")
        assert [d["item_id"] for d in first["items"]] == ids[::-1][:2]
        rest = await ok(http, f"/api/dead-letters?limit=2&after={first['next']}")
        assert [d["item_id"] for d in rest["items"]] == [ids[0]] and rest["next"] is None
        assert rest["items"][0]["last_error"] == "error 0"
        html = (await http.get("/dead-letters")).text
        assert "error 2" in html and str(eid) in html


async def test_unknown_and_malformed_requests(local: httpx.AsyncClient) -> None:
    missing = uuid.uuid4()
    assert (await local.get(f"/api/executions/{missing}")).status_code == 404
    assert (await local.get(f"/api/executions/{missing}/events")).status_code == 404
    assert (await local.get(f"/executions/{missing}")).status_code == 404
    for path in (
        "/api/executions/not-a-uuid",
        "/api/executions?after=garbage!",
        "/api/executions?status=exploded",
        "/api/executions?limit=0",
        "/api/executions?limit=100000",
        "/api/dead-letters?limit=x",
    ):
        response = await local.get(path)
        assert response.status_code == 400, path
        assert "error" in response.json()
    assert (await local.get("/executions?status=exploded")).status_code == 400


async def test_nothing_writes(store: StateStore, local: httpx.AsyncClient) -> None:
    """Every route of the store's data answers GET only."""
    eid = await new_execution(store)
    for path in ("/", "/executions", f"/executions/{eid}", "/api/overview", "/api/executions"):
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            assert (await local.request(method, path)).status_code == 405, (method, path)


# ---------------------------------------------------------------- user data is text


async def test_a_script_in_user_data_is_shown_as_text(
    store: StateStore, local: httpx.AsyncClient
) -> None:
    await store.create_tenant(Tenant(id="evil", name="<b>bold</b> tenant"))
    eid = await new_execution(store, state={"note": SCRIPT, SCRIPT: 1})
    await store.append_event(
        Event(execution_id=eid, kind=CustomEvent(type="user_input", text=SCRIPT))
    )
    item = await store.enqueue_work_item(WorkItem(execution_id=eid, node_id="n", queue_type="q"))
    await store.move_to_dead_letter(item, SCRIPT)

    for path in ("/", "/executions", f"/executions/{eid}", "/dead-letters"):
        response = await local.get(path)
        assert response.status_code == 200
        assert "<script>alert" not in response.text, path
        assert "<b>bold" not in response.text, path
        scripts = re.findall(r"<script[^>]*>", response.text)
        assert scripts == ['<script src="/static/inspector.js" defer>'], path
        assert "script-src 'self'" in response.headers["content-security-policy"]
    page = (await local.get(f"/executions/{eid}")).text
    assert "&lt;script&gt;alert(" in page
    # the JSON API carries the value as it is; the page's script sets it as text
    events = await ok(local, f"/api/executions/{eid}/events")
    assert events["items"][0]["data"] == {"text": SCRIPT}


# ---------------------------------------------------------------- who sees what


async def test_a_token_is_required_off_loopback(store: StateStore) -> None:
    eid = await new_execution(store)
    async with client(store, require_token=True) as http:
        for path in ("/api/overview", "/api/executions", f"/api/executions/{eid}"):
            response = await http.get(path)
            assert response.status_code == 401, path
            assert response.json() == {"error": "a store API token is required"}
        page = await http.get("/")
        assert page.status_code == 401 and 'action="/login"' in page.text
        assert (await http.get("/static/inspector.css")).status_code == 200


async def test_a_wrong_token_is_refused_everywhere(store: StateStore) -> None:
    token, record = await store.create_token("viewer", TokenRole.VIEWER)
    await store.revoke_token(record.id)
    fake = "sst_" + "0" * 32 + "_" + "A" * 43
    for options in ({"require_token": True}, {}):
        async with client(store, **options) as http:
            for bad in (token, fake, "nonsense"):
                headers = {"Authorization": f"Bearer {bad}"}
                assert (await http.get("/api/overview", headers=headers)).status_code == 401
                http.cookies.set(COOKIE, bad)
                assert (await http.get("/api/overview")).status_code == 401
                http.cookies.clear()


async def test_a_tenant_token_sees_only_its_tenant(store: StateStore) -> None:
    await store.create_tenant(Tenant(id="acme", name="Acme"))
    acme = store.for_tenant("acme")
    mine = await new_execution(acme, workflow="acme-flow")
    theirs = await new_execution(store, workflow="default-flow")
    their_item = await store.enqueue_work_item(
        WorkItem(execution_id=theirs, node_id="n", queue_type="secret-queue")
    )
    await store.move_to_dead_letter(their_item, "their error")
    acme_token, _ = await acme.create_token("acme viewer", TokenRole.VIEWER)
    operator, _ = await store.create_token("ops", TokenRole.OPERATOR)
    default_viewer, _ = await store.create_token("default viewer", TokenRole.VIEWER)

    async with client(store, require_token=True) as http:
        as_acme = {"Authorization": f"Bearer {acme_token}"}
        overview = await ok(http, "/api/overview", headers=as_acme)
        assert [t["id"] for t in overview["tenants"]] == ["acme"]
        assert overview["queues"] == {} and set(overview["executions_by_status"]) == {"acme"}
        listed = await ok(http, "/api/executions", headers=as_acme)
        assert [e["execution_id"] for e in listed["items"]] == [str(mine)]
        other = await ok(http, "/api/executions?tenant=default", headers=as_acme)
        assert other["items"] == []
        assert (await http.get(f"/api/executions/{theirs}", headers=as_acme)).status_code == 404
        events = await http.get(f"/api/executions/{theirs}/events", headers=as_acme)
        assert events.status_code == 404
        assert (await ok(http, "/api/dead-letters", headers=as_acme))["items"] == []
        page = await http.get("/dead-letters", headers=as_acme)
        assert "their error" not in page.text and "secret-queue" not in page.text
        assert "acme viewer (viewer), tenant acme" in page.text

        # a viewer of the default tenant sees that tenant only; the default operator sees all
        as_default = {"Authorization": f"Bearer {default_viewer}"}
        seen = await ok(http, "/api/executions", headers=as_default)
        assert [e["execution_id"] for e in seen["items"]] == [str(theirs)]
        everything = await ok(
            http, "/api/executions", headers={"Authorization": f"Bearer {operator}"}
        )
        assert {e["execution_id"] for e in everything["items"]} == {str(mine), str(theirs)}


async def test_sign_in_sets_an_http_only_same_site_cookie(store: StateStore) -> None:
    await store.create_tenant(Tenant(id="acme", name="Acme"))
    await new_execution(store.for_tenant("acme"), workflow="acme-flow")
    token, _ = await store.for_tenant("acme").create_token("acme viewer", TokenRole.VIEWER)
    async with client(store, require_token=True) as http:
        refused = await http.post("/login", data={"token": "sst_wrong", "next": "/executions"})
        assert refused.status_code == 401 and "set-cookie" not in refused.headers
        assert "this token is not valid" in refused.text

        response = await http.post("/login", data={"token": token, "next": "/executions"})
        assert response.status_code == 303 and response.headers["location"] == "/executions"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie

        page = await http.get("/executions")  # the client sends the cookie back
        assert page.status_code == 200 and "acme-flow" in page.text and "Sign out" in page.text

        out = await http.post("/logout")
        assert out.status_code == 303 and f'{COOKIE}=""' in out.headers["set-cookie"]
        http.cookies.clear()
        assert (await http.get("/executions")).status_code == 401

        # only a path of this app after signing in, never another site
        away = await http.post("/login", data={"token": token, "next": "//evil.example/x"})
        assert away.headers["location"] == "/"


async def test_on_loopback_only_loopback_host_names_are_served(store: StateStore) -> None:
    """Without a token, a request naming another host (DNS rebinding) is refused."""
    async with client(store) as http:
        for host in ("127.0.0.1:8321", "localhost:8321", "[::1]:8321", "localhost"):
            assert (await http.get("/api/overview", headers={"host": host})).status_code == 200
        rebound = await http.get("/api/overview", headers={"host": "attacker.example:8321"})
        assert rebound.status_code == 401
        token, _ = await store.create_token("ops", TokenRole.OPERATOR)
        with_token = await http.get(
            "/api/overview",
            headers={"host": "inspector.internal", "Authorization": f"Bearer {token}"},
        )
        assert with_token.status_code == 200


def test_which_addresses_are_loopback() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.0.2.1", "inspector.example"]))


async def test_the_app_needs_the_unscoped_store(store: StateStore) -> None:
    with pytest.raises(ValueError, match="unscoped"):
        create_app(store.for_tenant("default"))


# ---------------------------------------------------------------- the command


async def test_the_command_serves_the_store(database_url: str, store: StateStore) -> None:
    eid = await new_execution(store, workflow="served")
    server = start_ui(database_url)
    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            listed = await ok(http, "/api/executions")
            assert [e["execution_id"] for e in listed["items"]] == [str(eid)]
            assert (await http.get("/static/inspector.js")).status_code == 200
    finally:
        stop(server)


async def test_the_command_bound_off_loopback_asks_for_a_token(
    database_url: str, store: StateStore
) -> None:
    token, _ = await store.create_token("ops", TokenRole.OPERATOR)
    server = start_ui(database_url, "--host", "0.0.0.0")
    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            assert (await http.get("/api/overview")).status_code == 401
            headers = {"Authorization": f"Bearer {token}"}
            assert (await http.get("/api/overview", headers=headers)).status_code == 200
    finally:
        stop(server)


def test_the_command_on_a_missing_database_fails_in_one_line(tmp_path: Path) -> None:
    statestore = str(Path(sys.executable).with_name("statestore"))
    url = f"sqlite:///{tmp_path / 'missing.db'}"
    result = subprocess.run(
        [statestore, "--url", url, "ui"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1 and result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "missing.db").exists()


def test_the_cli_loads_no_web_framework_until_ui_runs() -> None:
    code = (
        "import sys, statestore.cli\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'starlette', 'uvicorn', 'jinja2', 'opentelemetry'} or m == 'statestore.ui.app'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


async def test_the_feed_pages_in_order_and_shows_a_tenant_only_its_events(
    store: StateStore,
) -> None:
    await store.create_tenant(Tenant(id="acme", name="Acme"))
    acme = store.for_tenant("acme")
    mine = await new_execution(acme, workflow="acme-flow")
    theirs = await new_execution(store, workflow="default-flow")
    await acme.append_events(mine, [{"type": "a1"}, {"type": "a2"}, {"type": "a3"}])
    await store.append_events(theirs, [CustomEvent(type="secret", note=SCRIPT)])
    acme_token, _ = await acme.create_token("acme viewer", TokenRole.VIEWER)
    operator, _ = await store.create_token("ops", TokenRole.OPERATOR)
    async with client(store, require_token=True) as http:
        everyone = {"Authorization": f"Bearer {operator}"}
        first = await ok(http, "/api/feed?limit=2", headers=everyone)
        rest = await ok(http, f"/api/feed?after={first['next']}&limit=10", headers=everyone)
        events = first["items"] + rest["items"]
        assert [e["type"] for e in events if e["tenant_id"] == "acme"] == ["a1", "a2", "a3"]
        positions = [e["position"] for e in events]
        assert positions == sorted(positions) and len(set(positions)) == 4
        as_acme = {"Authorization": f"Bearer {acme_token}"}
        scoped = await ok(http, "/api/feed", headers=as_acme)
        assert {e["tenant_id"] for e in scoped["items"]} == {"acme"}
        page = await http.get("/feed", headers=everyone)
        assert page.status_code == 200 and "secret" in page.text and SCRIPT not in page.text
        assert "secret" not in (await http.get("/feed", headers=as_acme)).text
        assert (await http.get("/api/feed?after=-1", headers=everyone)).status_code == 400
