"""Issue 11's input hardening, on both databases.

- One JSON nesting limit (``MAX_JSON_DEPTH``) on every write path that takes JSON, below what
  every read path decodes: a value at the limit reads back everywhere (so one tenant cannot
  break listings for all), a value one level deeper is a short ``ValidationError``.
- JSON round-trips exactly on both databases: same numbers (``1e16`` stays a float, ``-0.0``
  keeps its sign), same key order.
- Event kinds hold JSON values only (or typed fields their kind parses back): anything the
  JSON encoding would silently convert is a ``ValidationError``, never a ``DatabaseError``.
- Datetimes that cannot be expressed in UTC are a ``ValidationError`` before anything is
  written.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bad_input import dump

from statestore import (
    BaseEventKind,
    CustomEvent,
    Event,
    NodeCompleted,
    Snapshot,
    StateStore,
    Tenant,
    TimerCreated,
    ValidationError,
    WorkflowDefinition,
    WorkflowExecution,
    WorkItem,
)
from statestore.validation import MAX_JSON_DEPTH

STATESTORE = str(Path(sys.executable).with_name("statestore"))
SHORT = 200  # an error message is one readable line


def nested(depth: int, leaf: Any = "leaf") -> Any:
    """A JSON value with exactly ``depth`` containers, alternating objects and arrays."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def exact(value: Any) -> str:
    """A comparison key that sees what ``==`` misses: int vs float, -0.0 vs 0.0, key order."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def changed(model: Any, **changes: Any) -> Any:
    """Set fields after construction, bypassing validation (models are mutable)."""
    for name, value in changes.items():
        setattr(model, name, value)
    return model


@dataclass
class World:
    store: StateStore
    execution_id: uuid.UUID


async def prepare(store: StateStore) -> World:
    await store.store_workflow(WorkflowDefinition(workflow_id="wf", version="1", ir={}))
    execution = WorkflowExecution(
        workflow_id="wf", workflow_version="1", current_state={"log": [nested(3)]}
    )
    await store.create_execution(execution)
    await store.append_events(execution.execution_id, [{"type": "started"}])
    return World(store, execution.execution_id)


Call = Callable[[World], Awaitable[Any]]


async def expect_refused(world: World, cases: list[tuple[str, Call]], words: str = "") -> None:
    """Each case raises a short ValidationError (mentioning ``words``) and writes nothing."""
    failures = []
    baseline = await dump(world.store)
    for name, call in cases:
        try:
            await call(world)
        except ValidationError as error:
            message = str(error)
            if len(message) > SHORT or "\n" in message:
                failures.append(f"{name}: message of {len(message)} chars: {message[:300]!r}")
            elif words not in message:
                failures.append(f"{name}: {words!r} not in {message!r}")
        except Exception as error:
            failures.append(f"{name}: {type(error).__name__} ({str(error)[:200]})")
        else:
            failures.append(f"{name}: accepted")
        if await dump(world.store) != baseline:
            failures.append(f"{name}: the database changed")
            baseline = await dump(world.store)
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------- item 1: nesting limit


def test_the_limit_is_below_what_the_models_decode() -> None:
    """The models' own validation (every read builds one) takes a value at the limit, inside
    an event kind too (the kind object is one level)."""
    execution = WorkflowExecution(
        workflow_id="w", workflow_version="1", current_state=nested(MAX_JSON_DEPTH)
    )
    assert execution.model_dump(mode="json")["current_state"] == nested(MAX_JSON_DEPTH)
    kind = NodeCompleted(
        node_id="n", output=nested(MAX_JSON_DEPTH - 1), state_patch={}, duration_ms=1
    )
    event = Event(execution_id=uuid.uuid4(), kind=kind)
    assert Event.model_validate_json(event.model_dump_json()) == event


async def test_json_at_the_nesting_limit_reads_back_on_every_path(
    store: StateStore, database_url: str
) -> None:
    at_limit = nested(MAX_JSON_DEPTH)
    inner = nested(MAX_JSON_DEPTH - 1)  # inside a kind object or a one-level wrapper
    await store.create_tenant(Tenant(id="deep", name="Deep", policy=at_limit))
    deep = store.for_tenant("deep")
    await deep.store_workflow(WorkflowDefinition(workflow_id="wf", version="1", ir=at_limit))
    created = WorkflowExecution(
        workflow_id="wf", workflow_version="1", initial_input=at_limit, current_state=at_limit
    )
    await deep.create_execution(created)
    updated = WorkflowExecution(workflow_id="wf", workflow_version="1")
    await deep.create_execution(updated)
    await deep.update_execution_current_state(updated.execution_id, at_limit)
    appended = WorkflowExecution(workflow_id="wf", workflow_version="1")
    await deep.create_execution(appended)
    # {"log": [value]}: two levels around the value
    await deep.patch_append_array(appended.execution_id, "log", nested(MAX_JSON_DEPTH - 2))
    eid = created.execution_id
    typed = NodeCompleted(node_id="n", output=inner, state_patch={}, duration_ms=1)
    await deep.append_event(Event(execution_id=eid, kind=typed))
    await deep.append_events(eid, [CustomEvent(type="c", v=inner), {"type": "d", "v": inner}])
    await deep.write_snapshot(Snapshot(execution_id=eid, at_sequence=3, state=at_limit))
    item = WorkItem(execution_id=eid, node_id="n", queue_type="q", payload=at_limit)
    await deep.enqueue_work_item(item)

    # Every read, scoped and unscoped, and the operator's listings.
    for reader in (store, deep):
        assert (await reader.get_tenant("deep")).policy == at_limit  # type: ignore[union-attr]
        definition = await reader.get_workflow("wf", "1")
        assert definition is not None and definition.ir == at_limit
        assert [d.ir for d in await reader.list_workflows("wf")] == [at_limit]
        got = await reader.get_execution(eid)
        assert got is not None and got.initial_input == at_limit and got.current_state == at_limit
        states = {e.execution_id: e.current_state for e in await reader.list_executions()}
        assert states[eid] == at_limit and states[updated.execution_id] == at_limit
        assert states[appended.execution_id] == {"log": [nested(MAX_JSON_DEPTH - 2)]}
        events = await reader.get_events(eid)
        assert isinstance(events[0].kind, NodeCompleted) and events[0].kind == typed
        assert [e.kind.to_json_dict()["v"] for e in events[1:]] == [inner, inner]
        assert [e.sequence async for e in reader.iter_events(eid)] == [1, 2, 3]
        snapshot = await reader.latest_snapshot(eid)
        assert snapshot is not None and snapshot.state == at_limit
        assert (await reader.get_work_item(item.id)).payload == at_limit  # type: ignore[union-attr]
    assert [t.policy for t in await store.list_tenants() if t.id == "deep"] == [at_limit]
    claimed = await store.claim_work_item("w", ["q"])
    assert claimed is not None and claimed.payload == at_limit
    await store.move_to_dead_letter(item.id, "poison")
    [dead] = await store.list_dead_letters()
    assert dead.item.payload == at_limit

    # The operator's command line lists them too.
    listed = await asyncio.to_thread(
        subprocess.run,
        [STATESTORE, "--url", database_url, "executions", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "STATESTORE_DATABASE_URL"},
    )
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 3


def too_deep_cases(extra: int) -> list[tuple[str, Call]]:
    """Every write path that takes JSON, with a value ``extra`` levels over the limit. Models
    are built unvalidated (``model_construct``), as a caller may hand them over."""
    over = nested(MAX_JSON_DEPTH + extra)
    inner = nested(MAX_JSON_DEPTH + extra - 1)  # the kind object adds one level

    def execution(**fields: Any) -> WorkflowExecution:
        return WorkflowExecution.model_construct(
            workflow_id="wf", workflow_version="1", **{"initial_input": {}, **fields}
        )

    return [
        ("update state", lambda w: w.store.update_execution_current_state(w.execution_id, over)),
        ("append value", lambda w: w.store.patch_append_array(w.execution_id, "log", over)),
        (
            "append result",  # the value fits, the state it makes does not
            lambda w: w.store.patch_append_array(
                w.execution_id, "log", nested(MAX_JSON_DEPTH + extra - 2)
            ),
        ),
        ("create current_state", lambda w: w.store.create_execution(execution(current_state=over))),
        (
            "create initial_input",
            lambda w: w.store.create_execution(execution(initial_input=over, current_state={})),
        ),
        (
            "workflow ir",
            lambda w: w.store.store_workflow(
                WorkflowDefinition.model_construct(workflow_id="new", version="1", ir=over)
            ),
        ),
        (
            "tenant policy",
            lambda w: w.store.create_tenant(Tenant.model_construct(id="t", name="t", policy=over)),
        ),
        (
            "tenant policy update",
            lambda w: w.store.update_tenant(
                Tenant.model_construct(id="default", name="d", policy=over)
            ),
        ),
        (
            "snapshot state",
            lambda w: w.store.write_snapshot(
                Snapshot.model_construct(execution_id=w.execution_id, at_sequence=1, state=over)
            ),
        ),
        (
            "work item payload",
            lambda w: w.store.enqueue_work_item(
                WorkItem.model_construct(
                    execution_id=w.execution_id, node_id="n", queue_type="q", payload=over
                )
            ),
        ),
        (
            "custom kind",
            lambda w: w.store.append_event(
                Event(execution_id=w.execution_id, kind=CustomEvent(type="c", v=inner))
            ),
        ),
        (
            "typed kind",
            lambda w: w.store.append_event(
                Event(
                    execution_id=w.execution_id,
                    kind=NodeCompleted.model_construct(
                        node_id="n", output=inner, state_patch={}, duration_ms=1
                    ),
                )
            ),
        ),
        (
            "typed kind as a dict",
            lambda w: w.store.append_events(
                w.execution_id,
                [
                    {
                        "type": "node_completed",
                        "node_id": "n",
                        "output": inner,
                        "state_patch": {},
                        "duration_ms": 1,
                    }
                ],
            ),
        ),
        (
            "custom kind in a batch",
            lambda w: w.store.append_events(
                w.execution_id, [{"type": "c"}, {"type": "c", "v": inner}]
            ),
        ),
    ]


@pytest.mark.parametrize("extra", [1, 200, 20_000], ids=["limit+1", "limit+200", "limit+20000"])
async def test_json_deeper_than_the_limit_is_refused_on_every_path(
    store: StateStore, extra: int
) -> None:
    world = await prepare(store)
    await expect_refused(world, too_deep_cases(extra), words=f"{MAX_JSON_DEPTH}")
    scoped = World(store.for_tenant("default"), world.execution_id)
    cases = [c for c in too_deep_cases(extra) if "tenant" not in c[0]]
    await expect_refused(scoped, cases, words=f"{MAX_JSON_DEPTH}")
    # Whatever one tenant tried, every reader still works.
    assert len(await store.list_executions()) == 1
    assert (await store.get_execution(world.execution_id)) is not None


# ---------------------------------------------------------------- item 2: exact round trips

TRICKY: list[Any] = [
    1e16,
    -0.0,
    0.0,
    1.5,
    0.1,
    1.0,
    1e300,
    -1e-7,
    5e-324,
    1.7976931348623157e308,
    2**63,
    -(2**63) - 1,
    10**30,
    0,
    -0,
    True,
    None,
    "",
    'é😀\t"\\',
    [],
    {},
    {"b": 1, "a": 2, "aa": 3, "": 0, "B": [1e16, -0.0]},
    {"z": {"y": 1, "x": {"w": -0.0, "v": 2.0, "u": 100000000000000000000.0}}},
]
ONE_DOCUMENT = {"values": TRICKY, "keys": {"b": 1, "a": 2, "c": {"d": 1, "ab": 2}}}


async def write_and_read_everywhere(store: StateStore, value: Any) -> dict[str, Any]:
    """Write ``value`` through every JSON path; what each path reads back."""
    wrapper = {"value": value}  # kinds and the appended array need an object around it
    tenant_id = f"t{uuid.uuid4().hex[:8]}"
    await store.create_tenant(Tenant(id=tenant_id, name="t", policy=value))
    workflow_id = f"wf{uuid.uuid4().hex[:8]}"
    await store.store_workflow(WorkflowDefinition(workflow_id=workflow_id, version="1", ir=value))
    run = WorkflowExecution(
        workflow_id=workflow_id, workflow_version="1", initial_input=value, current_state=value
    )
    await store.create_execution(run)
    eid = run.execution_id
    read: dict[str, Any] = {}
    got = await store.get_execution(eid)
    assert got is not None
    read["initial_input"], read["created state"] = got.initial_input, got.current_state
    await store.update_execution_current_state(eid, value)
    read["updated state"] = (await store.get_execution(eid)).current_state  # type: ignore[union-attr]
    listed = [e for e in await store.list_executions(limit=1000) if e.execution_id == eid]
    read["listed state"] = listed[0].current_state
    await store.update_execution_current_state(eid, {})
    await store.patch_append_array(eid, "log", value)
    read["appended"] = (await store.get_execution(eid)).current_state["log"][0]  # type: ignore[index,union-attr]
    await store.append_event(Event(execution_id=eid, kind=CustomEvent(type="c", **wrapper)))
    await store.append_events(
        eid,
        [
            {"type": "d", **wrapper},
            NodeCompleted(node_id="n", output=value, state_patch=value, duration_ms=1),
        ],
    )
    custom, batched, typed = await store.get_events(eid)
    read["custom kind"] = custom.kind.to_json_dict()["value"]
    read["dict kind"] = batched.kind.to_json_dict()["value"]
    assert isinstance(typed.kind, NodeCompleted)
    read["typed kind"] = typed.kind.output
    await store.write_snapshot(Snapshot(execution_id=eid, at_sequence=3, state=value))
    read["snapshot"] = (await store.latest_snapshot(eid)).state  # type: ignore[union-attr]
    item = WorkItem(execution_id=eid, node_id="n", queue_type="q", payload=value)
    await store.enqueue_work_item(item)
    read["work item"] = (await store.get_work_item(item.id)).payload  # type: ignore[union-attr]
    claimed = await store.claim_work_item("w", ["q"])
    assert claimed is not None
    read["claimed"] = claimed.payload
    await store.complete_work_item(claimed.id)
    read["ir"] = (await store.get_workflow(workflow_id, "1")).ir  # type: ignore[union-attr]
    read["policy"] = (await store.get_tenant(tenant_id)).policy  # type: ignore[union-attr]
    listed_tenants = [t.policy for t in await store.list_tenants() if t.id == tenant_id]
    read["listed policy"] = listed_tenants[0]
    return read


async def test_json_round_trips_exactly_on_every_path(store: StateStore) -> None:
    wrong = []
    for value in [ONE_DOCUMENT, *TRICKY]:
        for path, got in (await write_and_read_everywhere(store, value)).items():
            if exact(got) != exact(value):
                wrong.append(f"{path}: wrote {exact(value)[:120]}, read {exact(got)[:120]}")
    assert not wrong, "\n".join(wrong)


async def column_storage(store: StateStore) -> list[tuple[str, str]]:
    """(column type, SQLite storage class or PostgreSQL ``json_typeof``) of each stored
    ``current_state``."""

    def read(connection: Any) -> list[tuple[str, str]]:
        if store.dialect == "sqlite":
            declared = {
                row[1]: row[2]
                for row in connection.exec_driver_sql("PRAGMA table_info(workflow_executions)")
            }["current_state"]
            query = "SELECT typeof(current_state) FROM workflow_executions"
        else:
            declared = connection.exec_driver_sql(
                "SELECT data_type FROM information_schema.columns"
                " WHERE table_name = 'workflow_executions' AND column_name = 'current_state'"
            ).scalar_one()
            query = "SELECT json_typeof(current_state::json) FROM workflow_executions"
        return [(str(declared).lower(), row[0]) for row in connection.exec_driver_sql(query)]

    async with store.engine.connect() as connection:
        return await connection.run_sync(read)


async def test_upgrade_keeps_every_json_value_of_a_populated_database(store: StateStore) -> None:
    """Revision 0002 (jsonb → json, SQLite JSON → TEXT) on rows written under 0001: every
    value is still there and equal; what 0001 had already changed stays changed (1e16 as an
    int, -0.0 as 0), new writes are exact."""
    values = [1.5, 2**63, 10**20, 7, -0.0, 1e16, "s", None, True, {"b": 1, "a": [1e16, -0.0]}]
    ids = []
    await store.store_workflow(WorkflowDefinition(workflow_id="wf", version="1", ir=values))
    for value in values:
        run = WorkflowExecution(workflow_id="wf", workflow_version="1", current_state=value)
        await store.create_execution(run)
        ids.append(run.execution_id)
    await store.downgrade("0001")  # the rows now sit in 0001's columns, converted by them
    old = await column_storage(store)
    if store.dialect == "sqlite":
        assert {declared for declared, _ in old} == {"json"}
        assert {"real", "integer", "text"} <= {storage for _, storage in old}
    else:
        assert {declared for declared, _ in old} == {"jsonb"}

    await store.migrate()
    new = await column_storage(store)
    assert {declared for declared, _ in new} == {"text" if store.dialect == "sqlite" else "json"}
    if store.dialect == "sqlite":
        assert {storage for _, storage in new} == {"text"}
    for execution_id, value in zip(ids, values, strict=True):
        got = await store.get_execution(execution_id)
        assert got is not None and got.current_state == value
    assert (await store.get_workflow("wf", "1")).ir == values  # type: ignore[union-attr]
    await store.update_execution_current_state(ids[0], values)
    got = await store.get_execution(ids[0])
    assert got is not None and exact(got.current_state) == exact(values)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(
                st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=6
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=16,
)


@pytest.fixture
def loop_and_store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A store on its own event loop, for hypothesis (which drives sync tests)."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'roundtrip.db'}"
    else:
        from conftest import reset_pg

        url = str(request.getfixturevalue("pg_database"))
        asyncio.run(reset_pg(url))
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(StateStore.open(url))
    yield loop, store
    loop.run_until_complete(store.close())
    loop.close()


def test_arbitrary_json_round_trips_exactly(loop_and_store: Any) -> None:
    loop, store = loop_and_store

    @settings(
        max_examples=int(os.environ.get("STATESTORE_FUZZ_EXAMPLES", "25")),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(value=json_values)
    def round_trip(value: Any) -> None:
        read = loop.run_until_complete(write_and_read_everywhere(store, value))
        for path, got in read.items():
            assert exact(got) == exact(value), path

    round_trip()


# ---------------------------------------------------------------- item 3: event kinds


class Priced(BaseEventKind):
    """An engine's own kind with a field JSON cannot hold exactly."""

    type: Literal["priced"] = "priced"
    amount: Decimal


