"""The operator's dashboard at ``/ui``: server-rendered pages (Jinja, no JavaScript build) over
the same engine reads as the JSON API.

Every page renders complete HTML, so it is usable without JavaScript. Its changing part sits in
an element with ``data-live``: ``ui_static/kiln.js`` re-fetches that URL (the page's own URL
with ``fragment=1``, which renders only that part) every couple of seconds and patches the DOM
in place. Actions (stop, resume, clone, delete, cancel, policy, a signal's form, rerun, a
schedule's pause and resume) are ``fetch`` calls to the public API — ``/dispatcher/...``,
``/workflows/<id>/...``, ``/schedules/<id>/...``, ``PUT /scheduler/policy`` —
signed in by the login cookie (``kiln.web.ui_login``) and carrying the page's CSRF token, so
they obey the tokens' scopes exactly like any other client (``kiln.web.auth``).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flask import Blueprint, redirect, render_template, request, url_for

from kiln.core.clock import aware
from kiln.core.errors import NotFound
from kiln.core.operations import OPERATION_KINDS, OPERATION_STATES
from kiln.core.pipelines import PIPELINE_STATES
from kiln.core.redaction import redact
from kiln.core.states import TaskStatus, WorkflowStatus
from kiln.web import ui_graph
from kiln.web.common import kiln, render_operation, render_pipeline, render_workflow

bp = Blueprint(
    "ui",
    __name__,
    url_prefix="/ui",
    template_folder="templates",
    static_folder="ui_static",
    static_url_path="/static",
)

PAGE_SIZE = 100
SILENT_AFTER_S = 30
# Past this many tasks a run's page stops drawing its graph and shows the tasks that tell the
# most (see _most_telling) in the timeline and table: the page is re-rendered every 2 s.
MAX_DRAWN_TASKS = 300
UNFINISHED_FIRST = ("running", "queued", "retrying", "failed", "ready")
TASK_STATES = [str(s) for s in TaskStatus]
WORKFLOW_STATES = [str(s) for s in WorkflowStatus]
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
    if isinstance(value, str):  # an ISO time, as some reads render theirs
        value = dt.datetime.fromisoformat(value)
    return aware(value).timestamp()  # type: ignore[no-any-return]


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
        "elapsed": elapsed,
        "silent_after_s": SILENT_AFTER_S,
        "nav": [
            ("ui.runs", "Runs"),
            ("ui.pipelines_page", "Pipelines"),
            ("ui.operations_page", "Operations"),
            ("ui.instances_page", "Instances"),
            ("ui.scheduler_page", "Scheduler"),
            ("ui.schedules_page", "Schedules"),
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
    handler = request.args.get("handler", "").strip()[:200]
    problems: list[str] = []
    after = _date_arg("created_after", problems)
    before = _date_arg("created_before", problems)
    rows, counts, by_status = kiln().monitor.runs_overview(
        status=status,
        query=query,
        limit=PAGE_SIZE,
        created_after=after,
        created_before=before,
        handler=handler,
    )
    given = {
        name: request.args.get(name, "").strip()
        for name in ("q", "handler", "created_after", "created_before")
    }
    # What the state chips carry along: the filters in use (an unreadable date is not).
    kept = {**given, "q": query, "handler": handler}
    kept.update({k: "" for k, v in (("created_after", after), ("created_before", before)) if not v})
    filters = {k: v for k, v in kept.items() if v}
    page = _page(
        "ui/runs.html",
        "ui/_runs.html",
        runs=[render_workflow(r) for r in rows],
        task_counts=counts,
        by_status=by_status,
        status=status,
        q=query,
        handler=handler,
        created_after=given["created_after"],
        created_before=given["created_before"],
        filters=filters,
        problems=problems,
        states=WORKFLOW_STATES,
        task_states=TASK_STATES,
        now=time.time(),
    )
    return (page, 400) if problems else page


def _date_arg(name: str, problems: list[str]) -> dt.datetime | None:
    """The query parameter ``name`` as a UTC time: ``2026-05-01`` (midnight) or
    ``2026-05-01T12:30``; None when absent, and a line in ``problems`` when unreadable."""
    value = request.args.get(name, "").strip()
    if not value:
        return None
    try:
        return aware(dt.datetime.fromisoformat(value))  # type: ignore[no-any-return]
    except ValueError:
        label = name.replace("_", " ")
        problems.append(f"{label}: “{value[:40]}” is not a date (2026-05-01 or 2026-05-01T12:30)")
        return None


@bp.get("/runs/<int(max=9223372036854775807):workflow_id>")
def run(workflow_id: int) -> Any:
    k = kiln()
    data = render_workflow(k.workflow(workflow_id))
    pipeline_id = k.monitor.pipeline_of_workflow(workflow_id)
    now = time.time()
    every = data["tasks"]
    shown = every if len(every) <= MAX_DRAWN_TASKS else _most_telling(every)
    drawing = ui_graph.fold_maps(every)
    graph = None
    if len(drawing.names) <= MAX_DRAWN_TASKS:
        try:
            graph = ui_graph.dag_layout(drawing.names, drawing.deps)
        except ui_graph.CycleError:  # refused at submission; never drawn wrong if it happens
            graph = None
    if data.get("parent_task_id") and not data.get("parent_task_name"):
        data["parent_task_name"] = k.monitor.task_name(data["parent_task_id"])
    counts: dict[str, int] = {}
    for t in every:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    gantt = ui_graph.gantt_layout([(t["name"], _spans(t)) for t in shown], now=now, width=1200)
    names = {t["id"]: t["name"] for t in every}
    return _page(
        "ui/run.html",
        "ui/_run.html",
        run=data,
        waiting=[t for t in every if t["status"] == "waiting" and t.get("waiting_signal")],
        signals=[  # a payload is shown like params and results; its key is no secret
            {**s, "payload": redact(s["payload"]), "taken_by_name": names.get(s["taken_by"])}
            for s in k.signals(workflow_id)
        ],
        shown=shown,
        max_drawn=MAX_DRAWN_TASKS,
        pipeline_id=pipeline_id,
        graph=graph,
        boxes=_boxes(workflow_id, every, drawing),
        counts=counts,
        task_states=TASK_STATES,
        gantt=gantt,
        actions=[a for a, ok in RUN_ACTIONS.items() if data["status"] in ok],
        children=data.get("children") or [],
        now=now,
    )


@bp.get(
    "/runs/<int(max=9223372036854775807):workflow_id>/tasks/<int(max=9223372036854775807):task_id>"
)
def task(workflow_id: int, task_id: int) -> Any:
    """One task's panel: params, result, error, every attempt with its traceback, and its
    place among the run's tasks (dependencies, map items, child runs)."""
    data = render_workflow(kiln().workflow(workflow_id))
    by_id = {t["id"]: t for t in data["tasks"]}
    if task_id not in by_id:
        raise NotFound(f"run {workflow_id} has no task {task_id}", id=task_id)
    t = by_id[task_id]
    by_name = {x["name"]: x for x in data["tasks"]}
    return _page(
        "ui/task.html",
        "ui/_task.html",
        run=data,
        task=t,
        attempts=[_attempt(a) for a in t["attempt_history"]],
        upstream=[by_name[n] for n in t["depends_on"] if n in by_name],
        downstream=[x for x in data["tasks"] if t["name"] in x["depends_on"]],
        map_task=by_id.get(t.get("mapped_from")),
        items=sorted(
            (x for x in data["tasks"] if x.get("mapped_from") == task_id),
            key=lambda x: x.get("map_index") or 0,
        ),
        children=[c for c in data.get("children") or [] if c.get("parent_task_id") == task_id],
        params=_pretty(t.get("params")),
        result=_pretty(t.get("result")),
        now=time.time(),
    )


