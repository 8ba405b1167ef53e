"""Typed views of the TaskInstance protocol's responses, as the client returns them.

Parsing is lenient so any server speaking seed 000's protocol works: missing fields become
``None`` (or a sensible default for ``progress``/``message``), unknown fields are kept in
``raw``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "EnqueueReceipt",
    "InstanceStatus",
    "Progress",
    "QueuePrediction",
    "QueueStatus",
    "TaskResult",
]

TERMINAL_STATUSES = frozenset({"completed", "failed"})


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class InstanceStatus:
    """``GET /status``."""

    instance_id: str | None
    model_type: str | None
    replicas_running: int
    queue_size: int
    status: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InstanceStatus:
        return cls(
            instance_id=data.get("instance_id"),
            model_type=data.get("model_type"),
            replicas_running=int(data.get("replicas_running") or 0),
            queue_size=int(data.get("queue_size") or 0),
            status=data.get("status"),
            raw=data,
        )


@dataclass(frozen=True)
class EnqueueReceipt:
    """``POST /queue/enqueue``; ``created`` is false when an existing entry was returned."""

    task_id: str
    queue_size: int
    enqueue_time: float | None
    created: bool
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any], created: bool) -> EnqueueReceipt:
        return cls(
            task_id=str(data["task_id"]),
            queue_size=int(data.get("queue_size") or 0),
            enqueue_time=_float(data.get("enqueue_time")),
            created=bool(data.get("created", created)),
            raw=data,
        )


@dataclass(frozen=True)
class QueuePrediction:
    """``POST /queue/predict``: expected completion time from now, and its spread (ms)."""

    expected_ms: float
    error_ms: float
    queue_size: int
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QueuePrediction:
        return cls(
            expected_ms=float(data["expected_ms"]),
            error_ms=float(data.get("error_ms") or 0.0),
            queue_size=int(data.get("queue_size") or 0),
            raw=data,
        )


@dataclass(frozen=True)
class Progress:
    """How far a task is: ``fraction`` in 0..1 and a human-readable ``message``."""

    task_id: str
    status: str
    fraction: float
    message: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Progress:
        status = str(data.get("status") or "unknown")
        fraction = data.get("progress")
        if fraction is None:
            fraction = 1.0 if status == "completed" else 0.0
        return cls(
            task_id=str(data.get("task_id")),
            status=status,
            fraction=float(fraction),
            message=str(data.get("message") or status),
        )


@dataclass(frozen=True)
class TaskResult:
    """``GET /results/{task_id}``; times are ms (``*_time`` stamps are Unix epoch ms)."""

    task_id: str
    status: str
    result: Any
    error: str | None
    enqueue_time: float | None
    completion_time: float | None
    wait_time: float | None
    execution_time: float | None
    total_time: float | None
    progress: Progress
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def finished(self) -> bool:
        """Completed or failed: the instance will not change this entry any more."""
        return self.status in TERMINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == "completed"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskResult:
        return cls(
            task_id=str(data["task_id"]),
            status=str(data.get("status")),
            result=data.get("result"),
            error=data.get("error"),
            enqueue_time=_float(data.get("enqueue_time")),
            completion_time=_float(data.get("completion_time")),
            wait_time=_float(data.get("wait_time")),
            execution_time=_float(data.get("execution_time")),
            total_time=_float(data.get("total_time")),
            progress=Progress.from_json(data),
            raw=data,
        )


@dataclass(frozen=True)
class QueueStatus:
    """``GET /queue/status``: queue length, running tasks with their progress."""

    queue_size: int
    active_tasks: int
    running: list[Progress]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QueueStatus:
        running = [Progress.from_json(item) for item in data.get("running") or []]
        return cls(
            queue_size=int(data.get("queue_size") or 0),
            active_tasks=int(data.get("active_tasks", len(running)) or 0),
            running=running,
            raw=data,
        )
