"""What a running handler can ask about itself: its task, its attempt, and a way to report
progress. Set by the worker around each handler call."""

from __future__ import annotations

import contextvars
import datetime as dt
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kiln.core.children import ChildRun, ChildRunner, TaskSuspended, wait_all
from kiln.core.clock import aware as _aware
from kiln.core.clock import utcnow as _utcnow
from kiln.core.errors import SignalTimeout, TaskCancelled
from kiln.core.execution import Suspension


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
    attempt: int  # the try: 1 on the first, +1 per retry; a resume after waiting keeps it
    max_attempts: int
    state: Any = None  # what the handler saved when it last waited (sleep_until)
    _report: Callable[[float, str | None], None] = field(repr=False, default=lambda f, m: None)
    _cancellation: Cancellation = field(repr=False, default_factory=Cancellation)
    _children: ChildRunner | None = field(repr=False, default=None)

    def start_child(self, workflow: Any, *, key: str) -> ChildRun:
        """Start ``workflow`` (a ``Workflow``, a definition dict, or ``"module:attribute"``
        naming one in an allowed module) as a child run of this task, once per try and
        ``key``: calling it again with the same key, as a resumed handler does, returns the
        same run. See :mod:`kiln.core.children`."""
        if self._children is None:
            raise RuntimeError("child runs can only be started from a task run by a worker")
        if not isinstance(key, str) or not key:
            raise ValueError("start_child needs a non-empty string key")
        return ChildRun(self._children, self._children.start(workflow, key), key)

    def sleep_until(self, when: dt.datetime, state: Any = None) -> None:
        """Return at once if ``when`` has passed; otherwise stop here and run this handler
        again from the top at ``when``, with :attr:`state` set to ``state`` (any JSON). No
        worker thread is held meanwhile, and the sleep survives every process restarting.
        Compute ``when`` from :attr:`state` on the next run, not from the clock again::

            ctx = current_task()
            if ctx.state is None:
                ctx.sleep_until(utcnow() + timedelta(hours=1), state={"until": ...})
        """
        when = _aware(when)
        if _utcnow() >= when:
            return
        raise TaskSuspended(Suspension(wake_at=when, state=state))

    def wait_for_signal(
        self, name: str, *, until: dt.datetime | None = None, state: Any = None
    ) -> Any:
        """The payload of a signal ``name`` sent to this run (``POST
        /workflows/<id>/signals/<name>``), sent before or after this call; until one comes
        the task waits (no thread held) and this handler runs again when it does. Raises
        :class:`~kiln.SignalTimeout` once ``until`` passed without one. ``state`` as for
        :meth:`sleep_until` (keep ``until`` there)."""
        if self._children is None:
            raise RuntimeError("signals can only be received by a task run by a worker")
        found, payload = self._children.take_signal(name)
        if found:
            return payload
        if until is not None:
            until = _aware(until)
            if _utcnow() >= until:
                raise SignalTimeout(
                    f"no signal {name!r} before {until:%Y-%m-%d %H:%M:%S} UTC", signal=name
                )
        raise TaskSuspended(Suspension(signal=name, wake_at=until, state=state))

    def wait_all(self, runs: Iterable[ChildRun]) -> list[dict[str, Any]]:
        """The results of every run in order once all ended; the task waits (no thread
        held) until then. See :func:`kiln.core.children.wait_all`."""
        return wait_all(runs)

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