class Stamped(pydantic.BaseModel):
    at: datetime


def kind_cases() -> list[tuple[str, Any]]:
    aware = datetime(2024, 5, 1, tzinfo=UTC)
    return [
        ("nested 300 deep", CustomEvent(type="c", v=nested(300))),
        ("surrogate in a nested key", CustomEvent(type="c", v={"a": [{"x\ud800": 1}]})),
        ("surrogate key at the top", {"type": "c", "\ud800": 1}),
        ("bytes", CustomEvent(type="c", v=b"ab")),
        ("non-UTF-8 bytes", CustomEvent(type="c", v={"b": b"\xff"})),
        ("Decimal", CustomEvent(type="c", v=Decimal("1.10"))),
        ("set", CustomEvent(type="c", v={1, 2})),
        ("frozenset", CustomEvent(type="c", v=[frozenset({"a"})])),
        ("datetime", CustomEvent(type="c", v=aware)),
        ("date", CustomEvent(type="c", v={"d": date(2024, 5, 1)})),
        ("UUID", CustomEvent(type="c", v=uuid.uuid4())),
        ("a model holding a datetime", CustomEvent(type="c", v=Stamped(at=aware))),
        ("a declared Decimal field", Priced(amount=Decimal("1.10"))),
        (
            "an extra field of a typed kind",
            NodeCompleted(node_id="n", output=1, state_patch={}, duration_ms=1, at=aware),
        ),
        ("a dict kind holding a Decimal", {"type": "c", "v": Decimal("1.10")}),
        ("a dict kind holding a set", {"type": "c", "v": {"a": {1}}}),
    ]


