"""What a running handler can ask about itself: its task, its attempt, and a way to report
progress. Set by the worker around each handler call."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from kiln.core.errors import TaskCancelled


class Cancellation:
    """A task attempt's cancel flag, set from another thread (the worker's lease watcher, or
    the time limit); callbacks run once when it is set (an async handler's registers one that
    cancels its coroutine)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reason: str | None = None
        self._callbacks: list[Callable[[], None]] = []

    @property
    def is_set(self) -> bool:
        return self._reason is not None

    @property
    def reason(self) -> str | None:
        return self._reason

    def cancel(self, reason: str) -> None:
        with self._lock:
            if self._reason is not None:
                return
            self._reason = reason
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when cancelled (now, if already cancelled)."""
        with self._lock:
            if self._reason is None:
                self._callbacks.append(callback)
                return
        callback()


@dataclass(frozen=True)
class TaskContext:
    task_id: int
    workflow_id: int
    name: str
    attempt: int
    max_attempts: int
    _report: Callable[[float, str | None], None] = field(repr=False, default=lambda f, m: None)
    _cancellation: Cancellation = field(repr=False, default_factory=Cancellation)

    @property
    def cancelled(self) -> bool:
        """True once this attempt should stop: its run was cancelled, it ran past its
        ``timeout_s``, or the task moved on to another attempt. Seen within about a second."""
        return self._cancellation.is_set

    def report_progress(self, fraction: float, message: str | None = None) -> None:
        """Record how far the task got (0..1) and what it is doing; stored on the task row
        and shown by the API and CLI. Cheap to call often: writes are throttled. Raises
        :class:`~kiln.TaskCancelled` once the attempt is :attr:`cancelled`."""
        if self._cancellation.is_set:
            raise TaskCancelled(f"task cancelled: {self._cancellation.reason}")
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
