"""What tracing costs: append_event with the OpenTelemetry SDK configured against the same
store with none (no provider configured: the store skips its hook, as in every other
cell).

``otel``: a ``TracerProvider`` whose ``BatchSpanProcessor`` exports to nowhere and an SDK
``MeterProvider``, so every call makes a span and records its duration as a real
deployment would, minus the network. The two contenders alternate in rounds like any cell;
each switches the store's instruments before its runs (statestore/telemetry.py).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from cells import OTEL, Seeded, StoreSide, appender
from harness import Cell, Contender, measure

from statestore import StateStore, telemetry


def available() -> bool:
    """Whether the otel extra and the SDK are installed."""
    return telemetry.ENABLED and importlib.util.find_spec("opentelemetry.sdk") is not None


async def otel_cell(backend: str, store: StateStore, seeded: Seeded, duration: float) -> Cell:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Discard(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider, meter_provider = TracerProvider(), MeterProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Discard()))
    telemetry.use_providers(tracer_provider, meter_provider)
    traced = telemetry._instruments
    telemetry.use_providers(None, None)
    plain = telemetry._instruments

    def using(instruments: Any) -> Callable[[float], Awaitable[None]]:
        async def switch(_seconds: float) -> None:
            telemetry._instruments = instruments

        return switch

    contenders = [
        Contender(
            "store", async_op=appender(StoreSide(store), seeded.append_ids), prepare=using(plain)
        ),
        Contender(
            "otel", async_op=appender(StoreSide(store), seeded.append_ids), prepare=using(traced)
        ),
    ]
    try:
        return await measure(backend, OTEL, contenders, duration)
    finally:
        telemetry._instruments = plain
        tracer_provider.shutdown()
        meter_provider.shutdown()
