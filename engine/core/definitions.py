"""Workflow definitions: parsing and validating the JSON form (``kiln.core.builder`` writes
the same JSON from Python). Pure: no database, no imports of handlers (see
``kiln.core.handlers``)."""

from __future__ import annotations

import heapq
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kiln.core.errors import InvalidDefinition
from kiln.core.limits import (
    DEFAULT_MAX_JSON_DEPTH,
    DEFAULT_MAX_WORKFLOW_TASKS,
    check_count,
    check_json_value,
)
from kiln.core.mapping import ITEM_NAME_CHARS, map_source, uses_placeholders
from kiln.core.pools import QUEUE_NAME
from kiln.core.retry import parse_retry_policy
from kiln.core.templating import find_references
from kiln.core.waits import SIGNAL_HANDLER, SLEEP_HANDLER, duration_s, timestamp
from kiln.core.workflow_task import HANDLER as WORKFLOW_HANDLER

WAIT_FIELDS = ("sleep", "until", "signal", "timeout", "on_timeout")  # kiln.core.waits
TASK_FIELDS = {
    "name", "handler", "model_type", "params", "depends_on", "max_attempts", "timeout_s",
    "priority", "retry",
    "queue", "workflow", "map",
    *WAIT_FIELDS,
}  # fmt: skip
WORKFLOW_FIELDS = {"name", "tasks", "on_error", "priority"}
MAX_ATTEMPTS = 100
PRIORITY_MIN, PRIORITY_MAX = -1000, 1000
DEFAULT_MAX_TIMEOUT_S = 7 * 24 * 3600.0  # KILN_MAX_TIMEOUT_S
SIGNAL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
WORKFLOW_REF = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    handler: str | None = None
    model_type: str | None = None
    params: Any = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    max_attempts: int = 3
    timeout_s: float | None = None
    priority: int = 0
    retry: dict[str, Any] | None = None  # backoff_s, max_backoff_s, jitter, on: kiln.core.retry
    queue: str | None = None  # the worker pool that runs it; None: the default queue
    # kind "workflow": "module:attribute" naming a definition, started as a child run; the
    # task's handler is then kiln.core.workflow_task:run_workflow with params {"workflow": ...}
    workflow: str | None = None
    # kinds sleep and signal (kiln.core.waits): their fields as written, e.g. {"sleep": "PT1H"};
    # the task's handler is then kiln.core.waits:sleep or :signal with params from them
    wait: dict[str, Any] | None = None
    # a map task: the "{{Task.result...}}" list it runs once per item of (kiln.core.mapping)
    map_over: str | None = None


@dataclass(frozen=True)
class WorkflowSpec:
    name: str
    tasks: tuple[TaskSpec, ...]
    on_error: str = "stop"
    priority: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "on_error": self.on_error,
            "priority": self.priority,
            "tasks": [
                {
                    k: v
                    for k, v in {
                        "name": t.name,
                        "handler": None if t.workflow or t.wait else t.handler,
                        "model_type": t.model_type,
                        "params": None if t.workflow or t.wait else t.params,
                        "depends_on": list(t.depends_on),
                        "max_attempts": t.max_attempts,
                        "timeout_s": t.timeout_s,
                        "priority": t.priority,
                        "retry": t.retry,
                        "queue": t.queue,
                        "workflow": t.workflow,
                        "map": t.map_over,
                        **(t.wait or {}),
                    }.items()
                    if v is not None
                }
                for t in self.tasks
            ],
        }


def _fail(message: str, **details: Any) -> InvalidDefinition:
    return InvalidDefinition(message, **details)


