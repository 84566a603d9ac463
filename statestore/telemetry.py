"""OpenTelemetry spans and metrics of every store call, through ``opentelemetry-api`` only
(the ``otel`` extra). Without it installed nothing here imports it and every call goes to the
runner as before; with it installed and neither a tracer nor a meter provider configured,
a call only checks that (:func:`observed`) and goes to the runner as well.

One hook: :meth:`statestore.db.backend.Backend.write` and ``read`` (the one way every store
operation reaches a runner) hand each operation to :func:`traced` while a provider is
configured, which makes

- a span ``statestore.<method>``, named after the public :class:`~statestore.StateStore`
  method that made the call (``append_event``, ``claim_work_items``, ``run`` …), kind CLIENT,
  with ``db.system`` (``sqlite`` / ``postgresql``), ``statestore.method``,
  ``statestore.tenant`` (the view's tenant, ``*`` for the unscoped store),
  ``statestore.execution_id`` where the call names one, ``statestore.transaction``
  (``read`` / ``write``) and ``statestore.outcome`` (``ok`` / ``error``; on an error also
  ``error.type``, the exception recorded and the span's status ERROR);
- a point in the histogram ``statestore.operation.duration`` (seconds) with the method,
  ``db.system``, outcome and ``error.type`` (no tenant or id: bounded cardinality).

A public call that is several transactions (``reclaim_expired_leases`` in batches,
``iter_events`` a page at a time, ``validate_token`` when it records a use) makes one span
per transaction, each with the call's name.

The queue depth per queue type and status is the observable gauge ``statestore.queue.depth``,
fed by :func:`watch_queue_depth`, which a process runs beside its workers.

Providers: the global ones (``opentelemetry.trace.set_tracer_provider`` …) unless
:func:`use_providers` names others (tests, or an application that keeps its own).
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any, TypeVar

from statestore.db.runner import Call, Operation
from statestore.db.tenancy import Scope

if TYPE_CHECKING:
    from statestore.store import StateStore

try:
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import trace as otel_trace
    from opentelemetry.metrics import _internal as _metrics_globals
    from opentelemetry.metrics._internal import _ProxyMeterProvider
except ImportError:  # the otel extra is not installed: nothing is traced
    otel_metrics = None  # type: ignore[assignment]
    otel_trace = None  # type: ignore[assignment]
    _metrics_globals = None  # type: ignore[assignment]
    _ProxyMeterProvider = None  # type: ignore[assignment,misc]

ENABLED = otel_trace is not None
"""Whether ``opentelemetry-api`` is installed (then every store call is traced and timed
while a provider is configured: :func:`observed`)."""

INSTRUMENTATION = "statestore"
SPAN_PREFIX = "statestore."
DURATION = "statestore.operation.duration"
QUEUE_DEPTH = "statestore.queue.depth"

T = TypeVar("T")
_MISSING: Any = object()
_SEARCH_DEPTH = 8


class _Instruments:
    """The tracer, the duration histogram and the queue-depth gauge of one pair of
    providers (the global ones by default)."""

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        from statestore import __version__

        assert otel_trace is not None and otel_metrics is not None
        self.tracer = otel_trace.get_tracer(INSTRUMENTATION, __version__, tracer_provider)
        meter = otel_metrics.get_meter(INSTRUMENTATION, __version__, meter_provider)
        self.duration = meter.create_histogram(
            DURATION, unit="s", description="Duration of statestore calls, per transaction"
        )
        self.own_tracer_provider = tracer_provider is not None
        self.own_meter_provider = meter_provider is not None
        self.queue_depth = meter.create_observable_gauge(
            QUEUE_DEPTH,
            callbacks=[_observe_queue_depth],
            unit="{item}",
            description="Work items per queue type and status (see watch_queue_depth)",
        )

    def tracing(self) -> bool:
        """Whether a tracer provider is configured (not the API's proxy or no-op one)."""
        assert otel_trace is not None
        return self.own_tracer_provider or _configured(
            otel_trace,
            "_TRACER_PROVIDER",
            "get_tracer_provider",
            otel_trace.ProxyTracerProvider | otel_trace.NoOpTracerProvider,
        )

    def metering(self) -> bool:
        """Whether a meter provider is configured (not the API's proxy or no-op one)."""
        assert otel_metrics is not None
        return self.own_meter_provider or _configured(
            _metrics_globals,
            "_METER_PROVIDER",
            "get_meter_provider",
            _ProxyMeterProvider | otel_metrics.NoOpMeterProvider,
        )

    def record(self, started: float, metric: dict[str, Any], error: BaseException | None) -> None:
        """One duration, with the call's outcome."""
        if error is None:
            attributes = {**metric, "statestore.outcome": "ok"}
        else:
            attributes = {
                **metric,
                "statestore.outcome": "error",
                "error.type": type(error).__name__,
            }
        self.duration.record(time.perf_counter() - started, attributes)


def _configured(module: Any, variable: str, getter: str, placeholders: Any) -> bool:
    """Whether the API holds a global provider other than its ``placeholders`` (proxy and
    no-op). Read from the API's own variable where it has one (``None`` while none is set):
    its public getter reads the environment at every call (for ``OTEL_PYTHON_*_PROVIDER``,
    which it already followed when the instruments were made), a few microseconds per store
    call."""
    held = hasattr(module, variable)
    provider = getattr(module, variable) if held else getattr(module, getter)()
    return provider is not None and not isinstance(provider, placeholders)


_instruments: _Instruments | None = None


def _current() -> _Instruments:
    global _instruments
    if _instruments is None:
        _instruments = _Instruments()
    return _instruments


def observed() -> bool:
    """Whether a store call is worth timing: a tracer or a meter provider is configured.
    Asked at every call, so a provider configured later is used from the next call on;
    without one, a call skips the hook (its no-op span and histogram would only discard
    what it measured, at ~15-20 µs per call)."""
    instruments = _current()
    return instruments.tracing() or instruments.metering()


def use_providers(tracer_provider: Any = None, meter_provider: Any = None) -> None:
    """Trace with these providers instead of the global ones (``None``: the global one).
    Takes effect for the calls that start afterwards."""
    if not ENABLED:
        raise RuntimeError("opentelemetry-api is not installed: pip install 'statestore[otel]'")
    global _instruments
    _instruments = _Instruments(tracer_provider, meter_provider)


# ---------------------------------------------------------------- which call is this


_public_codes: dict[CodeType, str] | None = None


def _facade_methods() -> dict[CodeType, str]:
    """The code object of every public method of StateStore (and its subclasses) → its
    name: a frame running one of them is the public call an operation belongs to."""
    global _public_codes
    if _public_codes is None:
        from statestore.store import StateStore

        codes: dict[CodeType, str] = {}
        for cls in (StateStore, *StateStore.__subclasses__()):
            for name, value in vars(cls).items():
                function = getattr(value, "__func__", value)
                code = getattr(function, "__code__", None)
                if not name.startswith("_") and isinstance(code, CodeType):
                    codes[code] = name
        _public_codes = codes
    return _public_codes


def _public_method(frame: FrameType | None, op: Operation[Any]) -> str:
    """The public store method among the callers of ``frame``, else the operation's name."""
    codes = _facade_methods()
    for _ in range(_SEARCH_DEPTH):
        if frame is None:
            break
        name = codes.get(frame.f_code)
        if name is not None:
            return name
        frame = frame.f_back
    method = op.method if isinstance(op, Call) else op
    return str(getattr(method, "__name__", "operation"))


_execution_arguments: dict[Any, int | None] = {}


def _execution_argument(function: Any) -> int | None:
    """Where a repository method takes ``execution_id`` among its arguments after the
    session, or ``None``."""
    index = _execution_arguments.get(function, _MISSING)
    if index is _MISSING:
        try:
            names = list(inspect.signature(function).parameters)
        except (TypeError, ValueError):
            names = []
        names = [n for n in names if n not in ("self", "session")]
        index = names.index("execution_id") if "execution_id" in names else None
        _execution_arguments[function] = index
    return index  # type: ignore[no-any-return]


def _execution_id(op: Operation[Any]) -> str | None:
    """The execution a call is about: its ``execution_id`` argument, or that of the model
    it was given (an event, snapshot, work item or execution)."""
    if not isinstance(op, Call):
        return None
    index = _execution_argument(getattr(op.method, "__func__", op.method))
    if index is not None and index < len(op.args):
        value = op.args[index]
        return str(value)[:64]
    for argument in op.args[:1]:
        value = getattr(argument, "execution_id", None)
        if isinstance(value, uuid.UUID):
            return str(value)
    return None


# ---------------------------------------------------------------- the hook


async def traced(
    run: Callable[[Operation[T], Scope], Awaitable[T]],
    op: Operation[T],
    scope: Scope,
    *,
    db_system: str,
    write: bool,
) -> T:
    """``await run(op, scope)`` timed, inside a span of the public call that made it (no
    span while no tracer provider is configured: the API's proxy would only discard it)."""
    instruments = _current()
    method = _public_method(sys._getframe(1), op)
    metric = {"statestore.method": method, "db.system": db_system}
    started = time.perf_counter()
    if not instruments.tracing():
        try:
            result = await run(op, scope)
        except BaseException as error:
            instruments.record(started, metric, error)
            raise
        instruments.record(started, metric, None)
        return result
    attributes: dict[str, Any] = {
        "db.system": db_system,
        "statestore.method": method,
        "statestore.tenant": scope.tenant_id or "*",
        "statestore.transaction": "write" if write else "read",
    }
    execution_id = _execution_id(op)
    if execution_id is not None:
        attributes["statestore.execution_id"] = execution_id
    with instruments.tracer.start_as_current_span(
        SPAN_PREFIX + method,
        kind=otel_trace.SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            result = await run(op, scope)
        except BaseException as error:
            error_type = type(error).__name__
            span.set_attribute("statestore.outcome", "error")
            span.set_attribute("error.type", error_type)
            span.record_exception(error)
            span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR, error_type))
            instruments.record(started, metric, error)
            raise
        span.set_attribute("statestore.outcome", "ok")
        instruments.record(started, metric, None)
        return result


