"""Child runs: a handler starts workflow runs of its own and waits for them without holding
a worker thread.

``current_task().start_child(definition, key="...")`` stores a run linked to the calling
task (``parent_task_id``, ``parent_workflow_id``), once per task try and key: the handler runs
again from the top when it resumes, and starting the same key again returns the same run.
``ChildRun.result()`` returns the child's results once it ended; before that it raises
:class:`TaskSuspended`, which the worker turns into the task's ``waiting`` state (see
``kiln.core.states``): the thread is free, and the task becomes ready again when every child
it waits for has ended. So a handler reads as straight-line code::

    @task
    def report(months):
        runs = [current_task().start_child(monthly, key=m) for m in months]
        return current_task().wait_all(runs)  # suspends until all 12 ended

Everything the handler did before waiting runs again on resume: keep it idempotent (starting
children is), or put the work into the children.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from kiln.core.execution import Suspension
from kiln.core.runs import outcome
from kiln.core.states import WORKFLOW_TERMINAL


class TaskSuspended(BaseException):
    """Raised inside a handler that waits (for child runs still going, a time, a signal); the
    worker records the task as ``waiting`` for what ``suspension`` says. A ``BaseException``,
    like ``GeneratorExit``, so that a handler's ``except Exception`` does not swallow it; do
    not catch it."""

    def __init__(self, suspension: Suspension) -> None:
        self.suspension = suspension
        super().__init__(suspension.reason())


def waiting_for_runs(runs: Iterable[int]) -> TaskSuspended:
    return TaskSuspended(Suspension(runs=tuple(sorted(set(runs)))))


class ChildRunner(Protocol):
    """What the worker gives a task to start and read its child runs, and take the signals
    sent to its run, with."""

    def start(self, definition: Any, key: str) -> int:
        """Store (or find) the child run for this task try and ``key``; return its id.
        ``definition``: a definition dict, a ``Workflow`` or ``"module:attribute"``."""
        ...

    def read(self, run_id: int) -> dict[str, Any]:
        """The child run with its tasks."""
        ...

    def take_signal(self, name: str) -> tuple[bool, Any]:
        """``(True, payload)`` of the first signal ``name`` sent to the task's run that no
        other task took (the same one again for the same task), or ``(False, None)``."""
        ...


class ChildRun:
    """A child run started by the current task: ``id``, ``key``, ``status()``, ``result()``."""

    def __init__(self, runner: ChildRunner, run_id: int, key: str) -> None:
        self._runner, self.id, self.key = runner, run_id, key

    def __repr__(self) -> str:
        return f"<ChildRun {self.id} key={self.key!r}>"

    def status(self) -> str:
        return str(self._runner.read(self.id)["status"])

    def result(self) -> dict[str, Any]:
        """The child's results (``{task name: result}``) once it succeeded; raises
        :class:`~kiln.RunFailed` or :class:`~kiln.RunCancelled` if it did not, and suspends
        the task (:class:`TaskSuspended`) while it is still going."""
        run = self._runner.read(self.id)
        if run["status"] not in WORKFLOW_TERMINAL:
            raise waiting_for_runs([self.id])
        return outcome(run)


def wait_all(runs: Iterable[ChildRun]) -> list[dict[str, Any]]:
    """Every run's results, in order, once all of them ended; suspends the task until then
    (one wake-up, when the last one ends). Raises the first failure in order, as
    :meth:`ChildRun.result` would."""
    runs = list(runs)
    read = [(r, r._runner.read(r.id)) for r in runs]
    going = [r.id for r, run in read if run["status"] not in WORKFLOW_TERMINAL]
    if going:
        raise waiting_for_runs(going)
    return [outcome(run) for _, run in read]
