"""OpenTelemetry traces of runs: off unless configured, and then one trace per run.

On when the standard variables ask for it (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, or ``OTEL_TRACES_EXPORTER`` = ``otlp`` and/or
``console``), unless ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``; it needs the
``otel`` extra. Off, each hook below checks one global and imports nothing of OpenTelemetry.

The spans of one run (docs/observability.md shows a real tree): ``kiln.submit`` (a child of the
``POST /workflows`` request span) stores its W3C traceparent with the run
(``workflows.trace_context``, written by the run's insert); the controller's ``kiln.dispatch``,
the worker's ``kiln.attempt`` (read by the claim) with its ``kiln.handler``, and
``kiln.record`` take it as their parent. SQL statements are spans (SQLAlchemy's cursor
events, see ``_instrument_engine``) only inside another span, so the polling of controllers
and workers makes no traces of its own.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from kiln.core.children import TaskSuspended
from kiln.core.execution import ClaimedTask, Dispatch, Outcome

if TYPE_CHECKING:
    import sqlalchemy as sa

log = logging.getLogger("kiln.tracing")
T = TypeVar("T")


class Database(Protocol):
    """What the hooks need of a ``Kiln`` (which imports this module)."""

    @property
    def engine(self) -> sa.Engine: ...

    def read(self, fn: Callable[[sa.Connection], T]) -> T: ...


K = TypeVar("K", bound=Database)
EXPORTERS = ("otlp", "console")

_lock = threading.Lock()
_checked = False  # the environment was read (or use() called)
_tracer: Any = None  # kiln's spans; None: tracing is off
_sql_tracer: Any = None  # what the SQLAlchemy instrumentation's spans come from
_provider: Any = None
_instrumented: weakref.WeakSet[sa.Engine] = weakref.WeakSet()


def _active() -> Any:
    """The tracer, or None while tracing is off; the environment is read on the first call."""
    if not _checked:
        with _lock:
            if not _checked:
                _configure_from_env()
    return _tracer


def enabled() -> bool:
    return _active() is not None


def _configure_from_env() -> None:
    global _checked
    try:
        _configure(os.environ)
    finally:
        _checked = True  # after the tracer is set: _active() reads it without the lock


def _configure(env: Mapping[str, str]) -> None:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [n for n in names if n]
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    if names == ["none"] or not (names or endpoint):
        return
    unknown = sorted(set(names) - {*EXPORTERS, "none"})
    if unknown:
        log.warning("OTEL_TRACES_EXPORTER: ignoring %s (Kiln exports otlp, console)", unknown)
    exporters = [n for n in names if n in EXPORTERS] if names else ["otlp"]
    if not exporters:
        return
    try:
        provider = _provider_from_env(exporters)
    except ImportError as exc:
        log.warning(
            "OpenTelemetry is configured but not installed (%s): pip install 'kiln[otel]'; "
            "tracing stays off",
            exc,
        )
        return
    from opentelemetry import trace

    # Spans a handler makes itself (trace.get_tracer(...)) then join its attempt's trace.
    trace.set_tracer_provider(provider)
    _use(provider)


def _provider_from_env(exporters: list[str]) -> Any:
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "kiln"}))  # OTEL_SERVICE_NAME wins
    provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER
    for name in exporters:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    return provider


def use(provider: Any) -> None:
    """Trace with ``provider`` (an SDK ``TracerProvider``: a test's, with an in-memory
    exporter, or a program's own) instead of reading the environment; None turns tracing off.
    The global provider is left alone."""
    global _checked
    with _lock:
        _checked = True
        _use(provider)


def _use(provider: Any) -> None:
    global _tracer, _sql_tracer, _provider
    if provider is None:
        _tracer = _sql_tracer = _provider = None
        return
    _provider = provider
    _sql_tracer = provider.get_tracer("kiln.sql")
    _tracer = provider.get_tracer("kiln")


# --- instrumentation --------------------------------------------------------------------


def _instrument_engine(engine: sa.Engine) -> None:
    """Spans for the statements of ``engine`` (once per engine), only inside another span (a
    request, an attempt), so loops that poll the database make no traces. SQLAlchemy's own
    cursor events, with the attributes of OpenTelemetry's database conventions: the
    ``opentelemetry-instrumentation-sqlalchemy`` package pins SQLAlchemy below 2.1, so a
    fresh install with Kiln's SQLAlchemy cannot take it."""
    with _lock:
        if engine in _instrumented:
            return
        _instrumented.add(engine)
    import sqlalchemy as sa
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    system = engine.dialect.name

    def before(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if _sql_tracer is None or not trace.get_current_span().get_span_context().is_valid:
            return
        words = statement.split(None, 1)
        context._kiln_span = _sql_tracer.start_span(
            f"{words[0].upper() if words else 'SQL'} {system}",
            kind=SpanKind.CLIENT,
            attributes={"db.system": system, "db.statement": statement[:4000]},
        )

    def after(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        span = getattr(context, "_kiln_span", None)
        if span is not None:
            context._kiln_span = None
            span.end()

    def failed(exception_context):  # type: ignore[no-untyped-def]
        context = exception_context.execution_context
        span = getattr(context, "_kiln_span", None) if context is not None else None
        if span is not None:
            context._kiln_span = None
            span.set_status(Status(StatusCode.ERROR, str(exception_context.original_exception)))
            span.end()

    sa.event.listen(engine, "before_cursor_execute", before)
    sa.event.listen(engine, "after_cursor_execute", after)
    sa.event.listen(engine, "handle_error", failed)


def instrument_app(app: Any, kiln: Database) -> None:
    """With tracing on: a span per request of the Flask ``app`` (``OTEL_PYTHON_FLASK_EXCLUDED_URLS``
    leaves some out) and spans for ``kiln``'s statements."""
    if _active() is None:
        return
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    FlaskInstrumentor.instrument_app(app, tracer_provider=_provider)
    _instrument_engine(kiln.engine)


# --- spans ------------------------------------------------------------------------------


def _context(traceparent: str | None) -> Any:
    """The context whose span is ``traceparent`` (None: the current context)."""
    if not traceparent:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": traceparent})


def _traceparent() -> str | None:
    """The current span as a W3C traceparent."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")


def _attributes(**values: Any) -> dict[str, Any]:
    return {f"kiln.{k}": v for k, v in values.items() if v is not None}


class _Untraced:
    """What :func:`span` gives while tracing is off."""

    traceparent: str | None = None

    def __enter__(self) -> _Untraced:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set(self, **values: Any) -> None:
        pass


_UNTRACED = _Untraced()


class _Span(_Untraced):
    def __init__(self, tracer: Any, name: str, attributes: dict[str, Any]) -> None:
        self._manager = tracer.start_as_current_span(name, attributes=attributes)

    def __enter__(self) -> _Span:
        self._span = self._manager.__enter__()
        self.traceparent = _traceparent()
        return self

    def __exit__(self, *exc: object) -> None:
        self._manager.__exit__(*exc)

    def set(self, **values: Any) -> None:
        self._span.set_attributes(_attributes(**values))


def span(name: str, **values: Any) -> _Untraced:
    """A context manager: a span ``name`` (attributes ``kiln.<key>``) child of the current one.
    It gives a handle with ``traceparent`` (None while tracing is off) and ``set(**values)``."""
    tracer = _active()
    if tracer is None:
        return _UNTRACED
    return _Span(tracer, name, _attributes(**values))


def attempt(run: Callable[[K, ClaimedTask], Outcome], kiln: K, task: ClaimedTask) -> Outcome:
    """``run(kiln, task)`` inside a ``kiln.attempt`` span, child of the span that submitted the
    task's run (a root span for a run submitted untraced)."""
    tracer = _active()
    if tracer is None:
        return run(kiln, task)
    _instrument_engine(kiln.engine)
    from opentelemetry.trace import SpanKind, Status, StatusCode

    attributes = _attributes(
        workflow_id=task.workflow_id, task_id=task.id, task=task.name, attempt=task.attempt,
        handler=task.handler or task.model_type,
    )  # fmt: skip
    with tracer.start_as_current_span(
        "kiln.attempt", context=_context(task.trace_context), kind=SpanKind.CONSUMER,
        attributes=attributes,
    ) as current:  # fmt: skip
        outcome = run(kiln, task)
        current.set_attribute("kiln.outcome", "succeeded" if outcome.ok else outcome.kind)
        if not outcome.ok and outcome.kind != "waiting":
            current.set_status(Status(StatusCode.ERROR, outcome.error))
    return outcome


def handler(task: ClaimedTask, call: Callable[[], T]) -> Callable[[], T]:
    """``call`` (the task's handler) inside a ``kiln.handler`` span while tracing is on."""
    tracer = _tracer
    if tracer is None:
        return call

    def traced() -> T:
        from opentelemetry.trace import Status, StatusCode

        with tracer.start_as_current_span(
            "kiln.handler", attributes=_attributes(handler=task.handler),
            record_exception=False, set_status_on_exception=False,
        ) as current:  # fmt: skip
            try:
                return call()
            except TaskSuspended:  # it waits (a child run, a sleep, a signal): no error
                current.set_attribute("kiln.outcome", "waiting")
                raise
            except BaseException as exc:
                current.record_exception(exc)
                current.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                raise

    return traced


def recording(outcomes: Sequence[Outcome]) -> Any:
    """A context manager: a ``kiln.record`` span around recording ``outcomes``, child of the
    first traced task's run (linked to the others' runs)."""
    tracer = _tracer
    if tracer is None:
        return _UNTRACED
    traceparents = list(dict.fromkeys(o.task.trace_context for o in outcomes))
    traceparents = [tp for tp in traceparents if tp]
    if not traceparents:
        return _UNTRACED
    from opentelemetry import trace

    others = [trace.get_current_span(_context(tp)) for tp in traceparents[1:]]
    return tracer.start_as_current_span(
        "kiln.record",
        context=_context(traceparents[0]),
        links=[trace.Link(span.get_span_context()) for span in others],
        attributes=_attributes(task_ids=[o.task.id for o in outcomes]),
    )


def dispatched(kiln: Database, batch: Sequence[Dispatch], started_ns: int) -> None:
    """A ``kiln.dispatch`` span for each traced run of ``batch`` (leased and sent by a
    controller since ``started_ns``, ``time.time_ns()``), child of the span that submitted it.
    Tracing on, this reads the runs' trace contexts (one statement per batch)."""
    tracer = _active()
    if tracer is None or not batch:
        return
    ended_ns = time.time_ns()
    from opentelemetry.trace import SpanKind

    from kiln.store.traces import trace_contexts

    tasks: dict[int, list[int]] = {}
    for d in batch:
        tasks.setdefault(d.workflow_id, []).append(d.task_id)
    traceparents = kiln.read(lambda c: trace_contexts(c, list(tasks)))
    for run_id, traceparent in traceparents.items():
        dispatch = tracer.start_span(
            "kiln.dispatch",
            context=_context(traceparent),
            kind=SpanKind.PRODUCER,
            start_time=started_ns,
            attributes=_attributes(workflow_id=run_id, task_ids=tasks[run_id]),
        )
        dispatch.end(end_time=ended_ns)
