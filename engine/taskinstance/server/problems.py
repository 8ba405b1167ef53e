"""Why the instance refuses a request: server-side errors, each with its wire code and status.

Each class's docstring is its default message. The Flask layer turns them into
``{"error": code, "message": ..., "details": {...}}`` with ``http_status``; the client maps
those back to :mod:`kiln.taskinstance.client`'s exceptions.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Draining",
    "InstanceStopped",
    "ModelMismatch",
    "QueueFull",
    "RuntimeProblem",
    "TaskIdConflict",
    "UnknownTask",
]


class RuntimeProblem(Exception):
    """The instance cannot do that."""

    code = "instance_error"
    http_status = 400

    def __init__(self, message: str | None = None, **details: Any) -> None:
        super().__init__(message or self.__doc__)
        self.details = details


class UnknownTask(RuntimeProblem):
    """No task with this id is known to the instance."""

    code, http_status = "task_not_found", 404


class TaskIdConflict(RuntimeProblem):
    """A task with this id exists with different input_data or metadata."""

    code, http_status = "task_id_conflict", 409


class ModelMismatch(RuntimeProblem):
    """Replicas of another model type are running; stop them before switching models."""

    code, http_status = "model_mismatch", 409


class InstanceStopped(RuntimeProblem):
    """No replica is running, so the instance cannot serve or predict."""

    code, http_status = "instance_stopped", 409


class QueueFull(RuntimeProblem):
    """The instance's queue is full."""

    code, http_status = "queue_full", 429


class Draining(RuntimeProblem):
    """The instance is shutting down and accepts no new tasks."""

    code, http_status = "draining", 503
