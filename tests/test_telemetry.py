"""OpenTelemetry: a span and a duration per store call, read back with the SDK's in-memory
exporter and reader on both databases; the queue-depth gauge; nothing imported and
nothing changed without opentelemetry installed."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from statestore import (
    Event,
    NotFoundError,
    StateStore,
    Tenant,
    TokenRole,
    ValidationError,
    WorkflowExecution,
    WorkItem,
    telemetry,
)
from statestore.event_kinds import CustomEvent


class Telemetry:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def names(self) -> list[str]:
        return [span.name for span in self.spans()]

    def clear(self) -> None:
        self.exporter.clear()

    def points(self, metric_name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == metric_name
            for point in metric.data.data_points
        ]


@pytest.fixture
def otel() -> Iterator[Telemetry]:
    recorded = Telemetry()
    telemetry.use_providers(recorded.tracer_provider, recorded.meter_provider)
    try:
        yield recorded
    finally:
        telemetry.use_providers()  # back to the global (no-op) providers
        recorded.tracer_provider.shutdown()
        recorded.meter_provider.shutdown()


async def new_execution(store: StateStore) -> uuid.UUID:
    execution = WorkflowExecution(
        workflow_id="wf", workflow_version="1", tenant_id=store.tenant_id or "default"
    )
    await store.create_execution(execution)
    return execution.execution_id


async def test_one_span_per_call_named_after_the_public_method(
    store: StateStore, otel: Telemetry
) -> None:
    eid = await new_execution(store)
    await store.append_event(Event(execution_id=eid, kind=CustomEvent(type="a")))
    await store.append_events(eid, [CustomEvent(type="b"), CustomEvent(type="c")])
    assert len(await store.get_events(eid)) == 3
    await store.list_executions()
    await store.enqueue_work_item(WorkItem(execution_id=eid, node_id="n", queue_type="q"))
    [claimed] = await store.claim_work_items("w", ["q"], 5)
    await store.complete_work_item(claimed.id, worker_id="w", lease_fence=claimed.lease_fence)
    await store.run(lambda session: None, write=False)

    assert otel.names() == [
        "statestore.create_execution",
        "statestore.append_event",
        "statestore.append_events",
        "statestore.get_events",
        "statestore.list_executions",
        "statestore.enqueue_work_item",
        "statestore.claim_work_items",
        "statestore.complete_work_item",
        "statestore.run",
    ]
    for span in otel.spans():
        attributes = dict(span.attributes or {})
        assert span.kind == SpanKind.CLIENT
        assert attributes["db.system"] == store.dialect
        assert attributes["statestore.method"] == span.name.removeprefix("statestore.")
        assert attributes["statestore.tenant"] == "*"
        assert attributes["statestore.outcome"] == "ok"
        assert span.status.status_code == StatusCode.UNSET
    by_name = {span.name: dict(span.attributes or {}) for span in otel.spans()}
    for name in (
        "create_execution",
        "append_event",
        "append_events",
        "get_events",
        "enqueue_work_item",
    ):
        assert by_name[f"statestore.{name}"]["statestore.execution_id"] == str(eid), name
    assert "statestore.execution_id" not in by_name["statestore.list_executions"]
    assert by_name["statestore.append_event"]["statestore.transaction"] == "write"
    assert by_name["statestore.get_events"]["statestore.transaction"] == "read"


async def test_a_tenant_view_names_its_tenant(store: StateStore, otel: Telemetry) -> None:
    await store.create_tenant(Tenant(id="acme", name="Acme"))
    acme = store.for_tenant("acme")
    otel.clear()
    eid = await new_execution(acme)
    await acme.get_execution(eid)
    assert [dict(s.attributes or {})["statestore.tenant"] for s in otel.spans()] == [
        "acme",
        "acme",
    ]


async def test_a_failing_call_records_its_error(store: StateStore, otel: Telemetry) -> None:
    with pytest.raises(ValidationError):
        await store.get_execution("not-a-uuid")
    missing = uuid.uuid4()
    with pytest.raises(NotFoundError):
        await store.append_event(Event(execution_id=missing, kind=CustomEvent(type="x")))

    invalid, not_found = otel.spans()
    for span, error in ((invalid, "ValidationError"), (not_found, "NotFoundError")):
        attributes = dict(span.attributes or {})
        assert attributes["statestore.outcome"] == "error"
        assert attributes["error.type"] == error
        assert span.status.status_code == StatusCode.ERROR
        assert [event.name for event in span.events] == ["exception"]
    assert dict(not_found.attributes or {})["statestore.execution_id"] == str(missing)
    assert [p.attributes["error.type"] for p in otel.points(telemetry.DURATION)] == [
        "ValidationError",
        "NotFoundError",
    ]


async def test_durations_per_method(store: StateStore, otel: Telemetry) -> None:
    eid = await new_execution(store)
    for n in range(5):
        await store.append_event(Event(execution_id=eid, kind=CustomEvent(type="tick", n=n)))
    points = {
        p.attributes["statestore.method"]: p
        for p in otel.points(telemetry.DURATION)
        if p.attributes["statestore.outcome"] == "ok"
    }
    appended = points["append_event"]
    assert appended.count == 5 and appended.sum > 0
    assert appended.attributes == {
        "statestore.method": "append_event",
        "db.system": store.dialect,
        "statestore.outcome": "ok",
    }  # no tenant or id: the metric's cardinality stays bounded
    assert points["create_execution"].count == 1


async def test_either_provider_alone_is_served(store: StateStore) -> None:
    """Without a provider the hook is skipped; a meter provider alone still gets every
    call's duration, a tracer provider alone every call's span."""
    recorded = Telemetry()
    try:
        telemetry.use_providers()
        assert not telemetry.observed()  # the API's global no-op providers in this process
        telemetry.use_providers(meter_provider=recorded.meter_provider)
        assert telemetry.observed()
        eid = await new_execution(store)
        await store.get_execution(eid)
        assert recorded.names() == []
        durations = {
            p.attributes["statestore.method"]: p.count for p in recorded.points(telemetry.DURATION)
        }
        assert durations == {"create_execution": 1, "get_execution": 1}
        telemetry.use_providers(tracer_provider=recorded.tracer_provider)
        await store.get_execution(eid)
        assert recorded.names() == ["statestore.get_execution"]
    finally:
        telemetry.use_providers()
        recorded.tracer_provider.shutdown()
        recorded.meter_provider.shutdown()


async def test_a_call_of_several_transactions_names_each_after_the_call(
    store: StateStore, otel: Telemetry
) -> None:
    token, _ = await store.create_token("ci", TokenRole.VIEWER)
    otel.clear()
    assert (await store.validate_token(token)) is not None
    eid = await new_execution(store)
    await store.append_events(eid, [CustomEvent(type="e", n=n) for n in range(5)])
    otel.clear()
    seen = [event.sequence async for event in store.iter_events(eid, batch=2)]
    assert seen == [1, 2, 3, 4, 5]
    assert otel.names() == ["statestore.iter_events"] * 3
    assert await store.reclaim_expired_leases() is not None
    assert otel.names()[-1] == "statestore.reclaim_expired_leases"
    for span in otel.spans():
        assert token not in str(dict(span.attributes or {}))  # secrets never recorded


async def test_the_queue_depth_gauge(store: StateStore, otel: Telemetry) -> None:
    eid = await new_execution(store)
    for node in ("a", "b"):
        await store.enqueue_work_item(WorkItem(execution_id=eid, node_id=node, queue_type="q"))
    await store.enqueue_work_item(WorkItem(execution_id=eid, node_id="c", queue_type="other"))
    await store.claim_work_item("w", ["other"])
    await telemetry.refresh_queue_depth(store)
    depth = {
        (p.attributes["statestore.queue_type"], p.attributes["statestore.status"]): p.value
        for p in otel.points(telemetry.QUEUE_DEPTH)
    }
    assert depth[("q", "pending")] == 2
    assert depth[("other", "claimed")] == 1
    assert depth[("other", "pending")] == 0


def test_a_global_provider_set_later_is_used_from_the_next_call(tmp_path: Any) -> None:
    """The global providers (the API's own, in a process of its own) are looked up at every
    call: a store that made calls before any was configured traces and times the calls
    made after."""
    code = f"""
import asyncio
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from statestore import StateStore, WorkflowExecution, telemetry

async def main():
    async with await StateStore.open("sqlite:///{tmp_path / "late.db"}") as store:
        execution = WorkflowExecution(workflow_id="wf", workflow_version="1")
        await store.create_execution(execution)
        assert not telemetry.observed()
        exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(tracer_provider)
        await store.get_execution(execution.execution_id)
        assert [s.name for s in exporter.get_finished_spans()] == ["statestore.get_execution"]
        trace.get_tracer_provider().shutdown()
    async with await StateStore.open("sqlite:///{tmp_path / "late2.db"}") as store:
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        await store.create_execution(WorkflowExecution(workflow_id="wf", workflow_version="1"))
        data = reader.get_metrics_data()
        names = [m.name for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics]
        assert telemetry.DURATION in names, names

asyncio.run(main())
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_without_opentelemetry_nothing_is_imported(tmp_path: Any) -> None:
    """With the package missing (an import of it fails), a store works and never imports
    any of it."""
    code = f"""
import asyncio, sys
sys.modules["opentelemetry"] = None  # as if not installed: importing it fails
from statestore import StateStore, WorkflowExecution, telemetry

async def main():
    async with await StateStore.open("sqlite:///{tmp_path / "plain.db"}") as store:
        execution = WorkflowExecution(workflow_id="wf", workflow_version="1")
        await store.create_execution(execution)
        assert (await store.get_execution(execution.execution_id)) is not None

asyncio.run(main())
assert telemetry.ENABLED is False
loaded = [m for m in sys.modules if m.startswith("opentelemetry.")]
assert not loaded, loaded
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr
