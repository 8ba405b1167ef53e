"""The operator's dashboard at ``/ui``: server-rendered pages (Jinja, no JavaScript build) over
the same engine reads as the JSON API.

Every page renders complete HTML, so it is usable without JavaScript. Its changing part sits in
an element with ``data-live``: ``ui_static/kiln.js`` re-fetches that URL (the page's own URL
with ``fragment=1``, which renders only that part) every couple of seconds and patches the DOM
in place. Actions (stop, resume, clone, delete, cancel, policy) are ``fetch`` calls to the
public API — ``/dispatcher/...``, ``/workflows/<id>/...``, ``PUT /scheduler/policy`` — with
``Authorization: Bearer`` from the token the operator pasted once (kept in localStorage),
so they obey ``KILN_API_TOKEN`` exactly like any other client.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, current_app, redirect, render_template, request, url_for
from kiln.app import scheduler
from kiln.core.errors import NotFound
from kiln.core.states import TaskStatus
from kiln.store import instances as registry
from kiln.store import operations as ops
from kiln.store import pipelines as pl
from kiln.store.db import aware, utcnow
from kiln.store.schema import (
    OPERATION_KINDS,
    OPERATION_STATES,
    TASK_STATES,
    WORKFLOW_STATES,
    pipelines,
    processes,
    tasks,
    workflows,
)
from kiln.web import ui_graph
from kiln.web.common import kiln, render_operation, render_pipeline

bp = Blueprint(
    "ui",
    __name__,
    url_prefix="/ui",
    template_folder="templates",
    static_folder="ui_static",
    static_url_path="/static",
)

PAGE_SIZE = 100
PROCESS_HORIZON_S = 3600
SILENT_AFTER_S = 30
# Past this many tasks a run's page stops drawing its graph and shows the tasks that tell the
# most (see _most_telling) in the timeline and table: the page is re-rendered every 2 s.
MAX_DRAWN_TASKS = 300
UNFINISHED_FIRST = ("running", "queued", "retrying", "failed", "ready")
PIPELINE_STATES = [str(s) for s in pl.PipelineStatus]
# Which pipeline actions make sense in which state (the controller refuses the others
# anyway, with a reason in the operations log; the buttons just do not offer them).
PIPELINE_ACTIONS = {
    "stop": {"new", "ongoing"},
    "resume": {"stopped"},
    "clone": set(PIPELINE_STATES),
    "delete": {"new", "ongoing", "stopped", "failed"},
}
RUN_ACTIONS = {
    "pause": {"pending", "running"},
    "resume": {"paused"},
    "cancel": {"pending", "running", "paused"},
}


# --- helpers the templates use ------------------------------------------------------------


def _ts(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    return aware(value).timestamp()  # type: ignore[union-attr]


@bp.app_template_filter("when")
def when(value: Any) -> str:
    """A UTC timestamp as ``2026-05-01 12:00:03`` (datetime or Unix seconds)."""
    seconds = _ts(value)
    if seconds is None:
        return "—"
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


@bp.app_template_filter("duration")
def duration(value: float | None) -> str:
    return "—" if value is None else ui_graph.format_duration(value)


def elapsed(start: Any, end: Any, now: float) -> float | None:
    s = _ts(start)
    if s is None:
        return None
    e = _ts(end)
    return (e if e is not None else now) - s


@bp.context_processor
def _globals() -> dict[str, Any]:
    return {
        "token_required": bool(current_app.config.get("KILN_API_TOKEN")),
        "elapsed": elapsed,
        "silent_after_s": SILENT_AFTER_S,
        "nav": [
            ("ui.runs", "Runs"),
            ("ui.pipelines_page", "Pipelines"),
            ("ui.operations_page", "Operations"),
            ("ui.instances_page", "Instances"),
            ("ui.scheduler_page", "Scheduler"),
        ],
    }


def _page(template: str, fragment: str, **context: Any) -> Any:
    """The whole page, or only its live part when the poller asks with ``fragment=1``."""
    args = {**request.args.to_dict(), **(request.view_args or {}), "fragment": 1}
    context["live_url"] = url_for(request.endpoint or "", **args)
    if request.args.get("fragment"):
        return render_template(fragment, **context)
    return render_template(template, fragment=fragment, **context)


def _choice(name: str, allowed: Any) -> str:
    value = request.args.get(name, "")
    return value if value in allowed else ""


@bp.errorhandler(NotFound)
def _not_found(exc: NotFound) -> Any:
    return render_template("ui/not_found.html", message=exc.message), 404


# --- pages --------------------------------------------------------------------------------


@bp.get("/")
def index() -> Any:
    return redirect(url_for("ui.runs"))


@bp.get("/runs")
def runs() -> Any:
    status = _choice("status", WORKFLOW_STATES)
    query = request.args.get("q", "").strip()[:200]
    rows, counts, by_status = kiln().read(lambda c: _runs(c, status, query))
    return _page(
        "ui/runs.html",
        "ui/_runs.html",
        runs=rows,
        task_counts=counts,
        by_status=by_status,
        status=status,
        q=query,
        states=WORKFLOW_STATES,
        task_states=TASK_STATES,
        now=utcnow().timestamp(),
    )


@bp.get("/runs/<int:workflow_id>")
def run(workflow_id: int) -> Any:
    k = kiln()
    data = k.workflow(workflow_id)
    pipeline_id = k.read(
        lambda c: c.execute(
            sa.select(pipelines.c.id).where(pipelines.c.workflow_id == workflow_id)
        ).scalar()
    )
    now = utcnow().timestamp()
    every = data["tasks"]
    shown = every if len(every) <= MAX_DRAWN_TASKS else _most_telling(every)
    graph = None
    if len(every) <= MAX_DRAWN_TASKS:
        names = [t["name"] for t in every]
        deps = {t["name"]: t["depends_on"] for t in every}
        try:
            graph = ui_graph.dag_layout(names, deps)
        except ui_graph.CycleError:  # refused at submission; never drawn wrong if it happens
            graph = None
    status_of = {t["name"]: t["status"] for t in every}
    counts: dict[str, int] = {}
    for t in every:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    gantt = ui_graph.gantt_layout([(t["name"], _spans(t)) for t in shown], now=now, width=1200)
    return _page(
        "ui/run.html",
        "ui/_run.html",
        run=data,
        shown=shown,
        max_drawn=MAX_DRAWN_TASKS,
        pipeline_id=pipeline_id,
        graph=graph,
        status_of=status_of,
        counts=counts,
        task_states=TASK_STATES,
        gantt=gantt,
        actions=[a for a, ok in RUN_ACTIONS.items() if data["status"] in ok],
        now=now,
    )


@bp.get("/pipelines")
def pipelines_page() -> Any:
    status = _choice("status", PIPELINE_STATES)

    def read(c: sa.Connection) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
        rows = [
            render_pipeline(p) for p in pl.list_pipelines(c, status=status or None, limit=PAGE_SIZE)
        ]
        return rows, _last_operations(c, [p["id"] for p in rows])

    rows, last_ops = kiln().read(read)
    for p in rows:
        p["actions"] = [a for a, ok in PIPELINE_ACTIONS.items() if p["status"] in ok]
        config = p.get("model_config") or {}
        # A handler's function name says more than its module path in a narrow column.
        p["model"] = config.get("model") or str(config.get("handler", "")).rsplit(":", 1)[-1]
    return _page(
        "ui/pipelines.html",
        "ui/_pipelines.html",
        pipelines=rows,
        last_ops=last_ops,
        status=status,
        states=PIPELINE_STATES,
    )


@bp.get("/operations")
def operations_page() -> Any:
    status = _choice("status", OPERATION_STATES)
    operation = _choice("operation", OPERATION_KINDS)
    offset = max(request.args.get("offset", 0, type=int), 0)
    rows, total = kiln().read(
        lambda c: ops.list_operations(
            c, status=status or None, operation=operation or None, limit=PAGE_SIZE, offset=offset
        )
    )
    return _page(
        "ui/operations.html",
        "ui/_operations.html",
        operations=[render_operation(r) for r in rows],
        total=total,
        offset=offset,
        page_size=PAGE_SIZE,
        status=status,
        operation=operation,
        states=OPERATION_STATES,
        kinds=OPERATION_KINDS,
    )


@bp.get("/instances")
def instances_page() -> Any:
    now = utcnow()

    def read(c: sa.Connection) -> Any:
        return registry.list_instances(c), _backlogs(c, now), _processes(c)

    items, backlogs, procs = kiln().read(read)
    for i in items:
        i["heartbeat_age_s"] = elapsed(_parse(i["heartbeat_at"]), None, now.timestamp())
        i["load"] = i["active_tasks"] / max(i["max_concurrency"] or 1, 1)
        i["backlog_s"], i["backlog_tasks"] = backlogs.get(i["id"], (0.0, 0))
        i["backlog_s"] /= max(i["slots"] or 1, 1)
    return _page(
        "ui/instances.html",
        "ui/_instances.html",
        instances=items,
        processes=procs,
        now=now.timestamp(),
    )


@bp.get("/scheduler")
def scheduler_page() -> Any:
    def read(c: sa.Connection) -> Any:
        return scheduler.stats(c), scheduler.schedule_next(c, limit=15)

    stats, upcoming = kiln().read(read)
    return _page("ui/scheduler.html", "ui/_scheduler.html", stats=stats, upcoming=upcoming)


# --- reads only the dashboard needs -------------------------------------------------------


def _runs(
    conn: sa.Connection, status: str, query: str
) -> tuple[list[dict[str, Any]], dict[int, dict[str, int]], dict[str, int]]:
    """The newest runs matching the filters, their task counts by state, and how many runs
    are in each state overall (for the filter chips)."""
    q = sa.select(
        workflows.c.id,
        workflows.c.name,
        workflows.c.status,
        workflows.c.error,
        workflows.c.created_at,
        workflows.c.started_at,
        workflows.c.finished_at,
    ).order_by(workflows.c.id.desc())
    if status:
        q = q.where(workflows.c.status == status)
    if query:
        q = q.where(sa.func.lower(workflows.c.name).contains(query.lower(), autoescape=True))
    rows = [dict(r) for r in conn.execute(q.limit(PAGE_SIZE)).mappings()]
    counts: dict[int, dict[str, int]] = {r["id"]: {} for r in rows}
    if rows:
        for wid, st, n in conn.execute(
            sa.select(tasks.c.workflow_id, tasks.c.status, sa.func.count())
            .where(tasks.c.workflow_id.in_(list(counts)))
            .group_by(tasks.c.workflow_id, tasks.c.status)
        ):
            counts[wid][st] = n
    by_status = dict(
        conn.execute(
            sa.select(workflows.c.status, sa.func.count()).group_by(workflows.c.status)
        ).all()
    )
    return rows, counts, by_status


def _spans(task: dict[str, Any]) -> list[ui_graph.Span]:
    spans = []
    for a in task["attempt_history"]:
        start = _ts(a["started_at"])
        if start is None:
            continue
        end = _ts(a["finished_at"])
        outcome = a["outcome"] if end is not None or a["outcome"] != "running" else "running"
        title = f"{task['name']} · attempt {a['attempt']} · {outcome}"
        if end is not None:
            title += f" · {ui_graph.format_duration(end - start)}"
        if a.get("error"):
            title += f" · {a['error'][:200]}"
        spans.append(ui_graph.Span(start=start, end=end, kind=outcome, title=title))
    return spans


def _most_telling(every: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At most MAX_DRAWN_TASKS tasks: running, queued, retrying, failed and ready ones first,
    then the rest, each group in submission order; shown in submission order."""
    ranked = sorted(every, key=lambda t: (t["status"] not in UNFINISHED_FIRST, t["id"]))
    return sorted(ranked[:MAX_DRAWN_TASKS], key=lambda t: t["id"])


