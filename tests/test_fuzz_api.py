"""Fuzzing the public API with hypothesis: every public method of the facade and of a scoped
view, fed arbitrary values. Only StateStoreError subclasses (or the contract's None / empty
results) may come out, bad input is a ValidationError (never a DatabaseError), and the
database stays consistent."""

from __future__ import annotations

import asyncio
import inspect
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statestore import (
    DatabaseError,
    Event,
    Snapshot,
    StateStore,
    StateStoreError,
    Tenant,
    TenantLimits,
    WorkflowDefinition,
    WorkflowExecution,
    WorkItem,
)

EXAMPLES = int(os.environ.get("STATESTORE_FUZZ_EXAMPLES", "100"))
# Loops that run until cancelled, and schema changes, are not fuzzed.
SKIPPED = {
    "run",
    "run_reclaimer",
    "run_maintenance",
    "close",
    "migrate",
    "downgrade",
    "connect",
    "open",
}
# A claim may wait as long as it is told to: keep the fuzzer's waits short (a long valid
# wait would only time the fuzzer out; waits themselves are tested in test_wait.py).
BOUNDED = {"wait": st.none() | st.floats(-1, 0.05) | st.timedeltas(max_value=timedelta(0))}
METHODS = sorted(
    name
    for name, member in inspect.getmembers(StateStore)
    if not name.startswith("_") and name not in SKIPPED and inspect.iscoroutinefunction(member)
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(), children, max_size=4)
    ),
    max_leaves=12,
)
texts = st.text(max_size=40) | st.sampled_from(["", "\x00", "\ud800", "x" * 300, "default"])
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | texts
    | st.binary(max_size=10)
    | st.uuids()
    | st.datetimes()
    | st.datetimes(timezones=st.just(UTC))
    | st.timedeltas()
)


def deep_json(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"k": [value]}
    return value


def models(known: dict[str, Any]) -> st.SearchStrategy[Any]:
    ids = st.sampled_from([known["execution_id"], uuid.uuid4()])
    return st.one_of(
        st.builds(
            WorkflowDefinition.model_construct, workflow_id=texts, version=texts, ir=json_values
        ),
        st.builds(
            WorkflowExecution.model_construct,
            workflow_id=texts,
            workflow_version=texts,
            current_state=json_values,
            initial_input=json_values,
        ),
        st.builds(Event.model_construct, execution_id=ids, kind=st.just({"type": "x"})),
        st.builds(
            Snapshot.model_construct,
            execution_id=ids,
            at_sequence=st.integers(-5, 2**70),
            state=json_values,
        ),
        st.builds(
            WorkItem.model_construct,
            execution_id=ids,
            node_id=texts,
            queue_type=texts,
            payload=json_values,
            priority=st.integers(-(2**40), 2**40),
            max_attempts=st.integers(-3, 2**40),
        ),
        st.builds(
            Tenant.model_construct,
            id=texts,
            name=texts,
            policy=json_values,
            limits=st.builds(
                TenantLimits.model_construct, max_workflows=st.integers(-5, 5) | st.none()
            ),
        ),
        st.builds(deep_json, st.just(300)),
    )


def typed_for(name: str, known: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of the right type for a parameter, to get past the first checks."""
    ids = st.sampled_from([known["execution_id"], known["item_id"], uuid.uuid4()])
    by_name: dict[str, st.SearchStrategy[Any]] = {
        "retry_in": st.timedeltas(),
        "expires_in": st.timedeltas(),
        "every": st.timedeltas(),
        "limit": st.integers(-(2**70), 2**70),
        "offset": st.integers(-(2**70), 2**70),
        "since": st.integers(-(2**70), 2**70),
        "lease_fence": st.integers(-(2**70), 2**70),
        "expected_sequence": st.integers(-(2**70), 2**70),
        "queue_types": st.lists(texts, max_size=3),
        "kinds": st.lists(json_values | st.just({"type": "x"}), max_size=3),
        "status": st.sampled_from(["running", "completed", "bogus", "limit_exceeded"]),
        "role": st.sampled_from(["viewer", "root", ""]),
    }
    if name.endswith("_id") and name not in {"worker_id", "tenant_id", "workflow_id"}:
        return ids
    return by_name.get(name, texts)


def arguments(known: dict[str, Any]) -> st.SearchStrategy[Any]:
    valid_ids = st.sampled_from(
        [known["execution_id"], known["item_id"], str(known["execution_id"]), "default"]
    )
    return st.one_of(
        scalars,
        json_values,
        models(known),
        valid_ids,
        st.lists(scalars | models(known), max_size=3),
    )


@pytest.fixture
def fuzz_target(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A store with one execution and one claimed item, on its own event loop."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'fuzz.db'}"
    else:
        from conftest import reset_pg

        url = str(request.getfixturevalue("pg_database"))
        asyncio.run(reset_pg(url))
    loop = asyncio.new_event_loop()

    async def setup() -> tuple[StateStore, dict[str, Any]]:
        store = await StateStore.open(url, max_json_bytes=64 * 1024)
        execution = WorkflowExecution(workflow_id="wf", workflow_version="1")
        await store.create_execution(execution)
        item = WorkItem(execution_id=execution.execution_id, node_id="n", queue_type="q")
        await store.enqueue_work_item(item)
        return store, {"execution_id": execution.execution_id, "item_id": item.id}

    store, known = loop.run_until_complete(setup())
    yield loop, store, known
    loop.run_until_complete(store.close())
    loop.close()


@pytest.mark.parametrize("scoped", [False, True], ids=["unscoped", "scoped"])
def test_public_methods_raise_only_statestore_errors(fuzz_target: Any, scoped: bool) -> None:
    loop, base, known = fuzz_target
    store = base.for_tenant("default") if scoped else base
    seen: dict[str, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )
    @given(data=st.data())
    def call_anything(data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(METHODS), label="method")
        method = getattr(store, name)
        parameters = list(inspect.signature(method).parameters.values())
        args, kwargs = [], {}
        for parameter in parameters:
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            if parameter.default is not parameter.empty and data.draw(st.booleans()):
                continue
            anything = data.draw(st.booleans(), label="anything")
            strategy = arguments(known) if anything else typed_for(parameter.name, known)
            strategy = BOUNDED.get(parameter.name, strategy)
            value = data.draw(strategy, label=parameter.name)
            if parameter.kind is parameter.KEYWORD_ONLY:
                kwargs[parameter.name] = value
            else:
                args.append(value)
        try:
            loop.run_until_complete(asyncio.wait_for(method(*args, **kwargs), timeout=30))
            outcome = "ok"
        except StateStoreError as error:
            outcome = type(error).__name__
            # Bad input must be reported as such, never as a database failure.
            assert not isinstance(error, DatabaseError), (name, args, kwargs, error)
            assert "\n" not in str(error) or "\n" in repr(args) + repr(kwargs)
        seen[f"{name}:{outcome}"] = seen.get(f"{name}:{outcome}", 0) + 1

    call_anything()
    # still consistent: sequences gapless, the store answers normally
    events = loop.run_until_complete(base.get_events(known["execution_id"]))
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert loop.run_until_complete(base.get_tenant("default")) is not None
    assert sum(seen.values()) >= min(EXAMPLES, 50)
