"""Print the OpenTelemetry trace of one real run as a tree (docs/observability.md shows it).

The real Flask app takes ``POST /workflows``; the embedded runtime's controller and worker
threads run the workflow; the SDK's in-memory exporter collects the spans, printed with their
start (ms after the request began), duration and main attributes. A fresh PostgreSQL database
by default (``--sqlite`` for a temporary SQLite file). Needs the ``otel`` extra.

    .venv/bin/python bench/trace_tree.py [--sqlite]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import fresh_database  # noqa: E402
from kiln.app import tracing  # noqa: E402
from kiln.app.runtime import Kiln  # noqa: E402
from kiln.core.builder import Workflow  # noqa: E402
from kiln.core.config import Settings  # noqa: E402
from kiln.web.app import create_app  # noqa: E402
from kiln.workers import demo  # noqa: E402 - registers the demo handlers
from kiln.workers.embedded import EmbeddedRuntime  # noqa: E402

SHOWN = ("kiln.workflow_id", "kiln.task", "kiln.attempt", "kiln.outcome", "kiln.task_ids")


def workflow() -> Workflow:
    """Fan-in of two branches, one of which fails once and is retried."""
    wf = Workflow("traced-demo")
    gen = wf.add(demo.generate, name="Generate", params={"count": 6})
    evens = wf.add(
        demo.square_sum,
        name="Square evens",
        params={"numbers": gen.result["numbers"], "parity": "even"},
        depends_on=[gen],
    )
    flaky = wf.add(demo.flaky_fetch, name="Flaky fetch", params={"steps": 2}, max_attempts=3)
    wf.add(
        demo.add,
        name="Sum",
        params={"parts": [evens.result["total"]], "bonus": flaky.result["value"]},
        depends_on=[evens, flaky],
    )
    return wf


def describe(span: ReadableSpan) -> str:
    attributes = span.attributes or {}
    shown = [f"{k.removeprefix('kiln.')}={attributes[k]}" for k in SHOWN if k in attributes]
    if span.name == "kiln.handler":
        shown.insert(0, str(attributes.get("kiln.handler")))
    statement = attributes.get("db.statement") or attributes.get("db.query.text")
    if statement:
        shown.append(" ".join(str(statement).split())[:60])
    if span.status.status_code.name == "ERROR":
        shown.append(f"ERROR {span.status.description}")
    return "  ".join(shown)


def print_tree(spans: list[ReadableSpan]) -> None:
    by_parent: dict[int | None, list[ReadableSpan]] = {}
    ids = {s.context.span_id for s in spans}
    for s in spans:
        parent = s.parent.span_id if s.parent is not None and s.parent.span_id in ids else None
        by_parent.setdefault(parent, []).append(s)
    [root] = by_parent[None]
    t0 = root.start_time or 0

    def show(span: ReadableSpan, depth: int) -> None:
        start = ((span.start_time or 0) - t0) / 1e6
        took = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
        label = f"{'  ' * depth}{span.name}"
        print(f"{start:8.1f} {took:7.1f}  {label:<38} {describe(span)}".rstrip())
        for child in sorted(
            by_parent.get(span.context.span_id, []), key=lambda s: s.start_time or 0
        ):
            show(child, depth + 1)

    print(f"{'start ms':>8} {'took ms':>7}  {'span':<38} attributes")
    show(root, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sqlite", action="store_true", help="a temporary SQLite file")
    args = parser.parse_args()
    if args.sqlite:
        url = f"sqlite:///{tempfile.mkdtemp(prefix='kiln-trace-')}/kiln.db"
        Kiln(Settings(database_url=url), pool_size=1).upgrade()
    else:
        url = fresh_database("kiln_trace_tree")

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    settings = Settings(database_url=url, retry_base_s=0.05, retry_max_s=0.1)
    kiln, api = Kiln(settings), Kiln(settings)  # the API's handle has no broker: the
    with EmbeddedRuntime(kiln):  # controller dispatches what it submits
        response = create_app(api).test_client().post("/workflows", json=workflow().to_definition())
        run = kiln.wait(response.get_json()["id"], timeout_s=60)
    assert run["status"] == "succeeded", run
    provider.force_flush()
    [root] = [s for s in exporter.get_finished_spans() if s.name == "POST /workflows"]
    trace_id = root.context.trace_id
    print(f"run {run['id']} {run['status']} ({kiln.dialect}); trace {trace_id:032x}\n")
    print_tree([s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id])
    kiln.close()
    api.close()


if __name__ == "__main__":
    main()
