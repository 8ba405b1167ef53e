"""Kiln's one exception hierarchy. Each class's docstring is its default message."""

from __future__ import annotations

from typing import Any


class KilnError(Exception):
    """Kiln failed."""

    status_code = 500

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.details = details
        super().__init__(self.message)

    @property
    def code(self) -> str:
        name = type(self).__name__
        return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


class InvalidDefinition(KilnError):
    """The workflow definition is invalid."""

    status_code = 422


class UnknownHandler(InvalidDefinition):
    """The task's handler cannot be found."""


class HandlerNotAllowed(UnknownHandler):
    """The task's handler is outside the modules this deployment allows."""


class NotFound(KilnError):
    """No such object."""

    status_code = 404


class WorkflowNotFound(NotFound):
    """No workflow run with this id."""


class ContextNotFound(NotFound):
    """No context with this id."""


class PipelineNotFound(NotFound):
    """No pipeline with this id."""


class OperationNotFound(NotFound):
    """No operation with this id."""


class IllegalTransition(KilnError):
    """The object is not in a state that allows this change."""

    status_code = 409


class StaleAttempt(IllegalTransition):
    """This attempt no longer owns the task (it was re-leased, finished or cancelled)."""


class DatabaseUnavailable(KilnError):
    """The database cannot be reached."""

    status_code = 503


class InvalidValue(KilnError):
    """The database refused a value (a NUL character, a number out of range)."""

    status_code = 422


class InvalidSetting(KilnError, ValueError):
    """A ``KILN_*`` environment variable holds a value Kiln cannot use (the CLI prints it in
    one line and exits 2)."""

    status_code = 400


class LimitExceeded(KilnError):
    """The request is larger than a configured limit allows (tasks, shards, JSON nesting)."""

    status_code = 413


class IdempotencyKeyReused(KilnError):
    """This Idempotency-Key was already used for a different request on this route."""

    status_code = 422


class TaskTimeout(KilnError):
    """The task ran past its timeout."""


class WorkerLost(KilnError):
    """The worker running this task stopped heartbeating its lease."""


class PermanentFailure(KilnError):
    """The task failed in a way retrying cannot fix."""


class TaskCancelled(KilnError):
    """The task was cancelled (its run was cancelled, it timed out, or another attempt took
    it over); raised inside the handler at its next progress report."""


class SignalTimeout(KilnError):
    """No signal came before the deadline a task waited for it until."""


class InvalidInstanceRequest(KilnError):
    """The instance request is invalid."""

    status_code = 422


class InstanceNotFound(NotFound):
    """No instance with this id (register again)."""


class InvalidPolicy(KilnError):
    """Invalid policy. Must be one of FIFO, RoundRobin, Priority, Fair, ShortestPredicted."""

    status_code = 400


class InvalidPredictRequest(KilnError):
    """The prediction request is invalid."""

    status_code = 400


class RunFailed(KilnError):
    """The workflow run failed."""

    @property
    def task(self) -> str | None:
        """The failed task's name (None when the run failed without one)."""
        return self.details.get("task")

    @property
    def error(self) -> str | None:
        """The failed task's error."""
        return self.details.get("error")


class RunCancelled(KilnError):
    """The workflow run was cancelled."""


class InvalidSchedule(KilnError):
    """The schedule is invalid."""

    status_code = 422


class ScheduleNotFound(NotFound):
    """No schedule with this id."""


class ScheduleNameTaken(KilnError):
    """A schedule with this name exists already."""

    status_code = 409