@bp.get("/pipelines")
def pipelines_page() -> Any:
    status = _choice("status", PIPELINE_STATES)
    rows = [
        render_pipeline(p) for p in kiln().pipelines.list(status=status or None, limit=PAGE_SIZE)
    ]
    last_ops = redact(kiln().monitor.last_operations([p["id"] for p in rows]))
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
    rows, total = kiln().operations.list(
        status=status or None, operation=operation or None, limit=PAGE_SIZE, offset=offset
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
    now = dt.datetime.now(dt.UTC)
    items, backlogs, procs = kiln().monitor.instances_overview(now)
    for i in items:
        i["heartbeat_age_s"] = elapsed(_parse(i["heartbeat_at"]), None, now.timestamp())
        i["load"] = i["active_tasks"] / max(i["max_concurrency"] or 1, 1)
        i["backlog_s"], i["backlog_tasks"] = backlogs.get(i["id"], (0.0, 0))
        i["backlog_s"] /= max(i["slots"] or 1, 1)
    return _page(
        "ui/instances.html",
        "ui/_instances.html",
        instances=redact(items),
        processes=procs,
        now=now.timestamp(),
    )


@bp.get("/scheduler")
def scheduler_page() -> Any:
    stats, upcoming = kiln().scheduler.stats(), kiln().scheduler.schedule_next(limit=15)
    for q in upcoming.get("queue", []):
        q["reason"] = _epochs_as_dates(q.get("reason") or "")
    return _page("ui/scheduler.html", "ui/_scheduler.html", stats=stats, upcoming=upcoming)


@bp.get("/schedules")
def schedules_page() -> Any:
    rows = [kiln().schedules.get(s["id"], fires=5) for s in kiln().schedules.list()]
    return _page("ui/schedules.html", "ui/_schedules.html", schedules=rows)


@bp.app_template_filter("in_zone")
def in_zone(value: Any, zone: str) -> str:
    """A time as the wall clock of IANA ``zone`` shows it: ``2026-05-01 02:30 CEST``."""
    seconds = _ts(value)
    if seconds is None:
        return "—"
    try:
        local = dt.datetime.fromtimestamp(seconds, ZoneInfo(zone))
    except (ZoneInfoNotFoundError, ValueError):  # stored checked; never a 500 if not
        return ""
    return local.strftime("%Y-%m-%d %H:%M %Z")


# --- shaping what the pages show ---------------------------------------------------------


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


def _boxes(
    workflow_id: int, every: list[dict[str, Any]], drawing: ui_graph.Drawing
) -> dict[str, dict[str, Any]]:
    """What each box of the graph shows and opens: a task's state and its panel; a box for
    many mapped items, their summed-up state and how many are in each, and the map task's
    panel (which lists them)."""
    by_name = {t["name"]: t for t in every}
    boxes: dict[str, dict[str, Any]] = {}
    for name in drawing.names:
        members = drawing.groups.get(name)
        if members is None:
            t = by_name[name]
            box = {"status": t["status"], "line": str(t["status"]).replace("_", " "), "id": t["id"]}
        else:
            counts: dict[str, int] = {}
            for m in members:
                counts[by_name[m]["status"]] = counts.get(by_name[m]["status"], 0) + 1
            box = {
                "status": ui_graph.group_status(list(counts)),
                "line": f"{len(members)} items · {counts.get('succeeded', 0)} succeeded",
                "id": by_name[drawing.deps[name][0]]["id"],  # the map task
                "counts": counts,
            }
        box["href"] = url_for("ui.task", workflow_id=workflow_id, task_id=box["id"])
        boxes[name] = box
    return boxes


def _attempt(a: dict[str, Any]) -> dict[str, Any]:
    """An attempt with its error split into the summary line and the traceback (an attempt's
    error is stored as the summary, a blank line, and the traceback)."""
    summary, _, trace = (a.get("error") or "").partition("\n\n")
    return {**a, "summary": summary, "traceback": trace}


# A result past this is cut in the panel (the API has it whole).
PANEL_TEXT_LIMIT = 20_000


def _pretty(value: Any) -> str | None:
    if value is None:
        return None
    text = json.dumps(value, indent=2, sort_keys=True, default=str)
    if len(text) > PANEL_TEXT_LIMIT:
        text = text[:PANEL_TEXT_LIMIT] + f"\n… {len(text) - PANEL_TEXT_LIMIT} more characters"
    return text


# Unix seconds (2001 to 2033), as scheduling policies write them into their reasons.
_EPOCH = re.compile(r"\b1\d{9}(?:\.\d+)?\b")


def _epochs_as_dates(text: str) -> str:
    return _EPOCH.sub(lambda m: when(float(m.group())) + " UTC", text)


def _parse(iso: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(iso) if iso else None