async def test_event_kinds_that_json_would_change_are_refused(store: StateStore) -> None:
    world = await prepare(store)
    cases: list[tuple[str, Call]] = []
    for name, kind in kind_cases():
        if isinstance(kind, BaseEventKind):
            cases.append(
                (
                    f"append_event: {name}",
                    lambda w, k=kind: w.store.append_event(
                        Event(execution_id=w.execution_id, kind=k)
                    ),
                )
            )
        cases.append(
            (
                f"append_events: {name}",
                lambda w, k=kind: w.store.append_events(w.execution_id, [{"type": "ok"}, k]),
            )
        )
    await expect_refused(world, cases)


async def test_event_kinds_with_json_values_and_typed_fields_are_stored_exactly(
    store: StateStore,
) -> None:
    world = await prepare(store)
    fire_at = datetime(2024, 5, 1, 7, 0, 0, 123456, tzinfo=timezone(timedelta(hours=-5)))
    kinds = [
        TimerCreated(node_id="t", fire_at=fire_at),
        CustomEvent(type="c", v={"n": [1, 1.5, -0.0, 1e16, None, True, "s"]}, w=2**70),
    ]
    await store.append_events(world.execution_id, kinds)
    _, timer, custom = await store.get_events(world.execution_id)
    assert isinstance(timer.kind, TimerCreated) and timer.kind.fire_at == fire_at
    assert exact(custom.kind.to_json_dict()) == exact(kinds[1].to_json_dict())


