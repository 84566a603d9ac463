"""Bad input: every public method answers it with a ``statestore.errors`` subclass (mostly
``ValidationError``), raised before anything is written, and no other exception escapes.

Each test runs a list of cases against one prepared database and compares the whole
content of every table before and after each case, so "writes nothing" covers updates too.
All failing cases of a group are reported together.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import text

from statestore import (
    ConfigurationError,
    CustomEvent,
    Event,
    NodeCompleted,
    Snapshot,
    StateStore,
    StateStoreError,
    Tenant,
    TenantLimits,
    TimerFired,
    ValidationError,
    WorkflowDefinition,
    WorkflowExecution,
    WorkflowFailed,
    WorkflowStatus,
)

StoreFactory = Callable[..., Awaitable[StateStore]]
TABLES = (
    "tenants",
    "workflow_definitions",
    "workflow_executions",
    "events",
    "snapshots",
    "work_items",
    "api_tokens",
)

NAN = float("nan")
INF = float("inf")
NUL = "a\x00b"
SURROGATE = "x\ud800y"
LONG = "a" * 256
MAX = "a" * 255
BIG = "x" * 200  # over max_json_bytes=100 once serialised
NAIVE = datetime(2024, 5, 1, 12, 0, 0)


class Holder(BaseModel):
    """A model inside a custom kind's extra field (dumped as its fields)."""

    data: dict[Any, Any]


@dataclass
class World:
    store: StateStore
    execution_id: uuid.UUID


Call = Callable[[World], Awaitable[Any]]
Case = tuple[str, Call, type[StateStoreError]]


def changed(model: Any, **changes: Any) -> Any:
    """Models are mutable: set fields after construction, bypassing validation."""
    for name, value in changes.items():
        setattr(model, name, value)
    return model


def wf(**kw: Any) -> WorkflowDefinition:
    return WorkflowDefinition(**{"workflow_id": "new", "version": "1", "ir": {}, **kw})


def ex(**kw: Any) -> WorkflowExecution:
    return WorkflowExecution(**{"workflow_id": "wf", "workflow_version": "1", **kw})


def ev(world: World, kind: Any = None, **kw: Any) -> Event:
    return Event(execution_id=world.execution_id, kind=kind or WorkflowFailed(error="e"), **kw)


def snap(world: World, **kw: Any) -> Snapshot:
    return Snapshot(**{"execution_id": world.execution_id, "at_sequence": 9, "state": {}, **kw})


async def dump(store: StateStore) -> dict[str, list[str]]:
    """Every row of every table, as sorted text."""
    out: dict[str, list[str]] = {}
    async with store.engine.connect() as conn:
        for table in TABLES:
            rows = (await conn.execute(text(f"SELECT * FROM {table}"))).all()
            out[table] = sorted(repr(tuple(row)) for row in rows)
    return out


async def prepare(store: StateStore) -> World:
    await store.create_tenant(Tenant(id="acme", name="Acme"))
    await store.store_workflow(WorkflowDefinition(workflow_id="wf", version="1", ir={"n": 1}))
    execution = WorkflowExecution(
        workflow_id="wf", workflow_version="1", current_state={"log": [1]}
    )
    await store.create_execution(execution)
    await store.append_events(execution.execution_id, [WorkflowFailed(error="e")])
    await store.write_snapshot(
        Snapshot(execution_id=execution.execution_id, at_sequence=1, state={"s": 1})
    )
    return World(store, execution.execution_id)


async def run_cases(world: World, cases: list[Case], check_store: StateStore | None = None) -> None:
    """Run every case; collect what went wrong; fail once with the full list."""
    check_store = check_store or world.store
    failures: list[str] = []
    baseline = await dump(check_store)
    for name, call, expected in cases:
        try:
            with pytest.raises(StateStoreError) as info:
                await call(world)
        except pytest.fail.Exception:
            failures.append(f"{name}: no error raised (expected {expected.__name__})")
        except Exception as exc:  # a non-statestore exception escaped
            failures.append(f"{name}: {type(exc).__module__}.{type(exc).__name__} escaped: {exc}")
        else:
            if type(info.value) is not expected:
                failures.append(
                    f"{name}: {type(info.value).__name__} ({info.value}), "
                    f"expected {expected.__name__}"
                )
        after = await dump(check_store)
        if after != baseline:
            failures.append(f"{name}: the database changed")
            baseline = after
    assert not failures, "\n".join(failures)


