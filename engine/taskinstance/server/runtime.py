"""The instance's engine room: a FIFO queue, worker-thread slots, results and progress.

Slots
    The instance runs at most ``replicas_running * max_concurrency`` tasks at once:
    ``max_concurrency`` is the number of concurrent tasks *one replica* serves, and
    ``/models/start``/``/models/stop`` add or remove replicas. The instance starts with
    ``replicas`` (default 1) replicas of its model, so a fresh instance has exactly
    ``max_concurrency`` slots. With zero replicas tasks are still accepted and wait queued.
    Stopping replicas never interrupts a running task; the extra slots retire when their
    task is done.

Task statuses and transitions (all under one lock)::

    queued --(a slot picks it, FIFO)--> running --> completed
                                            \\----> failed   (metadata.fail, or aborted
                                                             at shutdown after the drain)

Times on the wire are milliseconds: ``enqueue_time``, ``start_time`` and
``completion_time`` are Unix epoch milliseconds; ``wait_time``, ``execution_time`` and
``total_time`` are durations measured on the monotonic clock. Fields not yet known are
``null``.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from kiln.taskinstance.server.problems import (
    Draining,
    InstanceStopped,
    ModelMismatch,
    QueueFull,
    RuntimeProblem,
    TaskIdConflict,
    UnknownTask,
)
from kiln.taskinstance.server.simulation import DurationModel, SimulationPlan, simulate_text

__all__ = [
    "Draining",
    "InstanceRuntime",
    "InstanceStopped",
    "ModelMismatch",
    "QueueFull",
    "RuntimeProblem",
    "TaskIdConflict",
    "UnknownTask",
]  # the problem classes are re-exported for callers of the runtime

#: Queued tasks listed in a heartbeat, oldest first; running ones are always all listed.
HEARTBEAT_QUEUED_LIMIT = 200
#: Finished tasks remembered for the next heartbeat while Kiln is unreachable.
UNREPORTED_LIMIT = 1000


@dataclass
class _Task:
    task_id: str
    input_data: Any
    metadata: dict[str, Any]
    fingerprint: str
    plan: SimulationPlan
    enqueue_wall: float
    enqueue_mono: float
    status: str = "queued"
    start_mono: float | None = None
    end_mono: float | None = None
    progress: float = 0.0
    message: str = "queued"
    result: Any = None
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def to_json(self) -> dict[str, Any]:
        def wall_ms(mono: float | None) -> float | None:
            if mono is None:
                return None
            return round((self.enqueue_wall + mono - self.enqueue_mono) * 1000.0, 3)

        def span_ms(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round((b - a) * 1000.0, 3)

        return {
            "task_id": self.task_id,
            "status": self.status,
            "result": self.result,
            "error": self.error,
            "progress": round(self.progress, 4),
            "message": self.message,
            "enqueue_time": round(self.enqueue_wall * 1000.0, 3),
            "start_time": wall_ms(self.start_mono),
            "completion_time": wall_ms(self.end_mono),
            "wait_time": span_ms(self.enqueue_mono, self.start_mono),
            "execution_time": span_ms(self.start_mono, self.end_mono),
            "total_time": span_ms(self.enqueue_mono, self.end_mono),
            "metadata": self.metadata,
        }

    def brief(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "status": self.status,
            "progress": round(self.progress, 4),
            "message": self.message,
        }


def _fingerprint(input_data: Any, metadata: dict[str, Any]) -> str:
    canonical = json.dumps([input_data, metadata], sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class InstanceRuntime:
    """Queue, slots and results of one instance; every public method is thread-safe."""

    def __init__(
        self,
        model_type: str,
        *,
        max_concurrency: int = 4,
        replicas: int = 1,
        duration_model: DurationModel | None = None,
        max_queue_size: int | None = None,
        result_retention: int = 10_000,
        prediction_rel_error: float = 0.1,
        instance_id: str | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.instance_id = instance_id or f"ti-{uuid.uuid4().hex[:12]}"
        self.model_type = model_type
        self.model_config: dict[str, Any] = {}
        self.max_concurrency = max_concurrency
        self.replicas = replicas
        self.duration_model = duration_model or DurationModel()
        self.max_queue_size = max_queue_size
        self.result_retention = result_retention
        self.prediction_rel_error = prediction_rel_error
        self._lock = threading.Condition()
        self._tasks: dict[str, _Task] = {}
        self._queue: deque[_Task] = deque()
        self._running: dict[str, _Task] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._unreported: deque[str] = deque(maxlen=UNREPORTED_LIMIT)
        self._workers: dict[int, threading.Thread] = {}
        self._counters = {"enqueued": 0, "completed": 0, "failed": 0}
        self._started = False
        self._draining = False
        self._abort = threading.Event()

    # ----------------------------------------------------------------- lifecycle
    @property
    def slots(self) -> int:
        """How many tasks may run at once now: replicas × max_concurrency."""
        return self.replicas * self.max_concurrency

    def start(self) -> None:
        """Start the worker threads; tasks enqueued before this wait queued."""
        with self._lock:
            self._started = True
            self._spawn_workers()

    def drain(self, timeout: float) -> bool:
        """Stop taking queued tasks; wait up to ``timeout`` s for running ones to finish.

        Returns whether every running task finished; the rest fail as aborted.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            self._draining = True
            self._lock.notify_all()
            while self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            drained = not self._running
        self._abort.set()
        with self._lock:
            workers = list(self._workers.values())
            self._lock.notify_all()
        for worker in workers:
            worker.join(timeout=5.0)
        return drained

    @property
    def draining(self) -> bool:
        return self._draining

    def _spawn_workers(self) -> None:
        # Caller holds the lock. A worker whose index is >= slots retires after its task.
        if not self._started or self._draining:
            return
        for index in range(self.slots):
            if index not in self._workers:
                worker = threading.Thread(
                    target=self._work, args=(index,), name=f"slot-{index}", daemon=True
                )
                self._workers[index] = worker
                worker.start()

    # ------------------------------------------------------------------ protocol
    def status_text(self) -> str:
        if self._draining:
            return "draining"
        return "running" if self.replicas > 0 else "stopped"

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "instance_id": self.instance_id,
                "model_type": self.model_type,
                "replicas_running": self.replicas,
                "queue_size": len(self._queue),
                "status": self.status_text(),
                "active_tasks": len(self._running),
                "max_concurrency": self.max_concurrency,
                "slots": self.slots,
            }

    def start_models(
        self, model_type: str, count: int = 1, config: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Add ``count`` replicas of ``model_type`` (switching model only from zero replicas)."""
        with self._lock:
            if model_type != self.model_type and self.replicas > 0:
                raise ModelMismatch(running=self.model_type, requested=model_type)
            self.model_type = model_type
            if config:
                self.model_config = dict(config)
            self.replicas += count
            self._spawn_workers()
            self._lock.notify_all()
            return {
                "status": "started",
                "model_type": self.model_type,
                "replicas_running": self.replicas,
                "started": count,
                "slots": self.slots,
            }

    def stop_models(self, count: int | None = None) -> dict[str, Any]:
        """Remove ``count`` replicas (all if ``None``); running tasks finish first."""
        with self._lock:
            stopped = self.replicas if count is None else min(count, self.replicas)
            self.replicas -= stopped
            self._lock.notify_all()
            return {
                "status": self.status_text(),
                "model_type": self.model_type,
                "replicas_running": self.replicas,
                "stopped": stopped,
                "slots": self.slots,
            }

    def submit(
        self, input_data: Any, metadata: dict[str, Any], task_id: str | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Enqueue a task; returns ``(entry, created)``.

        Re-submitting a known ``task_id`` with the same input and metadata returns the
        existing entry with ``created=False`` and runs nothing; with different input it
        raises :class:`TaskIdConflict`. Raises ``InvalidMetadata`` for bad metadata.
        """
        task_id = task_id or uuid.uuid4().hex
        fingerprint = _fingerprint(input_data, metadata)
        plan = self.duration_model.plan(input_data, metadata, task_id)
        with self._lock:
            existing = self._tasks.get(task_id)
            if existing is not None:
                if existing.fingerprint != fingerprint:
                    raise TaskIdConflict(task_id=task_id)
                return self._entry(existing), False
            if self._draining:
                raise Draining()
            if self.max_queue_size is not None and len(self._queue) >= self.max_queue_size:
                raise QueueFull(max_queue_size=self.max_queue_size)
            task = _Task(
                task_id=task_id,
                input_data=input_data,
                metadata=metadata,
                fingerprint=fingerprint,
                plan=plan,
                enqueue_wall=time.time(),
                enqueue_mono=time.monotonic(),
            )
            self._tasks[task_id] = task
            self._queue.append(task)
            self._counters["enqueued"] += 1
            self._lock.notify_all()
            return self._entry(task), True

    def _entry(self, task: _Task) -> dict[str, Any]:
        return {
            "task_id": task.task_id,
            "queue_size": len(self._queue),
            "enqueue_time": round(task.enqueue_wall * 1000.0, 3),
            "status": task.status,
        }

    def result(self, task_id: str) -> dict[str, Any]:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                raise UnknownTask(task_id=task_id)
            return task.to_json()

    def results(self) -> list[dict[str, Any]]:
        with self._lock:
            return [task.to_json() for task in self._tasks.values()]

    def wait(self, task_id: str, timeout: float) -> dict[str, Any]:
        """Block until the task is terminal or ``timeout`` passes; returns its entry."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                raise UnknownTask(task_id=task_id)
        task.done.wait(timeout)
        return self.result(task_id)

    def queue_status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "instance_id": self.instance_id,
                "status": self.status_text(),
                "queue_size": len(self._queue),
                "active_tasks": len(self._running),
                "slots": self.slots,
                "max_concurrency": self.max_concurrency,
                "replicas_running": self.replicas,
                "queued": [t.task_id for t in self._queue],
                "running": [t.brief() for t in self._running.values()],
                "counters": dict(self._counters),
            }

    def predict(self, metadata: dict[str, Any], input_data: Any = None) -> dict[str, Any]:
        """Expected wall-clock ms from now until a task with ``metadata`` would complete.

        List-schedules the current queue FIFO onto the slots (running tasks occupy theirs
        for their remaining time), then adds the new task's own duration. ``error_ms``
        is ``prediction_rel_error`` times the root-sum-square of the durations on the new
        task's path (its own, and the work ahead of it shared over the slots).
        """
        own = self.duration_model.plan(input_data, metadata, noisy=False).wall_ms
        now = time.monotonic()
        with self._lock:
            slots = self.slots
            if slots == 0:
                raise InstanceStopped()
            remaining = sorted(
                max(0.0, (t.start_mono or now) * 1000.0 + t.plan.wall_ms - now * 1000.0)
                for t in self._running.values()
            )
            free = remaining[max(0, len(remaining) - slots) :]
            free += [0.0] * (slots - len(free))
            heapq.heapify(free)
            ahead_sq = sum(r * r for r in remaining)
            for task in self._queue:
                start = heapq.heappop(free)
                heapq.heappush(free, start + task.plan.wall_ms)
                ahead_sq += task.plan.wall_ms**2
            wait_ms = free[0]
            queue_size = len(self._queue)
        error = self.prediction_rel_error * math.sqrt(own * own + ahead_sq / slots)
        return {
            "expected_ms": round(wait_ms + own, 3),
            "error_ms": round(error, 3),
            "queue_size": queue_size,
            "wait_ms": round(wait_ms, 3),
            "execution_ms": round(own, 3),
        }

    # ----------------------------------------------------------------- heartbeat
    def heartbeat_snapshot(self) -> tuple[dict[str, Any], int]:
        """Heartbeat body and how many unreported finished tasks it carries.

        Pass the count to :meth:`ack_heartbeat` once Kiln accepted the heartbeat, so the
        finished tasks are reported at least once.
        """
        with self._lock:
            tasks = [t.brief() for t in self._running.values()]
            tasks += [t.brief() for t in list(self._queue)[:HEARTBEAT_QUEUED_LIMIT]]
            unreported = list(self._unreported)
            tasks += [self._tasks[i].brief() for i in unreported if i in self._tasks]
            body = {
                "status": self.status_text(),
                "active_tasks": len(self._running),
                "queue_size": len(self._queue),
                "max_concurrency": self.slots,
                "counters": {
                    "completed": self._counters["completed"],
                    "failed": self._counters["failed"],
                    "enqueued": self._counters["enqueued"],
                },
                "tasks": tasks,
            }
            return body, len(unreported)

    def ack_heartbeat(self, reported: int) -> None:
        with self._lock:
            for _ in range(min(reported, len(self._unreported))):
                self._unreported.popleft()

    # ------------------------------------------------------------------- workers
    def _work(self, index: int) -> None:
        while True:
            with self._lock:
                while True:
                    if self._abort.is_set() or index >= self.slots:
                        # Retire; a later start_models spawns this index again.
                        if self._workers.get(index) is threading.current_thread():
                            del self._workers[index]
                        return
                    if self._queue and not self._draining:
                        break
                    self._lock.wait(0.5)
                task = self._queue.popleft()
                task.status = "running"
                task.start_mono = time.monotonic()
                task.message = "started"
                self._running[task.task_id] = task
            self._execute(task)

    def _execute(self, task: _Task) -> None:
        plan = task.plan
        total = plan.wall_ms / 1000.0
        start = task.start_mono or time.monotonic()
        stop_at = start + (total * 0.5 if plan.fail else total)
        step = max(0.005, min(0.05, total / 20.0))
        aborted = False
        while True:
            now = time.monotonic()
            if now >= stop_at:
                break
            if self._abort.wait(min(step, stop_at - now)):
                aborted = True
                break
            fraction = min(1.0, (time.monotonic() - start) / total) if total > 0 else 1.0
            with self._lock:
                task.progress = fraction
                task.message = self._progress_message(plan, fraction)
        if aborted:
            self._finish(task, "failed", error="aborted: the instance shut down")
        elif plan.fail:
            self._finish(task, "failed", error=plan.fail_message or "simulated failure")
        else:
            text = simulate_text(plan.text_seed, plan.output_tokens)
            self._finish(
                task,
                "completed",
                result={
                    "text": text,
                    "model": self.model_type,
                    "input_tokens": plan.input_tokens,
                    "output_tokens": plan.output_tokens,
                    "simulated_duration_ms": round(plan.model_ms, 3),
                },
            )

    @staticmethod
    def _progress_message(plan: SimulationPlan, fraction: float) -> str:
        if plan.output_tokens:
            done = min(plan.output_tokens, int(fraction * plan.output_tokens))
            return f"generated {done}/{plan.output_tokens} tokens"
        return f"{fraction:.0%} done"

    def _finish(
        self, task: _Task, status: str, *, result: Any = None, error: str | None = None
    ) -> None:
        with self._lock:
            task.status = status
            task.end_mono = time.monotonic()
            task.result = result
            task.error = error
            if status == "completed":
                task.progress = 1.0
                task.message = "completed"
            else:
                task.message = "failed"
            self._running.pop(task.task_id, None)
            self._counters[status] += 1
            self._unreported.append(task.task_id)
            self._finished[task.task_id] = None
            while len(self._finished) > self.result_retention:
                old, _ = self._finished.popitem(last=False)
                self._tasks.pop(old, None)
            self._lock.notify_all()
        task.done.set()
