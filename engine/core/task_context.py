"""What a running handler can ask about itself: its task, its attempt, and a way to report
progress. Set by the worker around each handler call."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TaskContext:
    task_id: int
    workflow_id: int
    name: str
    attempt: int
    max_attempts: int
    _report: Callable[[float, str | None], None] = field(repr=False, default=lambda f, m: None)

    def report_progress(self, fraction: float, message: str | None = None) -> None:
        """Record how far the task got (0..1) and what it is doing; stored on the task row
        and shown by the API and CLI. Cheap to call often: writes are throttled."""
        self._report(fraction, message)


_current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "kiln_task", default=None
)


def current_task() -> TaskContext:
    """The task the calling handler is running for; raises outside a handler."""
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError("current_task() is only available inside a running task handler")
    return ctx


def report_progress(fraction: float, message: str | None = None) -> None:
    """Shortcut for ``current_task().report_progress(...)``."""
    current_task().report_progress(fraction, message)


def set_current(ctx: TaskContext | None) -> contextvars.Token:
    return _current.set(ctx)


def reset_current(token: contextvars.Token) -> None:
    _current.reset(token)