V = ValidationError

WORKFLOW_CASES: list[Case] = [
    ("ir NaN", lambda w: w.store.store_workflow(wf(ir={"x": NAN})), V),
    ("ir Infinity", lambda w: w.store.store_workflow(wf(ir=[INF])), V),
    ("ir -Infinity nested", lambda w: w.store.store_workflow(wf(ir={"a": {"b": [-INF]}})), V),
    ("ir NUL in value", lambda w: w.store.store_workflow(wf(ir={"a": NUL})), V),
    ("ir NUL in key", lambda w: w.store.store_workflow(wf(ir={NUL: 1})), V),
    ("ir surrogate value", lambda w: w.store.store_workflow(wf(ir=[SURROGATE])), V),
    ("ir surrogate key", lambda w: w.store.store_workflow(wf(ir={SURROGATE: 1})), V),
    ("ir int key", lambda w: w.store.store_workflow(changed(wf(), ir={1: "a"})), V),
    ("ir tuple key", lambda w: w.store.store_workflow(changed(wf(), ir={(1, 2): "a"})), V),
    ("ir not JSON (set)", lambda w: w.store.store_workflow(changed(wf(), ir={1, 2})), V),
    ("workflow_id empty", lambda w: w.store.store_workflow(wf(workflow_id="")), V),
    ("workflow_id 256", lambda w: w.store.store_workflow(wf(workflow_id=LONG)), V),
    ("workflow_id NUL", lambda w: w.store.store_workflow(wf(workflow_id=NUL)), V),
    ("workflow_id surrogate", lambda w: w.store.store_workflow(wf(workflow_id=SURROGATE)), V),
    ("workflow_id int", lambda w: w.store.store_workflow(changed(wf(), workflow_id=5)), V),
    ("version empty", lambda w: w.store.store_workflow(wf(version="")), V),
    ("version 256", lambda w: w.store.store_workflow(wf(version=LONG)), V),
    ("version int", lambda w: w.store.store_workflow(changed(wf(), version=1)), V),
    ("naive created_at", lambda w: w.store.store_workflow(changed(wf(), created_at=NAIVE)), V),
    ("tenant_id malformed", lambda w: w.store.store_workflow(wf(tenant_id="a b")), V),
    ("not a model", lambda w: w.store.store_workflow("wf"), V),
    ("replace not bool", lambda w: w.store.store_workflow(wf(), replace="yes"), V),
    ("get id empty", lambda w: w.store.get_workflow("", "1"), V),
    ("get id 256", lambda w: w.store.get_workflow(LONG, "1"), V),
    ("get id int", lambda w: w.store.get_workflow(5, "1"), V),
    ("get version NUL", lambda w: w.store.get_workflow("wf", NUL), V),
    ("get version surrogate", lambda w: w.store.get_workflow("wf", SURROGATE), V),
    ("list id int", lambda w: w.store.list_workflows(5), V),
    ("list id empty", lambda w: w.store.list_workflows(""), V),
    ("list id 256", lambda w: w.store.list_workflows(LONG), V),
]

