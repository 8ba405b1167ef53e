"""A handle on one workflow run, the same whether it is read over HTTP (:class:`kiln.Client`)
or from the database (:meth:`kiln.Kiln.start`): both give it a :class:`RunSource`."""

from __future__ import annotations

import time
from typing import Any, Protocol

from kiln.core.errors import RunCancelled, RunFailed
from kiln.core.states import WORKFLOW_TERMINAL, TaskStatus, WorkflowStatus

# The longest one wait may block server-side; a longer timeout is several waits.
WAIT_STEP_S = 30.0


class RunSource(Protocol):
    def wait(self, run_id: int, timeout_s: float, /) -> dict[str, Any]:
        """The run with its tasks once it is terminal, or as it is after ``timeout_s``
        (0: at once). It may answer early, unfinished: the handle asks again."""
        ...

    def cancel(self, run_id: int, /) -> None: ...


def outcome(run: dict[str, Any]) -> dict[str, Any]:
    """A terminal run's results, ``{task name: result}`` for every task; raises
    :class:`RunFailed` (the first failed task's name and error) or :class:`RunCancelled`."""
    status = run["status"]
    if status == WorkflowStatus.SUCCEEDED:
        return {t["name"]: t.get("result") for t in run.get("tasks", [])}
    if status == WorkflowStatus.CANCELLED:
        raise RunCancelled(run_id=run["id"])
    failed = [t for t in run.get("tasks", []) if t["status"] == TaskStatus.FAILED]
    task, error = (failed[0]["name"], failed[0].get("error")) if failed else (None, run["error"])
    raise RunFailed(
        f"workflow run {run['id']} failed" + (f": task {task!r}: {error}" if task else ""),
        run_id=run["id"],
        task=task,
        error=error,
    )


class RunHandle:
    """One run: ``id``, ``status()``, ``wait(timeout)``, ``result(timeout)``, ``cancel()``."""

    def __init__(self, source: RunSource, run_id: int) -> None:
        self._source = source
        self.id = run_id

    def __repr__(self) -> str:
        return f"<RunHandle {self.id}>"

    def status(self) -> str:
        return str(self._source.wait(self.id, 0)["status"])

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """The run with its tasks once it is succeeded, failed or cancelled; raises
        :class:`TimeoutError` when ``timeout`` seconds pass first (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = WAIT_STEP_S if deadline is None else deadline - time.monotonic()
            run = self._source.wait(self.id, max(0.0, min(WAIT_STEP_S, left)))
            if run["status"] in WORKFLOW_TERMINAL:
                return run
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"workflow run {self.id} is still {run['status']}")

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """:meth:`wait`, then the results: ``{task name: result}`` for every task of the run.
        Raises :class:`RunFailed` or :class:`RunCancelled` when the run did not succeed."""
        return outcome(self.wait(timeout))

    def cancel(self) -> None:
        self._source.cancel(self.id)
