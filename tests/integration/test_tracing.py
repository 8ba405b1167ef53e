"""OpenTelemetry: one trace per run, from the API request through the controller's dispatch
to the worker's attempts, checked with the SDK's in-memory exporter on the real Flask app and
the embedded runtime (worker threads and a controller), on both databases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from kiln import report_progress
from kiln.app import tracing
from kiln.app.runtime import Kiln
from kiln.store.schema import workflows
from kiln.web.app import create_app
from tests.conftest import ROOT, wait_for
from tests.taskinstance_helpers import free_port

HERE = "tests.integration.test_tracing"


def fetch(n: int) -> list[int]:
    report_progress(0.5, "fetched half")  # a statement of the handler's own
    return list(range(n))


def total(rows: list[int]) -> int:
    return sum(rows)


def explode() -> None:
    raise ValueError("no rows today")


DEFINITION = {
    "name": "traced",
    "tasks": [
        {"name": "Fetch", "handler": f"{HERE}:fetch", "params": {"n": 4}},
        {
            "name": "Total",
            "handler": f"{HERE}:total",
            "params": {"rows": "{{Fetch.result}}"},
            "depends_on": ["Fetch"],
        },
    ],
}


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    yield exporter
    tracing.use(None)
    provider.shutdown()


@pytest.fixture
def web_kiln(kiln: Kiln) -> Iterator[Kiln]:
    """The API's own handle, without a broker: its runs wait for the controller's dispatch
    (the embedded runtime's handle sends a run's first tasks itself)."""
    k = Kiln(kiln.settings, pool_size=2)
    yield k
    k.close()


def trace_of(exporter: InMemorySpanExporter, root: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.context.trace_id == root.context.trace_id]


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def descends(spans: list[ReadableSpan], span: ReadableSpan, ancestor: ReadableSpan) -> bool:
    by_id = {s.context.span_id: s for s in spans}
    while span.parent is not None:
        if span.parent.span_id == ancestor.context.span_id:
            return True
        span = by_id[span.parent.span_id]  # KeyError: a parent outside the trace
    return False


def is_sql(span: ReadableSpan) -> bool:
    attributes = span.attributes or {}
    return span.kind == SpanKind.CLIENT and (
        "db.system" in attributes or "db.system.name" in attributes
    )


def submit_and_wait(web_kiln: Kiln, kiln: Kiln, definition: dict) -> int:
    client = create_app(web_kiln).test_client()
    r = client.post("/workflows", json=definition)
    assert r.status_code == 201, r.get_json()
    wf_id = r.get_json()["id"]
    run = kiln.wait(wf_id, timeout_s=30)
    assert run["status"] in ("succeeded", "failed"), run
    return wf_id


def test_a_runs_trace_goes_from_the_api_request_through_dispatch_to_each_attempt(
    spans, kiln, embedded, web_kiln
):
    wf_id = submit_and_wait(web_kiln, kiln, DEFINITION)
    assert kiln.workflow(wf_id)["status"] == "succeeded"

    [root] = [s for s in spans.get_finished_spans() if s.name == "POST /workflows"]
    assert root.parent is None and root.kind == SpanKind.SERVER

    # The last record span ends just after its transaction commits: wait for it.
    def recorded() -> list[ReadableSpan] | None:
        trace = trace_of(spans, root)
        return trace if len([s for s in trace if s.name == "kiln.record"]) >= 2 else None

    trace = wait_for(recorded, what="both tasks' results recorded in the trace")
    named = {}
    for s in trace:
        named.setdefault(s.name, []).append(s)
        assert s is root or descends(trace, s, root), s.name  # one tree, rooted at the request

    [submit] = named["kiln.submit"]
    assert submit.parent.span_id == root.context.span_id
    assert submit.attributes["kiln.workflow_id"] == wf_id
    assert any(is_sql(s) for s in children(trace, submit)), "the run's insert is a span"
    stored = kiln.read(
        lambda c: c.execute(
            sa.select(workflows.c.trace_context).where(workflows.c.id == wf_id)
        ).scalar_one()
    )
    assert stored.split("-")[1] == format(root.context.trace_id, "032x")
    assert stored.split("-")[2] == format(submit.context.span_id, "016x")

    # The controller leased Fetch (the API's handle has no broker). Total, readied by Fetch's
    # result, was leased by the worker that recorded it and sent inside its record span (or,
    # had the queue been busy, left to the controller).
    attempts = {a.attributes["kiln.task"]: a for a in named["kiln.attempt"]}
    dispatches = named["kiln.dispatch"]
    assert [d.parent.span_id for d in dispatches] == [submit.context.span_id] * len(dispatches)
    assert {d.attributes["kiln.workflow_id"] for d in dispatches} == {wf_id}
    dispatched = {i for d in dispatches for i in d.attributes["kiln.task_ids"]}
    assert attempts["Fetch"].attributes["kiln.task_id"] in dispatched
    records = {r.context.span_id for r in named["kiln.record"]}
    assert all(send.parent.span_id in records for send in named.get("kiln.send", []))
    assert attempts["Total"].attributes["kiln.task_id"] in dispatched or named.get("kiln.send")

    assert set(attempts) == {"Fetch", "Total"}
    for name, attempt in attempts.items():
        assert attempt.parent.span_id == submit.context.span_id, name
        assert attempt.kind == SpanKind.CONSUMER
        assert attempt.attributes["kiln.outcome"] == "succeeded"
        [handler] = children(trace, attempt)
        assert handler.name == "kiln.handler"
        assert handler.attributes["kiln.handler"] == f"{HERE}:{name.lower()}"
    fetch_handler = children(trace, attempts["Fetch"])[0]
    assert any(is_sql(s) for s in children(trace, fetch_handler)), "its progress report"
    for record in named["kiln.record"]:
        assert record.parent.span_id == submit.context.span_id
        assert any(is_sql(s) for s in children(trace, record))
    assert min(a.start_time for a in attempts.values()) >= min(d.start_time for d in dispatches)


def test_a_failed_attempt_is_an_error_span_with_the_handlers_exception(
    spans, kiln, embedded, web_kiln
):
    definition = {
        "name": "fails",
        "tasks": [{"name": "Explode", "handler": f"{HERE}:explode", "max_attempts": 1}],
    }
    wf_id = submit_and_wait(web_kiln, kiln, definition)
    assert kiln.workflow(wf_id)["status"] == "failed"

    [attempt] = wait_for(
        lambda: [s for s in spans.get_finished_spans() if s.name == "kiln.attempt"]
    )
    assert attempt.status.status_code == StatusCode.ERROR
    assert "no rows today" in attempt.status.description
    assert attempt.attributes["kiln.outcome"] == "failed"
    [handler] = [s for s in spans.get_finished_spans() if s.name == "kiln.handler"]
    assert handler.parent.span_id == attempt.context.span_id
    [event] = handler.events
    assert event.name == "exception"
    assert event.attributes["exception.type"] == "ValueError"


def test_with_tracing_off_a_run_stores_no_trace_context(kiln, embedded, web_kiln):
    tracing.use(None)  # what a process without OTEL_* variables runs with
    wf_id = submit_and_wait(web_kiln, kiln, DEFINITION)
    assert kiln.workflow(wf_id)["status"] == "succeeded"
    stored = kiln.read(
        lambda c: c.execute(
            sa.select(workflows.c.trace_context).where(workflows.c.id == wf_id)
        ).scalar_one()
    )
    assert stored is None


PROBE = """
import logging, sys
logging.basicConfig(level=logging.WARNING, format="%(message)s")
if "--without-otel" in sys.argv:
    sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