EXECUTION_CASES: list[Case] = [
    ("initial_input NaN", lambda w: w.store.create_execution(ex(initial_input={"x": NAN})), V),
    ("current_state Infinity", lambda w: w.store.create_execution(ex(current_state=[INF])), V),
    ("initial_input NUL", lambda w: w.store.create_execution(ex(initial_input={"a": NUL})), V),
    ("current_state surrogate", lambda w: w.store.create_execution(ex(current_state=SURROGATE)), V),
    (
        "initial_input int key",
        lambda w: w.store.create_execution(changed(ex(), initial_input={1: 2})),
        V,
    ),
    ("workflow_id empty", lambda w: w.store.create_execution(ex(workflow_id="")), V),
    ("workflow_id 256", lambda w: w.store.create_execution(ex(workflow_id=LONG)), V),
    ("workflow_id NUL", lambda w: w.store.create_execution(ex(workflow_id=NUL)), V),
    ("workflow_id int", lambda w: w.store.create_execution(changed(ex(), workflow_id=5)), V),
    (
        "workflow_version surrogate",
        lambda w: w.store.create_execution(ex(workflow_version=SURROGATE)),
        V,
    ),
    ("workflow_version empty", lambda w: w.store.create_execution(ex(workflow_version="")), V),
    (
        "execution_id not UUID",
        lambda w: w.store.create_execution(changed(ex(), execution_id="nope")),
        V,
    ),
    ("status unknown", lambda w: w.store.create_execution(changed(ex(), status="bogus")), V),
    ("naive started_at", lambda w: w.store.create_execution(changed(ex(), started_at=NAIVE)), V),
    (
        "naive completed_at",
        lambda w: w.store.create_execution(changed(ex(), completed_at=NAIVE)),
        V,
    ),
    ("tenant_id malformed", lambda w: w.store.create_execution(ex(tenant_id="a/b")), V),
    ("not a model", lambda w: w.store.create_execution(None), V),
    ("get id not UUID", lambda w: w.store.get_execution("not-a-uuid"), V),
    ("get id empty", lambda w: w.store.get_execution(""), V),
    ("get id int", lambda w: w.store.get_execution(12345), V),
    ("get id NUL", lambda w: w.store.get_execution("\x00"), V),
    ("status id not UUID", lambda w: w.store.update_execution_status("nope", "running"), V),
    ("status unknown", lambda w: w.store.update_execution_status(w.execution_id, "bogus"), V),
    ("status int", lambda w: w.store.update_execution_status(w.execution_id, 5), V),
    (
        "expected unknown",
        lambda w: w.store.update_execution_status(w.execution_id, "running", expected="bogus"),
        V,
    ),
    ("state id not UUID", lambda w: w.store.update_execution_current_state("nope", {}), V),
    ("state NaN", lambda w: w.store.update_execution_current_state(w.execution_id, [NAN]), V),
    ("state Infinity", lambda w: w.store.update_execution_current_state(w.execution_id, INF), V),
    ("state NUL", lambda w: w.store.update_execution_current_state(w.execution_id, {"a": NUL}), V),
    (
        "state NUL key",
        lambda w: w.store.update_execution_current_state(w.execution_id, {NUL: 1}),
        V,
    ),
    (
        "state surrogate",
        lambda w: w.store.update_execution_current_state(w.execution_id, {"a": SURROGATE}),
        V,
    ),
    (
        "state int key",
        lambda w: w.store.update_execution_current_state(w.execution_id, {1: "a"}),
        V,
    ),
    (
        "state None key",
        lambda w: w.store.update_execution_current_state(w.execution_id, {None: 1}),
        V,
    ),
    (
        "state not JSON",
        lambda w: w.store.update_execution_current_state(w.execution_id, object()),
        V,
    ),
    ("append id not UUID", lambda w: w.store.patch_append_array("nope", "log", 1), V),
    ("append key int", lambda w: w.store.patch_append_array(w.execution_id, 5, 1), V),
    ("append key NUL", lambda w: w.store.patch_append_array(w.execution_id, NUL, 1), V),
    ("append key surrogate", lambda w: w.store.patch_append_array(w.execution_id, SURROGATE, 1), V),
    ("append value NaN", lambda w: w.store.patch_append_array(w.execution_id, "log", NAN), V),
    ("append value NUL", lambda w: w.store.patch_append_array(w.execution_id, "log", NUL), V),
    (
        "append value int key",
        lambda w: w.store.patch_append_array(w.execution_id, "log", {2: 1}),
        V,
    ),
    ("list limit 0", lambda w: w.store.list_executions(limit=0), V),
    ("list limit 1001", lambda w: w.store.list_executions(limit=1001), V),
    ("list limit negative", lambda w: w.store.list_executions(limit=-5), V),
    ("list limit str", lambda w: w.store.list_executions(limit="10"), V),
    ("list limit float", lambda w: w.store.list_executions(limit=10.0), V),
    ("list offset negative", lambda w: w.store.list_executions(offset=-1), V),
    ("list offset str", lambda w: w.store.list_executions(offset="0"), V),
    ("list status unknown", lambda w: w.store.list_executions("bogus"), V),
    ("list workflow_id empty", lambda w: w.store.list_executions(workflow_id=""), V),
    ("list workflow_id 256", lambda w: w.store.list_executions(workflow_id=LONG), V),
    ("list workflow_id int", lambda w: w.store.list_executions(workflow_id=3), V),
]

