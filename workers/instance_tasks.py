"""Running a claimed ``model_type`` task on a TaskInstance.

The worker places the attempt on an instance (``kiln.instances.place``),
enqueues it there under the id ``kiln-<task>-<attempt>`` (so a retried enqueue never runs
it twice), polls its result, copies the instance's progress into the task, and records the
measured execution time (``tasks.actual_s`` and an ``observations`` row the predictor
learns from).

Task parameters: ``{"input_data": ..., "metadata": {...}}``; parameters without
``input_data`` are sent as the input data themselves. ``metadata`` is what the instance
(and the predictor) read, e.g. ``input_tokens`` and ``output_tokens``.

If the instance dies, polling fails and the attempt is recorded as a retryable failure; if
the worker dies, its lease expires and the controller recovers the task; if the controller
declares the instance lost first, the attempt is re-queued there and this worker's late
outcome is refused as stale.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kiln.app.instances import LiveInstance, instance_task_id
from kiln.app.predictor import task_metadata
from kiln.app.runtime import Kiln
from kiln.core.clock import utcnow
from kiln.core.execution import ClaimedTask, Outcome
from kiln.taskinstance import (
    InstanceRejected,
    InstanceUnavailable,
    TaskInstanceClient,
    TaskInstanceError,
    TaskNotFound,
)

log = logging.getLogger("kiln.worker")
POLL_MIN_S = 0.05
POLL_MAX_S = 0.5
OWNERSHIP_CHECK_S = 1.0
RETRYABLE_REJECTIONS = {"queue_full", "instance_stopped", "draining"}


def split_params(params: Any) -> tuple[Any, dict[str, Any]]:
    """``(input_data, metadata)`` of a model_type task's parameters."""
    if isinstance(params, dict) and "input_data" in params:
        return params["input_data"], task_metadata(params)
    return params, task_metadata(params)


def run_instance_task(kiln: Kiln, task: ClaimedTask, *, client_timeout_s: float = 5.0) -> Outcome:
    started = utcnow()
    try:
        return _run(kiln, task, started, client_timeout_s)
    except Exception as exc:  # noqa: BLE001 - recorded on the task, retried like a failure
        log.warning("task %s on its instance failed unexpectedly", task.id, exc_info=True)
        return Outcome(
            task, ok=False, started_at=started, finished_at=utcnow(),
            error=f"{type(exc).__name__}: {exc}",
        )  # fmt: skip


def _run(kiln: Kiln, task: ClaimedTask, started: Any, client_timeout_s: float) -> Outcome:

    def failed(error: str, *, retryable: bool = True, kind: str = "failed") -> Outcome:
        return Outcome(
            task, ok=False, started_at=started, finished_at=utcnow(), error=error,
            retryable=retryable, kind=kind,
        )  # fmt: skip

    assert task.model_type is not None
    remote_id = instance_task_id(task.id, task.attempt)
    instance = kiln.instances.place(task)
    if instance is None:
        return failed(f"no live instance serves model_type {task.model_type!r}")
    input_data, metadata = split_params(task.params)
    where = f"instance {instance.id} ({instance.url})"
    with TaskInstanceClient(instance.url, timeout=client_timeout_s, retries=2) as client:
        try:
            client.enqueue(input_data, metadata, task_id=remote_id)
        except InstanceRejected as exc:
            retryable = exc.code in RETRYABLE_REJECTIONS or exc.status_code == 429
            return failed(f"{where} refused the task: {exc}", retryable=retryable)
        except TaskInstanceError as exc:
            _suspect(kiln, instance, exc)
            return failed(f"{where} unreachable while enqueueing: {exc}")
        deadline = time.monotonic() + task.timeout_s if task.timeout_s else None
        interval = POLL_MIN_S
        last_progress: tuple[float, str] | None = None
        last_check = time.monotonic()
        while True:
            try:
                result = client.result(remote_id)
            except TaskNotFound:
                return failed(f"{where} no longer knows task {remote_id} (restarted?)")
            except TaskInstanceError as exc:
                _suspect(kiln, instance, exc)
                return failed(f"{where} unreachable while running: {exc}")
            if result.finished:
                break
            progress = (result.progress.fraction, result.progress.message)
            if result.status == "running" and progress != last_progress:
                last_progress = progress
                if not kiln.report_progress(task.id, task.attempt, *progress):
                    return failed("the attempt no longer owns the task", retryable=False)
                last_check = time.monotonic()
            elif time.monotonic() - last_check > OWNERSHIP_CHECK_S:
                if not kiln.instances.still_owned(task):
                    return failed("the attempt no longer owns the task", retryable=False)
                last_check = time.monotonic()
            if deadline is not None and time.monotonic() > deadline:
                return failed(
                    f"timed out after {task.timeout_s:g}s (timeout_s) on attempt "
                    f"{task.attempt}; still {result.status} on {where}",
                    kind="timed_out",
                )
            time.sleep(interval)
            interval = min(interval * 1.5, POLL_MAX_S)
    actual_s = (result.execution_time or result.total_time or 0.0) / 1000.0
    _record_duration(kiln, task, instance, metadata, actual_s, succeeded=result.succeeded)
    if not result.succeeded:
        return failed(f"{where}: {result.error or 'the task failed'}")
    return Outcome(task, ok=True, started_at=started, finished_at=utcnow(), result=result.result)


def _suspect(kiln: Kiln, instance: LiveInstance, exc: TaskInstanceError) -> None:
    """No connection at all (not an HTTP error such as 503 while draining): route no more
    work there until it heartbeats again."""
    if isinstance(exc, InstanceUnavailable) and exc.status_code is None:
        try:
            if kiln.instances.mark_unreachable(instance.id):
                log.warning("instance %s (%s) unreachable; marked lost", instance.id, instance.url)
        except Exception:  # noqa: BLE001 - the controller's heartbeat check catches it later
            log.warning("could not mark instance %s lost", instance.id, exc_info=True)


def _record_duration(
    kiln: Kiln,
    task: ClaimedTask,
    instance: LiveInstance,
    metadata: dict[str, Any],
    actual_s: float,
    *,
    succeeded: bool,
) -> None:
    """Store the measured time on the task; a success also teaches the predictor and the
    instance's speed factor."""
    try:
        kiln.instances.record_duration(task, instance, metadata, actual_s, succeeded=succeeded)
    except Exception:  # noqa: BLE001 - the outcome matters more than the measurement
        log.warning("could not record the duration of task %s", task.id, exc_info=True)