from kiln.app import tracing
import kiln.workers.actors
print("enabled" if tracing.enabled() else "off")
"""


@pytest.mark.parametrize(
    ("env", "argv", "expected"),
    [
        ({}, [], "off"),
        ({"OTEL_TRACES_EXPORTER": "console"}, [], "enabled"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, [], "enabled"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"},
            [],
            "off",
        ),
        ({"OTEL_TRACES_EXPORTER": "none"}, [], "off"),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["--without-otel"], "off"),
    ],
    ids=["unset", "console", "otlp-endpoint", "sdk-disabled", "exporter-none", "not-installed"],
)
def test_tracing_is_on_only_when_the_standard_variables_ask_for_it(env, argv, expected):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == expected, out.stderr
    if argv:
        assert "pip install 'kiln[otel]'" in out.stderr  # one line saying why it stays off
        assert "Traceback" not in out.stderr


def console_spans(log: Path) -> list[dict]:
    """The spans a process's console exporter wrote (its log has its log lines too)."""
    text, spans = log.read_text(errors="replace"), []
    decoder = json.JSONDecoder()
    start = text.find('{\n    "name": ')
    while start != -1:
        try:
            span, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:  # cut short: the exporter is still writing it
            break
        spans.append(span)
        start = text.find('{\n    "name": ', end)
    return spans