EVENT_CASES: list[Case] = [
    ("kind NaN", lambda w: w.store.append_event(ev(w, CustomEvent(type="c", v=NAN))), V),
    ("kind Infinity", lambda w: w.store.append_event(ev(w, CustomEvent(type="c", v=[INF]))), V),
    ("kind NUL value", lambda w: w.store.append_event(ev(w, WorkflowFailed(error=NUL))), V),
    ("kind NUL type", lambda w: w.store.append_event(ev(w, CustomEvent(type=NUL))), V),
    ("kind int key", lambda w: w.store.append_event(ev(w, CustomEvent(type="c", v={1: 2}))), V),
    (
        "kind int key in a nested model",
        lambda w: w.store.append_event(ev(w, CustomEvent(type="c", v=Holder(data={1: "a"})))),
        V,
    ),
    ("kind surrogate", lambda w: w.store.append_event(ev(w, TimerFired(node_id=SURROGATE))), V),
    (
        "kind NaN in output",
        lambda w: w.store.append_event(
            ev(w, NodeCompleted(node_id="n", output=NAN, state_patch={}, duration_ms=1))
        ),
        V,
    ),
    ("event not a model", lambda w: w.store.append_event("event"), V),
    ("execution_id not UUID", lambda w: w.store.append_event(changed(ev(w), execution_id="x")), V),
    ("naive created_at", lambda w: w.store.append_event(changed(ev(w), created_at=NAIVE)), V),
    (
        "kind mistyped",
        lambda w: w.store.append_event(changed(ev(w), kind={"type": "timer_fired"})),
        V,
    ),
    ("expected_sequence -1", lambda w: w.store.append_event(ev(w), expected_sequence=-1), V),
    ("expected_sequence str", lambda w: w.store.append_event(ev(w), expected_sequence="1"), V),
    ("batch id not UUID", lambda w: w.store.append_events("nope", [TimerFired(node_id="n")]), V),
    ("batch id int", lambda w: w.store.append_events(7, [TimerFired(node_id="n")]), V),
    ("batch kinds str", lambda w: w.store.append_events(w.execution_id, "abc"), V),
    ("batch kinds dict", lambda w: w.store.append_events(w.execution_id, {"type": "x"}), V),
    ("batch kinds None", lambda w: w.store.append_events(w.execution_id, None), V),
    (
        "batch kind int",
        lambda w: w.store.append_events(w.execution_id, [TimerFired(node_id="n"), 5]),
        V,
    ),
    ("batch kind no type", lambda w: w.store.append_events(w.execution_id, [{"no": "type"}]), V),
    ("batch kind empty type", lambda w: w.store.append_events(w.execution_id, [{"type": ""}]), V),
    ("batch kind int type", lambda w: w.store.append_events(w.execution_id, [{"type": 3}]), V),
    (
        "batch second kind NaN",
        lambda w: w.store.append_events(
            w.execution_id, [TimerFired(node_id="n"), {"type": "c", "v": NAN}]
        ),
        V,
    ),
    (
        "batch kind NUL",
        lambda w: w.store.append_events(w.execution_id, [{"type": "c", "v": NUL}]),
        V,
    ),
    (
        "batch kind int key",
        lambda w: w.store.append_events(w.execution_id, [{"type": "c", "v": {1: 2}}]),
        V,
    ),
    (
        "batch expected_sequence -1",
        lambda w: w.store.append_events(
            w.execution_id, [TimerFired(node_id="n")], expected_sequence=-1
        ),
        V,
    ),
    ("get id not UUID", lambda w: w.store.get_events("nope"), V),
    ("get id int", lambda w: w.store.get_events(3), V),
    ("since negative", lambda w: w.store.get_events_since(w.execution_id, -1), V),
    ("since str", lambda w: w.store.get_events_since(w.execution_id, "0"), V),
    ("since limit 0", lambda w: w.store.get_events_since(w.execution_id, 0, limit=0), V),
    ("since limit str", lambda w: w.store.get_events_since(w.execution_id, 0, limit="5"), V),
    ("since id not UUID", lambda w: w.store.get_events_since("nope", 0), V),
    ("latest id not UUID", lambda w: w.store.latest_sequence("nope"), V),
    ("latest id None", lambda w: w.store.latest_sequence(None), V),
]