# ---------------------------------------------------------------- item 4: datetimes

EAST = timezone(timedelta(hours=5))
WEST = timezone(timedelta(hours=-5))
BEFORE_YEAR_1 = datetime(1, 1, 1, tzinfo=EAST)  # 0000-12-31 19:00 UTC
AFTER_YEAR_9999 = datetime(9999, 12, 31, 23, 0, tzinfo=WEST)  # 10000-01-01 04:00 UTC


@pytest.mark.parametrize("value", [BEFORE_YEAR_1, AFTER_YEAR_9999], ids=["year-1", "year-10000"])
def test_a_model_refuses_a_datetime_outside_utc_range(value: datetime) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        WorkItem(execution_id=uuid.uuid4(), node_id="n", queue_type="q", available_at=value)
    assert "UTC" in str(info.value)


@pytest.mark.parametrize("value", [BEFORE_YEAR_1, AFTER_YEAR_9999], ids=["year-1", "year-10000"])
async def test_datetimes_outside_utc_range_are_refused_before_writing(
    store: StateStore, value: datetime
) -> None:
    world = await prepare(store)

    def item(w: World) -> WorkItem:
        return WorkItem(execution_id=w.execution_id, node_id="n", queue_type="q")

    cases: list[tuple[str, Call]] = [
        (
            "work item available_at",
            lambda w: w.store.enqueue_work_item(changed(item(w), available_at=value)),
        ),
        (
            "work item available_at in a dict",
            lambda w: w.store.enqueue_work_item(
                {
                    "execution_id": w.execution_id,
                    "node_id": "n",
                    "queue_type": "q",
                    "available_at": value,
                }  # type: ignore[arg-type]
            ),
        ),
        (
            "work item created_at",
            lambda w: w.store.enqueue_work_item(changed(item(w), created_at=value)),
        ),
        (
            "work item lease_expires_at",
            lambda w: w.store.enqueue_work_item(changed(item(w), lease_expires_at=value)),
        ),
        (
            "execution started_at",
            lambda w: w.store.create_execution(
                changed(WorkflowExecution(workflow_id="wf", workflow_version="1"), started_at=value)
            ),
        ),
        (
            "execution completed_at",
            lambda w: w.store.create_execution(
                changed(
                    WorkflowExecution(workflow_id="wf", workflow_version="1"), completed_at=value
                )
            ),
        ),
        (
            "event created_at",
            lambda w: w.store.append_event(
                changed(Event(execution_id=w.execution_id, kind={"type": "c"}), created_at=value)
            ),
        ),
        (
            "snapshot created_at",
            lambda w: w.store.write_snapshot(
                changed(
                    Snapshot(execution_id=w.execution_id, at_sequence=1, state={}),
                    created_at=value,
                )
            ),
        ),
        (
            "workflow created_at",
            lambda w: w.store.store_workflow(
                changed(WorkflowDefinition(workflow_id="x", version="1", ir={}), created_at=value)
            ),
        ),
        (
            "tenant updated_at",
            lambda w: w.store.create_tenant(changed(Tenant(id="t", name="t"), updated_at=value)),
        ),
    ]
    await expect_refused(world, cases, words="UTC")


async def test_datetimes_at_the_edges_of_utc_range_are_stored(store: StateStore) -> None:
    world = await prepare(store)
    first = datetime(1, 1, 1, tzinfo=UTC)
    last = datetime(9999, 12, 31, 18, 59, 59, 999999, tzinfo=WEST)  # 23:59:59.999999 UTC
    for when in (first, last):
        item = WorkItem(execution_id=world.execution_id, node_id="n", queue_type="q")
        item.available_at = when
        await store.enqueue_work_item(item)
        got = await store.get_work_item(item.id)
        assert got is not None and got.available_at == when
    claimed = await store.claim_work_item("w", ["q"])
    assert claimed is not None and claimed.available_at == first
