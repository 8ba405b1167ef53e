"""What travels between the store, controllers and workers while a task runs: a lease to send
(:class:`Dispatch`), a claimed task (:class:`ClaimedTask`), what a worker saw running it
(:class:`Outcome`), and what recording outcomes or a recovery pass changed."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Dispatch:
    """A task leased for dispatch: the message to send carries ``(task_id, attempt)``."""

    task_id: int
    attempt: int
    workflow_id: int
    # A model_type task waits on a TaskInstance for most of its run: it gets a message (and
    # so a worker thread) of its own instead of sharing a batch with others.
    alone: bool = False
    queue: str | None = None  # the task's worker pool; None: the default queue


@dataclass(frozen=True)
class Suspension:
    """What a handler that stopped to wait waits for (kiln.core.children, kiln.core.waits):
    child runs to end, a time (``wake_at``), or a signal (until ``wake_at``, if set). ``state``
    is what its next run finds in ``current_task().state`` (None: keep the saved one)."""

    runs: tuple[int, ...] = ()
    wake_at: dt.datetime | None = None
    signal: str | None = None
    state: Any = None

    def reason(self) -> str:
        if self.signal is not None:
            until = f" until {self.wake_at:%Y-%m-%d %H:%M:%S} UTC" if self.wake_at else ""
            return f"waiting for signal {self.signal!r}{until}"
        if self.wake_at is not None:
            return f"sleeping until {self.wake_at:%Y-%m-%d %H:%M:%S} UTC"
        n = len(self.runs)
        return f"waiting for {n} child run{'s' if n != 1 else ''} to end"


@dataclass
class ClaimedTask:
    id: int
    attempt: int
    workflow_id: int
    name: str
    handler: str | None
    model_type: str | None
    params: Any
    timeout_s: float | None
    max_attempts: int
    param_error: str | None = None
    retry: dict[str, Any] | None = None  # the task's own policy; None: the deployment's
    resumes: int = 0  # claims that resumed it after waiting; attempt - resumes is its try
    state: Any = None  # what its handler saved when it last waited (sleep_until)
    trace_context: str | None = None  # its run's W3C traceparent (kiln.app.tracing)

    @property
    def try_(self) -> int:
        """1 on the first try, + 1 per retry; resuming after a wait keeps it."""
        return self.attempt - self.resumes


@dataclass
class Outcome:
    """What a worker observed running one claimed task."""

    task: ClaimedTask
    ok: bool
    started_at: dt.datetime
    finished_at: dt.datetime
    result: Any = None
    error: str | None = None
    retryable: bool = True
    kind: str = "failed"  # failed | timed_out | lost | waiting
    traceback: str | None = None  # the handler's whole traceback, kept on the attempt
    suspension: Suspension | None = None  # kind "waiting": what the task waits for


@dataclass
class RecordReport:
    applied: list[int] = field(default_factory=list)
    stale: list[int] = field(default_factory=list)
    readied: list[int] = field(default_factory=list)
    dispatched: list[Dispatch] = field(default_factory=list)  # for the caller to send


@dataclass
class Recovery:
    resend: list[Dispatch] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)  # running tasks whose worker vanished
    quarantined: list[int] = field(default_factory=list)