@pytest.mark.slow
def test_the_procfile_processes_export_one_trace_per_run_joining_the_callers_trace(
    cluster, tmp_path
):
    """Real processes configured by the standard variables: the web, the worker and the
    controller each export their spans; the stored trace context links them into the trace
    the caller's ``traceparent`` header started."""
    for name in [k for k in cluster.env if k.startswith("OTEL_")]:
        del cluster.env[name]
    cluster.env.update(
        OTEL_TRACES_EXPORTER="console",
        OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_SERVICE_NAME="kiln-under-test",
        KILN_LOG_LEVEL="WARNING",  # fewer lines between the exported spans
    )
    port = free_port()
    cluster.start("web", "--port", str(port), name="web")
    cluster.worker()
    cluster.controller()
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(f"{url}/health", timeout=5).ok
        except requests.ConnectionError:
            return False

    wait_for(up, timeout=60, what="kiln web to answer")
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    definition = {
        "name": "traced",
        "tasks": [
            {"name": "A", "handler": "tests.handlers:add", "params": {"a": 1, "b": 2}},
            {"name": "B", "handler": "tests.handlers:add", "params": {"a": "{{A.result}}", "b": 3},
             "depends_on": ["A"]},
        ],
    }  # fmt: skip
    r = requests.post(
        f"{url}/workflows",
        json=definition,
        headers={"traceparent": f"00-{caller_trace}-{caller_span}-01"},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    wf_id = r.json()["id"]
    wait_for(
        lambda: (
            requests.get(f"{url}/workflows/{wf_id}", timeout=10).json()["status"] == "succeeded"
        ),
        timeout=60,
        what="the run to succeed",
    )

    logs = tmp_path / "logs"

    def of_the_run(process: str) -> list[dict]:
        spans = [s for log in logs.glob(f"{process}-*.log") for s in console_spans(log)]
        return [s for s in spans if s["context"]["trace_id"] == f"0x{caller_trace}"]

    worker = wait_for(
        lambda: (
            (spans := of_the_run("worker"))
            and len([s for s in spans if s["name"] == "kiln.record"]) >= 2
            and spans
        ),
        timeout=30,
        what="the worker's spans of the run",
    )
    web = wait_for(lambda: of_the_run("web"), timeout=30, what="the web's spans of the run")
    [request] = [s for s in web if s["name"] == "POST /workflows"]
    assert request["parent_id"] == f"0x{caller_span}"
    [submit] = [s for s in web if s["name"] == "kiln.submit"]
    assert submit["parent_id"] == request["context"]["span_id"]
    assert submit["attributes"]["kiln.workflow_id"] == wf_id
    attempts = {s["attributes"]["kiln.task"]: s for s in worker if s["name"] == "kiln.attempt"}
    assert set(attempts) == {"A", "B"}
    for attempt in attempts.values():
        assert attempt["parent_id"] == submit["context"]["span_id"]
        handlers = [s for s in worker if s["parent_id"] == attempt["context"]["span_id"]]
        assert [h["name"] for h in handlers] == ["kiln.handler"]
    for span in web + worker:
        assert span["resource"]["attributes"]["service.name"] == "kiln-under-test"


def spawn_child() -> int:
    from kiln import current_task

    child = current_task().start_child(
        {
            "name": "kid",
            "tasks": [{"name": "T", "handler": f"{HERE}:total", "params": {"rows": [1]}}],
        },
        key="only",
    )
    return child.result()


def stored_context(kiln: Kiln, wf_id: int) -> str | None:
    return kiln.read(
        lambda c: c.execute(
            sa.select(workflows.c.trace_context).where(workflows.c.id == wf_id)
        ).scalar_one()
    )


def span_of(context: str) -> tuple[int, int]:
    """(trace id, span id) of a stored traceparent."""
    _, trace_id, span_id, _ = context.split("-")
    return int(trace_id, 16), int(span_id, 16)


def test_child_runs_reruns_and_schedule_fires_store_the_span_that_started_them(
    spans, kiln, embedded
):
    parent = kiln.submit(
        {"name": "parent", "tasks": [{"name": "P", "handler": f"{HERE}:spawn_child"}]}
    )
    assert kiln.wait(parent, timeout_s=30)["status"] == "succeeded"
    [child] = kiln.workflow(parent)["children"]
    # The handler ran twice: it started the child, waited, and ran again from the top once the
    # child ended; the second start found the first's run. The run keeps the first span.
    starts = wait_for(
        lambda: [s for s in spans.get_finished_spans() if s.name == "kiln.start_child"] or None
    )
    started = min(starts, key=lambda s: s.start_time)
    assert {s.attributes["kiln.workflow_id"] for s in starts} == {child["id"]}
    assert span_of(stored_context(kiln, child["id"])) == (
        started.context.trace_id,
        started.context.span_id,
    )
    [parent_submit] = [s for s in spans.get_finished_spans() if s.name == "kiln.submit"
                       and s.attributes["kiln.workflow_id"] == parent]  # fmt: skip
    assert started.context.trace_id == parent_submit.context.trace_id  # one trace for both

    failed = kiln.submit(
        {"name": "fails", "tasks": [{"name": "X", "handler": f"{HERE}:explode", "max_attempts": 1}]}
    )
    assert kiln.wait(failed, timeout_s=30)["status"] == "failed"
    rerun_id, _ = kiln.reruns.rerun(failed)
    [rerun] = [s for s in spans.get_finished_spans() if s.name == "kiln.rerun"]
    assert rerun.attributes["kiln.workflow_id"] == rerun_id
    assert span_of(stored_context(kiln, rerun_id)) == (
        rerun.context.trace_id,
        rerun.context.span_id,
    )

    s = kiln.schedules.create({"name": "traced", "cron": "* * * * * *", "workflow": DEFINITION})
    assert kiln.schedules.fire_due(now=s["next_fire_at"]) == 1
    [fire] = [s for s in spans.get_finished_spans() if s.name == "kiln.schedule.fire"]
    [fired_run] = fire.attributes["kiln.runs"]
    assert span_of(stored_context(kiln, fired_run)) == (fire.context.trace_id, fire.context.span_id)