SNAPSHOT_CASES: list[Case] = [
    ("state NaN", lambda w: w.store.write_snapshot(snap(w, state={"x": NAN})), V),
    ("state Infinity", lambda w: w.store.write_snapshot(snap(w, state=[INF])), V),
    ("state NUL", lambda w: w.store.write_snapshot(snap(w, state=NUL)), V),
    ("state surrogate key", lambda w: w.store.write_snapshot(snap(w, state={SURROGATE: 1})), V),
    ("state int key", lambda w: w.store.write_snapshot(changed(snap(w), state={1: 1})), V),
    ("at_sequence negative", lambda w: w.store.write_snapshot(snap(w, at_sequence=-1)), V),
    ("at_sequence not int", lambda w: w.store.write_snapshot(changed(snap(w), at_sequence="x")), V),
    (
        "execution_id not UUID",
        lambda w: w.store.write_snapshot(changed(snap(w), execution_id="x")),
        V,
    ),
    ("naive created_at", lambda w: w.store.write_snapshot(changed(snap(w), created_at=NAIVE)), V),
    ("not a model", lambda w: w.store.write_snapshot({"state": 1}), V),
    ("latest id not UUID", lambda w: w.store.latest_snapshot("nope"), V),
    ("latest id int", lambda w: w.store.latest_snapshot(1), V),
]

TENANT_CASES: list[Case] = [
    ("create name empty", lambda w: w.store.create_tenant(Tenant(id="n1", name="")), V),
    ("create name 256", lambda w: w.store.create_tenant(Tenant(id="n1", name=LONG)), V),
    ("create name NUL", lambda w: w.store.create_tenant(Tenant(id="n1", name=NUL)), V),
    ("create name surrogate", lambda w: w.store.create_tenant(Tenant(id="n1", name=SURROGATE)), V),
    (
        "create name int",
        lambda w: w.store.create_tenant(changed(Tenant(id="n1", name="n"), name=5)),
        V,
    ),
    (
        "create policy NaN",
        lambda w: w.store.create_tenant(Tenant(id="n1", name="n", policy={"x": NAN})),
        V,
    ),
    (
        "create policy NUL",
        lambda w: w.store.create_tenant(Tenant(id="n1", name="n", policy=[NUL])),
        V,
    ),
    (
        "create policy int key",
        lambda w: w.store.create_tenant(changed(Tenant(id="n1", name="n"), policy={1: 1})),
        V,
    ),
    ("create id malformed", lambda w: w.store.create_tenant(Tenant(id="n 1", name="n")), V),
    ("create id 65", lambda w: w.store.create_tenant(Tenant(id="a" * 65, name="n")), V),
    ("create id int", lambda w: w.store.create_tenant(changed(Tenant(id="n1", name="n"), id=5)), V),
    (
        "create status unknown",
        lambda w: w.store.create_tenant(changed(Tenant(id="n1", name="n"), status="x")),
        V,
    ),
    (
        "create limits mistyped",
        lambda w: w.store.create_tenant(
            changed(Tenant(id="n1", name="n"), limits={"max_workflows": "many"})
        ),
        V,
    ),
    (
        "create limits NaN budget",
        lambda w: w.store.create_tenant(
            Tenant(id="n1", name="n", limits=TenantLimits(max_cost_per_month_usd=NAN))
        ),
        V,
    ),
    ("create not a model", lambda w: w.store.create_tenant("acme"), V),
    ("update name empty", lambda w: w.store.update_tenant(Tenant(id="acme", name="")), V),
    ("update name 256", lambda w: w.store.update_tenant(Tenant(id="acme", name=LONG)), V),
    (
        "update policy Infinity",
        lambda w: w.store.update_tenant(Tenant(id="acme", name="A", policy=INF)),
        V,
    ),
    ("update id malformed", lambda w: w.store.update_tenant(Tenant(id="ac/me", name="A")), V),
    ("get id int", lambda w: w.store.get_tenant(5), V),
    ("get id NUL", lambda w: w.store.get_tenant("\x00"), V),
    ("get id non-ASCII", lambda w: w.store.get_tenant("tenänt"), V),
]


async def test_workflow_methods(store: StateStore) -> None:
    await run_cases(await prepare(store), WORKFLOW_CASES)


async def test_execution_methods(store: StateStore) -> None:
    await run_cases(await prepare(store), EXECUTION_CASES)


async def test_event_methods(store: StateStore) -> None:
    await run_cases(await prepare(store), EVENT_CASES)


async def test_snapshot_methods(store: StateStore) -> None:
    await run_cases(await prepare(store), SNAPSHOT_CASES)


async def test_tenant_methods(store: StateStore) -> None:
    await run_cases(await prepare(store), TENANT_CASES)