def _int(value: Any, where: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _fail(f"{where} must be an integer between {lo} and {hi}", field=where)
    return value


def parse_definition(
    data: Any,
    *,
    max_tasks: int = DEFAULT_MAX_WORKFLOW_TASKS,
    max_depth: int = DEFAULT_MAX_JSON_DEPTH,
    max_timeout_s: float = DEFAULT_MAX_TIMEOUT_S,
) -> WorkflowSpec:
    """Validate a JSON workflow definition; raise :class:`InvalidDefinition` naming the field.

    Checks everything that can be known before running: field names and types, duplicate and
    unknown task names, cycles, and that every ``{{Task.result}}`` reference names a task
    upstream of the one using it. Time and memory are linear in the definition's size (see
    :func:`validate_graph`). More than ``max_tasks`` tasks raise
    :class:`~kiln.core.errors.LimitExceeded` before anything else is checked, and so do
    params nested deeper than ``max_depth``; an integer outside 64 bits or a non-finite float
    in params raises :class:`~kiln.core.errors.InvalidValue`.
    """
    if not isinstance(data, dict):
        raise _fail("a workflow definition must be a JSON object")
    if isinstance(data.get("tasks"), list):
        check_count("tasks", len(data["tasks"]), max_tasks, "KILN_MAX_WORKFLOW_TASKS")
    unknown = sorted(set(data) - WORKFLOW_FIELDS)
    if unknown:
        raise _fail(f"unknown field {unknown[0]!r}", field=unknown[0])
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _fail("'name' is required and must be a non-empty string", field="name")
    on_error = data.get("on_error", "stop")
    if on_error not in ("stop", "continue"):
        raise _fail("'on_error' must be 'stop' or 'continue'", field="on_error")
    priority = _int(data.get("priority", 0), "priority", PRIORITY_MIN, PRIORITY_MAX)
    raw_tasks = data.get("tasks")
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise _fail("'tasks' must be a non-empty list", field="tasks")
    # Before anything recurses into params; the other fields are checked for type and range.
    for i, raw in enumerate(raw_tasks):
        if isinstance(raw, dict) and "params" in raw:
            check_json_value(raw["params"], max_depth=max_depth, where=f"tasks[{i}].params")
    specs = tuple(_parse_task(raw, i, max_timeout_s) for i, raw in enumerate(raw_tasks))
    spec = WorkflowSpec(name=name.strip(), tasks=specs, on_error=on_error, priority=priority)
    validate_graph(spec)
    return spec


def _parse_task(raw: Any, index: int, max_timeout_s: float) -> TaskSpec:
    where = f"tasks[{index}]"
    if not isinstance(raw, dict):
        raise _fail(f"{where} must be an object", field=where)
    unknown = sorted(set(raw) - TASK_FIELDS)
    if unknown:
        raise _fail(f"{where}: unknown field {unknown[0]!r}", field=f"{where}.{unknown[0]}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip() or "{" in name or "}" in name:
        raise _fail(f"{where}.name must be a non-empty string without braces", field=where)
    if ITEM_NAME_CHARS & set(name):
        raise _fail(
            f"{where}.name {name!r} may not contain '[' or ']' (reserved for mapped items, "
            "Name[0], Name[1]...)",
            field=f"{where}.name",
        )
    name = name.strip()
    wait = _parse_wait(raw, name, where)
    if wait is not None:
        kind, _, handler, params = wait
        taken = [k for k in ("handler", "model_type", "workflow", "map") if raw.get(k) is not None]
        if taken or raw.get("params") not in (None, {}):
            field = taken[0] if taken else "params"
            raise _fail(
                f"task {name!r}: a {kind} task takes no {field} (it waits; its result is "
                f"{'the time it slept until' if kind == 'sleep' else 'the signal payload'})",
                field=f"{where}.{field}",
            )
        raw = {**raw, "handler": handler, "params": params}
    handler, model_type = raw.get("handler"), raw.get("model_type")
    workflow = raw.get("workflow")
    if [handler, model_type, workflow].count(None) != 2:
        raise _fail(
            f"task {name!r}: give exactly one of 'handler', 'model_type' or 'workflow' (or "
            "make it a 'sleep', 'until' or 'signal' task)",
            field=f"{where}",
        )
    if workflow is not None:
        if not isinstance(workflow, str) or not WORKFLOW_REF.fullmatch(workflow.strip()):
            raise _fail(
                f"task {name!r}: workflow must name a definition as 'package.module:attribute'",
                field=f"{where}.workflow",
            )
        if raw.get("params") not in (None, {}):
            raise _fail(
                f"task {name!r}: a task of kind workflow takes no params (its child run is the "
                "named definition)",
                field=f"{where}.params",
            )
        workflow = workflow.strip()
        handler, raw = WORKFLOW_HANDLER, {**raw, "params": {"workflow": workflow}}
    for label, value in (("handler", handler), ("model_type", model_type)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise _fail(f"task {name!r}: {label} must be a non-empty string", field=label)
    params = raw.get("params", {})
    try:
        json.dumps(params)
    except (TypeError, ValueError):
        raise _fail(f"task {name!r}: params must be JSON", field=f"{where}.params") from None
    depends_on = raw.get("depends_on", [])
    if not isinstance(depends_on, list) or not all(isinstance(d, str) for d in depends_on):
        raise _fail(
            f"task {name!r}: depends_on must be a list of task names", field=f"{where}.depends_on"
        )
    map_over = _parse_map(raw.get("map"), name, where, workflow)
    if map_over is None and uses_placeholders(params):
        raise _fail(
            f"task {name!r}: {{{{item}}}} and {{{{index}}}} are allowed only in the params of a "
            "task with 'map'",
            field=f"{where}.params",
        )
    if map_over is not None:  # the mapped list's task is a dependency, written or not
        source = map_source(map_over)
        depends_on = [*depends_on, *([source] if source not in depends_on else [])]
    timeout = raw.get("timeout_s")
    # Bounded: a worker waits on a timer, and a timer past TIMEOUT_MAX raises OverflowError.
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= max_timeout_s
    ):
        raise _fail(
            f"task {name!r}: timeout_s must be a number of seconds above 0 and at most "
            f"{max_timeout_s:g} (KILN_MAX_TIMEOUT_S)",
            field=f"{where}.timeout_s",
        )
    max_attempts = _int(raw.get("max_attempts", 3), f"{where}.max_attempts", 1, MAX_ATTEMPTS)
    retry = None
    if raw.get("retry") is not None:
        retry = parse_retry_policy(raw["retry"], f"{where}.retry", max_attempts_limit=MAX_ATTEMPTS)
        # retry.max_attempts overrides the task's own; stored once, as the task's.
        max_attempts = retry.pop("max_attempts", max_attempts)
    queue = raw.get("queue")
    if queue is not None and not (isinstance(queue, str) and QUEUE_NAME.fullmatch(queue)):
        raise _fail(
            f"task {name!r}: queue must be a name of 1 to 64 characters among a-z 0-9 _ -",
            field=f"{where}.queue",
        )
    return TaskSpec(
        name=name,
        handler=handler.strip() if handler else None,
        model_type=model_type.strip() if model_type else None,
        params=params,
        depends_on=tuple(d.strip() for d in depends_on),
        max_attempts=max_attempts,
        timeout_s=float(timeout) if timeout is not None else None,
        priority=_int(raw.get("priority", 0), f"{where}.priority", PRIORITY_MIN, PRIORITY_MAX),
        queue=queue,
        retry=retry or None,
        workflow=workflow,
        map_over=map_over,
        wait=wait[1] if wait is not None else None,
    )


def _parse_wait(raw: dict[str, Any], name: str, where: str) -> Any:
    """``(kind, its fields as written, handler, params)`` for a sleep or signal task; None
    for any other."""
    present = [k for k in WAIT_FIELDS if raw.get(k) is not None]
    if not present:
        return None
    sleep, until, signal = raw.get("sleep"), raw.get("until"), raw.get("signal")
    if signal is None:
        if sleep is not None and until is not None or set(present) - {"sleep", "until"}:
            raise _fail(
                f"task {name!r}: a sleep task gives 'sleep' (a duration) or 'until' (a time); "
                "'timeout' and 'on_timeout' belong to a signal task",
                field=f"{where}.{present[-1]}",
            )
        try:
            if sleep is not None:
                seconds = duration_s(sleep)
                return "sleep", {"sleep": sleep}, SLEEP_HANDLER, {"seconds": seconds}
            return "sleep", {"until": until}, SLEEP_HANDLER, {"until": timestamp(until).isoformat()}
        except ValueError as exc:
            field = "sleep" if sleep is not None else "until"
            raise _fail(f"task {name!r}: {field}: {exc}", field=f"{where}.{field}") from None
    if sleep is not None or until is not None:
        raise _fail(
            f"task {name!r}: give 'signal' or 'sleep'/'until', not both",
            field=f"{where}.signal",
        )
    if not isinstance(signal, str) or not SIGNAL_NAME.fullmatch(signal):
        raise _fail(
            f"task {name!r}: signal must be a name of 1 to 64 characters among A-Z a-z 0-9 _ . -",
            field=f"{where}.signal",
        )
    fields: dict[str, Any] = {"signal": signal}
    params: dict[str, Any] = {"signal": signal}
    timeout, on_timeout = raw.get("timeout"), raw.get("on_timeout")
    if timeout is not None:
        try:
            params["timeout_s"] = duration_s(timeout)
        except ValueError as exc:
            raise _fail(f"task {name!r}: timeout: {exc}", field=f"{where}.timeout") from None
        fields["timeout"] = timeout
    if on_timeout is not None:
        if timeout is None:
            raise _fail(f"task {name!r}: on_timeout needs a timeout", field=f"{where}.on_timeout")
        if not (
            on_timeout == "fail"
            or isinstance(on_timeout, dict)
            and list(on_timeout) == ["continue"]
        ):
            raise _fail(
                f'task {name!r}: on_timeout must be "fail" or {{"continue": VALUE}} '
                "(VALUE becomes the task's result)",
                field=f"{where}.on_timeout",
            )
        params["on_timeout"] = fields["on_timeout"] = on_timeout
    return "signal", fields, SIGNAL_HANDLER, params


def _parse_map(value: Any, name: str, where: str, workflow: str | None) -> str | None:
    """A task's ``map``: exactly one ``{{Task.result...}}`` reference (None when absent)."""
    if value is None:
        return None
    if not isinstance(value, str) or map_source(value) is None:
        raise _fail(
            f"task {name!r}: map must be exactly one reference to a list in an upstream "
            "result, such as '{{Split.result.chunks}}'",
            field=f"{where}.map",
        )
    if workflow is not None:
        raise _fail(
            f"task {name!r}: a task of kind workflow cannot be mapped", field=f"{where}.map"
        )
    return value.strip()


def validate_graph(spec: WorkflowSpec) -> list[str]:
    """Check names, edges, cycles and references; return the task names in topological order.

    Linear in tasks + edges, except for references to a task that is not a direct dependency:
    those cost one pass over the graph per :data:`_REACH_CHUNK` distinct referenced tasks,
    with memory bounded by tasks x ``_REACH_CHUNK`` bits (see :func:`_check_upstream`).
    """
    names: dict[str, TaskSpec] = {}
    for t in spec.tasks:
        if t.name in names:
            raise _fail(f"duplicate task name {t.name!r}", task=t.name)
        names[t.name] = t
    for t in spec.tasks:
        if t.map_over is not None and map_source(t.map_over) not in names:
            raise _fail(
                f"task {t.name!r} maps over unknown task {map_source(t.map_over)!r}", task=t.name
            )
        for dep in t.depends_on:
            if dep not in names:
                raise _fail(f"task {t.name!r} depends on unknown task {dep!r}", task=t.name)
            if dep == t.name:
                raise _fail(f"task {t.name!r} depends on itself", task=t.name)
    order = _topological_order(spec.tasks)
    # References to a direct dependency are upstream by definition; only the others need a
    # reachability check.
    indirect: dict[str, list[str]] = {}
    for name in order:
        t = names[name]
        for ref in sorted(find_references(t.params)):
            if ref not in names:
                raise _fail(f"task {name!r} references unknown task {ref!r}", task=name)
            if ref not in t.depends_on:
                indirect.setdefault(name, []).append(ref)
    if indirect:
        _check_upstream(order, names, indirect)
    return order


# Referenced tasks tracked per pass: each task then holds at most this many bits.
_REACH_CHUNK = 2048


def _check_upstream(
    order: list[str], names: dict[str, TaskSpec], indirect: dict[str, list[str]]
) -> None:
    """Raise unless each ``indirect[task]`` names only ancestors of ``task``.

    Keeping every task's full ancestor set is quadratic (a 10,000-task chain held 50 million
    entries). Instead, one pass in topological order gives each task a bitmask of the
    *referenced* tasks at or above it, for up to ``_REACH_CHUNK`` of them at a time."""
    targets = sorted({ref for refs in indirect.values() for ref in refs})
    for start in range(0, len(targets), _REACH_CHUNK):
        bit = {ref: 1 << i for i, ref in enumerate(targets[start : start + _REACH_CHUNK])}
        reach: dict[str, int] = {}
        for name in order:
            above = 0
            for dep in names[name].depends_on:
                above |= reach[dep]
            reach[name] = above | bit.get(name, 0)
            for ref in indirect.get(name, ()):
                if ref in bit and not above & bit[ref]:
                    raise _fail(
                        f"task {name!r} references {ref!r}, which is not upstream of it "
                        f"(add {ref!r} to its depends_on)",
                        task=name,
                    )


def _topological_order(tasks: Iterable[TaskSpec]) -> list[str]:
    tasks = list(tasks)
    position = {t.name: i for i, t in enumerate(tasks)}
    indegree = {t.name: len(set(t.depends_on)) for t in tasks}
    children: dict[str, list[str]] = {t.name: [] for t in tasks}
    for t in tasks:
        for dep in set(t.depends_on):
            children[dep].append(t.name)
    heap = [(position[n], n) for n, d in indegree.items() if d == 0]
    heapq.heapify(heap)
    order: list[str] = []
    while heap:
        _, name = heapq.heappop(heap)
        order.append(name)
        for child in children[name]:
            indegree[child] -= 1
            if indegree[child] == 0:
                heapq.heappush(heap, (position[child], child))
    if len(order) != len(tasks):
        stuck = sorted(n for n, d in indegree.items() if d > 0)
        raise _fail(f"the dependencies form a cycle among {stuck}", tasks=stuck)
    return order


# --- the Python builder ---------------------------------------------------------------
