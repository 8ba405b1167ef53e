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
    kind: str = "failed"  # failed | timed_out
    traceback: str | None = None  # the handler's whole traceback, kept on the attempt


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