async def test_scoped_store_methods(store: StateStore) -> None:
    """The same checks run on a tenant-scoped view."""
    world = await prepare(store)
    scoped = World(store.for_tenant("default"), world.execution_id)
    cases = [
        c
        for c in WORKFLOW_CASES + EXECUTION_CASES + EVENT_CASES + SNAPSHOT_CASES
        if "tenant_id" not in c[0]
    ]
    await run_cases(scoped, cases, check_store=store)


def test_for_tenant_bad_input(store: StateStore) -> None:
    for bad in (5, None, "", "a b", "a" * 65, "é"):
        with pytest.raises(StateStoreError) as info:
            store.for_tenant(bad)
        assert type(info.value) is ValidationError, bad


async def test_json_over_max_json_bytes(make_store: StoreFactory) -> None:
    small = await make_store(max_json_bytes=100)
    world = await prepare(small)
    execution_id = world.execution_id
    # Under the limit works.
    await small.update_execution_current_state(execution_id, {"log": [1], "s": "x" * 40})
    await small.store_workflow(WorkflowDefinition(workflow_id="ok", version="1", ir=["y" * 50]))
    cases: list[Case] = [
        ("workflow ir", lambda w: w.store.store_workflow(wf(ir={"x": BIG})), V),
        ("execution initial_input", lambda w: w.store.create_execution(ex(initial_input=[BIG])), V),
        ("execution current_state", lambda w: w.store.create_execution(ex(current_state=BIG)), V),
        ("update state", lambda w: w.store.update_execution_current_state(execution_id, [BIG]), V),
        ("append value", lambda w: w.store.patch_append_array(execution_id, "log", BIG), V),
        # Each value is small, but the resulting state would exceed the limit.
        (
            "append result",
            lambda w: w.store.patch_append_array(execution_id, "log", "z" * 60),
            V,
        ),
        ("event kind", lambda w: w.store.append_event(ev(w, WorkflowFailed(error=BIG))), V),
        (
            "events batch",
            lambda w: w.store.append_events(execution_id, [TimerFired(node_id="n"), {"type": BIG}]),
            V,
        ),
        ("snapshot state", lambda w: w.store.write_snapshot(snap(w, state={"s": BIG})), V),
        (
            "tenant policy",
            lambda w: w.store.create_tenant(Tenant(id="big", name="b", policy=[BIG])),
            V,
        ),
    ]
    await run_cases(world, cases)


async def test_max_identifier_length_is_accepted(store: StateStore) -> None:
    await store.store_workflow(WorkflowDefinition(workflow_id=MAX, version=MAX, ir={}))
    execution = WorkflowExecution(workflow_id=MAX, workflow_version=MAX)
    await store.create_execution(execution)
    found = await store.get_execution(execution.execution_id)
    assert found is not None and found.workflow_id == MAX
    assert len(await store.list_workflows(MAX)) == 1


@pytest.mark.parametrize(
    "clock",
    [lambda: NAIVE, lambda: "2024-05-01T12:00:00Z", lambda: None],
    ids=["naive", "string", "none"],
)
async def test_bad_clock(make_store: StoreFactory, clock: Callable[[], Any]) -> None:
    store = await make_store()
    world = await prepare(store)
    bad = World(await make_store(clock=clock), world.execution_id)
    cases: list[Case] = [
        ("store_workflow", lambda w: w.store.store_workflow(wf()), ConfigurationError),
        ("create_execution", lambda w: w.store.create_execution(ex()), ConfigurationError),
        (
            "update_execution_status",
            lambda w: w.store.update_execution_status(w.execution_id, WorkflowStatus.RUNNING),
            ConfigurationError,
        ),
        (
            "append_events",
            lambda w: w.store.append_events(w.execution_id, [TimerFired(node_id="n")]),
            ConfigurationError,
        ),
        ("write_snapshot", lambda w: w.store.write_snapshot(snap(w)), ConfigurationError),
        (
            "create_tenant",
            lambda w: w.store.create_tenant(Tenant(id="c", name="c")),
            ConfigurationError,
        ),
    ]
    await run_cases(bad, cases, check_store=store)


async def test_aware_non_utc_clock_is_fine(make_store: StoreFactory) -> None:
    local = datetime(2024, 5, 1, 7, 0, tzinfo=timezone(timedelta(hours=-5)))
    store = await make_store(clock=lambda: local)
    await prepare(store)
    [execution] = await store.list_executions()
    assert execution.started_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert execution.started_at.utcoffset() == timedelta(0)
