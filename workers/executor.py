"""Running a batch of claimed tasks in a worker thread: claim, call handlers (with time
limits and progress), and record outcomes in as few transactions as the batch allows."""

from __future__ import annotations

import inspect
import json
import logging
import threading
import time
import weakref

from kiln.app import tracing
from kiln.app.logs import log_outcomes
from kiln.app.runtime import Kiln
from kiln.core.children import TaskSuspended
from kiln.core.clock import utcnow
from kiln.core.errors import (
    DatabaseUnavailable,
    PermanentFailure,
    TaskCancelled,
    UnknownHandler,
)
from kiln.core.execution import ClaimedTask, Outcome
from kiln.core.failures import full_traceback, summary
from kiln.core.handlers import resolve_handler
from kiln.core.retry import retries_on
from kiln.core.task_context import Cancellation, TaskContext, reset_current, set_current
from kiln.workers.coroutines import run_awaitable
from kiln.workers.timeouts import TimedOut, call_with_timeout

log = logging.getLogger("kiln.worker")
FLUSH_AFTER_S = 0.05  # record finished tasks at least this often within a long batch
PROGRESS_EVERY_S = 0.5
RECORD_PATIENCE_S = 30.0


class HeldTasks:
    """The ``(task_id, attempt)`` pairs this process is working on, each with its cancel
    flag. Only these have their leases extended by the heartbeat, so a batch abandoned
    half-way is recovered; those the database says no longer run here are flagged."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[tuple[int, int], Cancellation] = {}

    def add(self, tasks: list[ClaimedTask]) -> None:
        with self._lock:
            for t in tasks:
                self._held.setdefault((t.id, t.attempt), Cancellation())

    def discard(self, tasks: list[ClaimedTask]) -> None:
        with self._lock:
            for t in tasks:
                self._held.pop((t.id, t.attempt), None)

    def snapshot(self) -> list[tuple[int, int]]:
        with self._lock:
            return sorted(self._held)

    def cancellation(self, task: ClaimedTask) -> Cancellation:
        """The flag of a held task (a fresh one for a task not held)."""
        with self._lock:
            return self._held.get((task.id, task.attempt)) or Cancellation()

    def cancel(self, pairs: list[tuple[int, int]], reason: str) -> None:
        with self._lock:
            flags = [self._held[p] for p in pairs if p in self._held]
        for flag in flags:
            flag.cancel(reason)


_held: weakref.WeakKeyDictionary[Kiln, HeldTasks] = weakref.WeakKeyDictionary()
_held_lock = threading.Lock()


def held_for(kiln: Kiln) -> HeldTasks:
    """The tasks held on ``kiln``'s database. One registry per database handle: two embedded
    runtimes in one process (tests) number their tasks alike, and must not share flags."""
    with _held_lock:
        tasks = _held.get(kiln)
        if tasks is None:
            tasks = _held[kiln] = HeldTasks()
        return tasks


def execute_batch(kiln: Kiln, items: list[tuple[int, int]], worker_id: str) -> int:
    """Claim and run the given ``(task_id, attempt)`` items; return how many ran."""
    claimed = kiln.claim(items, worker_id)
    held = held_for(kiln)
    held.add(claimed)
    try:
        pending: list[Outcome] = []
        last_flush = time.monotonic()
        for task in claimed:
            pending.append(tracing.attempt(run_one, kiln, task))
            if time.monotonic() - last_flush >= FLUSH_AFTER_S:
                record(kiln, pending)
                held.discard([o.task for o in pending])
                pending, last_flush = [], time.monotonic()
        if pending:
            record(kiln, pending)
    finally:
        held.discard(claimed)
    return len(claimed)


def record(kiln: Kiln, outcomes: list[Outcome]) -> None:
    """Record outcomes, waiting out a short database outage (a restart takes seconds) rather
    than throwing finished work away; past ``RECORD_PATIENCE_S`` give up and let the leases
    expire, so the tasks run again."""
    deadline = time.monotonic() + RECORD_PATIENCE_S
    delay = 0.1
    while True:
        try:
            with tracing.recording(outcomes):
                log_outcomes(outcomes, kiln.record(outcomes))
            return
        except DatabaseUnavailable:
            if time.monotonic() > deadline:
                raise
            log.warning("database unavailable while recording %d results; retrying", len(outcomes))
            time.sleep(delay)
            delay = min(2.0, delay * 2)


def _timeout(task: ClaimedTask) -> str:
    return f"timed out after {task.timeout_s:g}s (timeout_s) on attempt {task.attempt}"


def _progress_writer(kiln: Kiln, task: ClaimedTask):  # type: ignore[no-untyped-def]
    last = [0.0]

    def report(fraction: float, message: str | None) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S or fraction >= 1.0:
            last[0] = now
            kiln.report_progress(task.id, task.attempt, fraction, message)

    return report


class Children:
    """What ``current_task().start_child`` and a child run's ``result()`` call: the
    application API, for this task's attempt (see :mod:`kiln.core.children`)."""

    def __init__(self, kiln: Kiln, task: ClaimedTask) -> None:
        self._kiln, self._task = kiln, task

    def start(self, definition: object, key: str) -> int:
        return self._kiln.start_child(self._task, definition, key)

    def read(self, run_id: int) -> dict:  # type: ignore[type-arg]
        return self._kiln.workflow(run_id)

    def take_signal(self, name: str) -> tuple[bool, object]:
        return self._kiln.take_signal(self._task, name)


