"""The Python builder of workflow definitions: :class:`Workflow` gives the same JSON the API
takes (``to_definition()``), validated by :func:`kiln.core.definitions.parse_definition`. Pure:
no database, no imports of handlers (a handler is named by ``kiln.core.handlers``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from typing import Any

from kiln.core.definitions import WorkflowSpec, parse_definition
from kiln.core.errors import InvalidDefinition
from kiln.core.handlers import handler_name
from kiln.core.retry import exception_name


class Ref:
    """A reference to (part of) a task's result, usable anywhere inside params."""

    def __init__(self, task: str, path: tuple[str, ...] = ()) -> None:
        self.task, self.path = task, path

    def __getitem__(self, key: str | int) -> Ref:
        return Ref(self.task, (*self.path, str(key)))

    def __getattr__(self, key: str) -> Ref:
        if key.startswith("_"):
            raise AttributeError(key)
        return self[key]

    def __str__(self) -> str:
        return "{{" + ".".join((self.task, "result", *self.path)) + "}}"

    __repr__ = __str__


class TaskNode:
    def __init__(self, name: str) -> None:
        self.name = name
        self.result = Ref(name)


class Placeholder:
    """Inside a map task's params: its item (:data:`item`, ``{{item}}``) or the item's place
    in the list (:data:`index`, ``{{index}}``), filled in for each mapped task."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __str__(self) -> str:
        return "{{" + self.what + "}}"

    __repr__ = __str__


item = Placeholder("item")
index = Placeholder("index")


def _plain(value: Any) -> Any:
    if isinstance(value, Ref | Placeholder):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _plain_retry(retry: Any) -> Any:
    """``retry`` with exception classes in ``on`` written as ``module:QualName``."""
    if not isinstance(retry, dict) or not isinstance(retry.get("on"), list | tuple):
        return retry
    on = [exception_name(n) if isinstance(n, type) else n for n in retry["on"]]
    return {**retry, "on": on}


class Workflow:
    """Build a workflow in Python; ``to_definition()`` gives the same JSON the API takes.

    >>> wf = Workflow("etl")
    >>> a = wf.add("fetch", params={"url": "https://example.org"})
    >>> b = wf.add("count", params={"rows": a.result["rows"]}, depends_on=[a])
    """

    def __init__(self, name: str, *, on_error: str = "stop", priority: int = 0) -> None:
        self.name, self.on_error, self.priority = name, on_error, priority
        self._tasks: list[dict[str, Any]] = []

    def add(
        self,
        handler: Callable[..., Any] | str | None = None,
        *,
        name: str | None = None,
        model_type: str | None = None,
        params: Any = None,
        depends_on: Iterable[TaskNode | str] = (),
        max_attempts: int = 3,
        timeout_s: float | None = None,
        priority: int = 0,
        retry: dict[str, Any] | None = None,
        queue: str | None = None,
    ) -> TaskNode:
        handler_ref = handler_name(handler) if handler is not None else None
        task_name = name or (handler_ref.rsplit(":", 1)[-1] if handler_ref else model_type)
        if not task_name:
            raise InvalidDefinition("a task needs a name, a handler or a model_type")
        entry: dict[str, Any] = {
            "name": task_name,
            "params": _plain(params if params is not None else {}),
            "depends_on": [d.name if isinstance(d, TaskNode) else d for d in depends_on],
            "max_attempts": max_attempts,
            "priority": priority,
        }
        if handler_ref is not None:
            entry["handler"] = handler_ref
        if model_type is not None:
            entry["model_type"] = model_type
        if timeout_s is not None:
            entry["timeout_s"] = timeout_s
        if retry is not None:
            entry["retry"] = _plain_retry(retry)
        if queue is not None:
            entry["queue"] = queue
        self._tasks.append(entry)
        return TaskNode(task_name)

    def map(
        self,
        handler: Callable[..., Any] | str | None = None,
        *,
        over: Ref | str,
        name: str | None = None,
        model_type: str | None = None,
        params: Any = None,
        depends_on: Iterable[TaskNode | str] = (),
        max_attempts: int = 3,
        timeout_s: float | None = None,
        priority: int = 0,
        retry: dict[str, Any] | None = None,
        queue: str | None = None,
    ) -> TaskNode:
        """A task run once per item of the list ``over`` (``split.result["chunks"]``), known
        when that result exists; :data:`item` and :data:`index` in ``params`` become each
        item and its place. Its result, for tasks downstream, is the items' results in order.

        >>> wf = Workflow("csv")
        >>> split = wf.add("m:split")
        >>> agg = wf.map("m:agg", over=split.result["chunks"], params={"chunk": item})
        """
        node = self.add(
            handler,
            name=name,
            model_type=model_type,
            params=params,
            depends_on=depends_on,
            max_attempts=max_attempts,
            timeout_s=timeout_s,
            priority=priority,
            retry=retry,
            queue=queue,
        )
        self._tasks[-1]["map"] = str(over)
        return node

    def add_workflow(
        self,
        workflow: str,
        *,
        name: str | None = None,
        depends_on: Iterable[TaskNode | str] = (),
        max_attempts: int = 3,
        timeout_s: float | None = None,
        priority: int = 0,
    ) -> TaskNode:
        """A task of kind ``workflow``: runs the definition ``workflow`` names
        (``"package.module:attribute"``, a ``Workflow`` or a definition dict there) as a
        child run and waits for it; its result is the child's results."""
        task_name = name or workflow.rsplit(":", 1)[-1]
        entry: dict[str, Any] = {
            "name": task_name,
            "workflow": workflow,
            "depends_on": [d.name if isinstance(d, TaskNode) else d for d in depends_on],
            "max_attempts": max_attempts,
            "priority": priority,
        }
        if timeout_s is not None:
            entry["timeout_s"] = timeout_s
        self._tasks.append(entry)
        return TaskNode(task_name)

    def add_sleep(
        self,
        name: str,
        *,
        seconds: float | None = None,
        until: dt.datetime | str | None = None,
        depends_on: Iterable[TaskNode | str] = (),
    ) -> TaskNode:
        """A task of kind ``sleep``: ready ``seconds`` after it first runs, or at ``until``
        (an aware datetime or ISO 8601 string). No worker is held meanwhile."""
        when: dict[str, Any] = (
            {"sleep": seconds}
            if until is None
            else {"until": until.isoformat() if isinstance(until, dt.datetime) else until}
        )
        return self._add_kind(name, when, depends_on)

    def add_signal(
        self,
        name: str,
        *,
        signal: str | None = None,
        timeout_s: float | None = None,
        on_timeout: Any = None,
        depends_on: Iterable[TaskNode | str] = (),
    ) -> TaskNode:
        """A task of kind ``signal``: waits for ``POST /workflows/<id>/signals/<signal>``
        (``signal`` defaults to ``name``); its result is the payload. ``on_timeout``:
        ``"fail"`` (the default) or ``{"continue": VALUE}``."""
        fields: dict[str, Any] = {"signal": signal or name}
        if timeout_s is not None:
            fields["timeout"] = timeout_s
        if on_timeout is not None:
            fields["on_timeout"] = on_timeout
        return self._add_kind(name, fields, depends_on)

    def _add_kind(
        self, name: str, fields: dict[str, Any], depends_on: Iterable[TaskNode | str]
    ) -> TaskNode:
        deps = [d.name if isinstance(d, TaskNode) else d for d in depends_on]
        self._tasks.append({"name": name, **fields, "depends_on": deps})
        return TaskNode(name)

    def to_definition(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "on_error": self.on_error,
            "priority": self.priority,
            "tasks": [dict(t) for t in self._tasks],
        }

    def spec(self) -> WorkflowSpec:
        return parse_definition(self.to_definition())