# ---------------------------------------------------------------- queue depth


_depths: dict[tuple[str, str], int] = {}


def _observe_queue_depth(options: Any) -> Iterable[Any]:
    assert otel_metrics is not None
    return [
        otel_metrics.Observation(count, {"statestore.queue_type": queue, "statestore.status": st})
        for (queue, st), count in list(_depths.items())
    ]


async def refresh_queue_depth(store: StateStore) -> None:
    """Read the queue's counts (``queue_stats``, one GROUP BY over the work items) into
    the ``statestore.queue.depth`` gauge."""
    stats = await store.queue_stats()
    _depths.clear()
    for queue, counts in stats.items():
        for status, count in counts.items():
            _depths[(queue, status.value)] = count


async def watch_queue_depth(store: StateStore, every: float | timedelta = 30.0) -> None:
    """Keep the ``statestore.queue.depth`` gauge current: :func:`refresh_queue_depth`
    every ``every`` seconds until cancelled (``asyncio.create_task(...)`` beside your
    workers; the unscoped store counts every tenant, a tenant's view its own)."""
    if not ENABLED:
        raise RuntimeError("opentelemetry-api is not installed: pip install 'statestore[otel]'")
    _current()  # the gauge exists from now on
    interval = every.total_seconds() if isinstance(every, timedelta) else float(every)
    if not interval > 0:
        raise ValueError("every must be a positive number of seconds")
    while True:
        await refresh_queue_depth(store)
        await asyncio.sleep(interval)