def run_one(kiln: Kiln, task: ClaimedTask) -> Outcome:
    started = utcnow()

    def failed(error: str, *, retryable: bool = True, kind: str = "failed") -> Outcome:
        return Outcome(
            task, ok=False, started_at=started, finished_at=utcnow(), error=error,
            retryable=retryable, kind=kind,
        )  # fmt: skip

    if task.param_error:
        return failed(task.param_error, retryable=False)
    if task.handler is None and task.model_type is not None:
        from kiln.workers.instance_tasks import run_instance_task

        return run_instance_task(kiln, task)
    if task.handler is None:
        return failed(f"task {task.name!r} has no handler", retryable=False)
    try:
        # Also refuses rows written before handlers were checked against the allowlist.
        fn = resolve_handler(task.handler, kiln.settings.handler_modules)
    except UnknownHandler as exc:
        return failed(exc.message, retryable=False)
    cancellation = held_for(kiln).cancellation(task)
    if cancellation.is_set:  # cancelled while waiting its turn in the batch
        return failed(f"task cancelled: {cancellation.reason}", retryable=False)
    ctx = TaskContext(
        task_id=task.id,
        workflow_id=task.workflow_id,
        name=task.name,
        attempt=task.try_,
        max_attempts=task.max_attempts,
        state=task.state,
        _report=_progress_writer(kiln, task),
        _cancellation=cancellation,
        _children=Children(kiln, task),
    )
    token = set_current(ctx)
    try:
        params = task.params

        def call() -> object:
            out = fn(**params) if isinstance(params, dict) else fn(params)
            # An ``async def`` handler (or one returning an awaitable) runs on its own loop.
            return run_awaitable(out, cancellation) if inspect.isawaitable(out) else out

        result = call_with_timeout(
            tracing.handler(task, call),
            task.timeout_s,
            on_timeout=lambda: cancellation.cancel(_timeout(task)),
        )
    except TaskSuspended as wait:  # it waits (child runs, a time, a signal): no thread held
        outcome = failed(str(wait), retryable=False, kind="waiting")
        outcome.suspension = wait.suspension
        return outcome
    except TimedOut:
        return failed(_timeout(task), kind="timed_out")
    except TaskCancelled as exc:  # the attempt is over (its result would be refused anyway)
        return failed(exc.message, retryable=False)
    except PermanentFailure as exc:
        return failed(f"{exc.message}", retryable=False)
    except Exception as exc:  # noqa: BLE001 - a handler's failure is data, recorded on the task
        # Retried unless the task's policy names other exceptions ("on" needs the class).
        outcome = failed(summary(exc), retryable=retries_on(exc, (task.retry or {}).get("on")))
        outcome.traceback = full_traceback(exc)
        return outcome
    finally:
        reset_current(token)
    try:
        size = len(json.dumps(result))  # ASCII: characters are bytes
    except (TypeError, ValueError) as exc:
        return failed(f"result is not JSON-serialisable: {exc}", retryable=False)
    limit = kiln.settings.max_result_bytes
    if size > limit:  # rows and API responses carry results whole: pass big data by reference
        return failed(
            f"result is {_size(size)}, over KILN_MAX_RESULT_BYTES ({_size(limit)}): "
            "store it elsewhere and return a reference",
            retryable=False,
        )
    return Outcome(task, ok=True, started_at=started, finished_at=utcnow(), result=result)


def _size(n: int) -> str:
    """``1.2 MB``, ``1 MB``, ``512 kB``, ``900 bytes`` (decimal units)."""
    for unit, scale in (("MB", 1_000_000), ("kB", 1_000)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"