def _last_operations(conn: sa.Connection, pipeline_ids: list[int]) -> dict[int, dict[str, Any]]:
    """The newest operation of each listed pipeline (what the operator last asked for)."""
    from kiln.store.schema import operations

    if not pipeline_ids:
        return {}
    latest: dict[int, dict[str, Any]] = {}
    rows = conn.execute(
        sa.select(
            operations.c.pipeline_id,
            operations.c.operation,
            operations.c.status,
            operations.c.error,
            operations.c.created_at,
        )
        .where(operations.c.pipeline_id.in_(pipeline_ids))
        .order_by(operations.c.created_at.desc())
    ).mappings()
    for r in rows:
        latest.setdefault(r["pipeline_id"], dict(r))
    return latest


def _backlogs(conn: sa.Connection, now: dt.datetime) -> dict[int, tuple[float, int]]:
    """Per instance: predicted seconds of work still to do on the tasks placed on it (queued
    ones in full, running ones minus the time they have run, never below zero, scaled by the
    instance's learned speed factor), and how many tasks that is. Tasks without a
    prediction count as zero seconds."""
    from kiln.store.schema import instances

    rows = conn.execute(
        sa.select(
            tasks.c.instance_id,
            tasks.c.status,
            tasks.c.predicted_s,
            tasks.c.started_at,
            instances.c.speed_factor,
        )
        .join(instances, instances.c.id == tasks.c.instance_id)
        .where(tasks.c.status.in_([TaskStatus.QUEUED, TaskStatus.RUNNING]))
    ).all()
    out: dict[int, tuple[float, int]] = {}
    for r in rows:
        predicted = (r.predicted_s or 0.0) * (r.speed_factor or 1.0)
        if r.status == TaskStatus.RUNNING and r.started_at is not None:
            predicted -= (now - aware(r.started_at)).total_seconds()  # type: ignore[operator]
        seconds, n = out.get(r.instance_id, (0.0, 0))
        out[r.instance_id] = (seconds + max(predicted, 0.0), n + 1)
    return out


def _processes(conn: sa.Connection) -> list[dict[str, Any]]:
    """Kiln processes that did not say they stopped and were heard from in the last hour
    (one killed without a chance to say so stays listed, as silent, until then)."""
    since = utcnow() - dt.timedelta(seconds=PROCESS_HORIZON_S)
    rows = conn.execute(
        sa.select(processes)
        .where(processes.c.stopped_at.is_(None), processes.c.heartbeat_at >= since)
        .order_by(processes.c.kind, processes.c.started_at)
    ).mappings()
    return [dict(r) for r in rows]


def _parse(iso: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(iso) if iso else None
