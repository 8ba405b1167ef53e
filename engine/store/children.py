"""Child runs and the ``waiting`` state of the task that started them.

* :func:`start_child_txn`: a run linked to a running task (``parent_task_id``,
  ``parent_workflow_id``), once per task try and key.
* ``kiln.store.waits.suspend_txn``: running -> waiting for a task whose handler waits for
  child runs (or a time, or a signal).
* ``kiln.store.lineage.wake_parents_txn``: waiting -> ready once every child run the task
  waits for ended; called wherever a run ends (``settle_workflows_txn``, a cancel, a failure
  that stops a run), and by :func:`suspend_txn` itself.

Lock order, against deadlocks and lost wake-ups: child ``workflows`` rows before the parent's
``tasks`` row, in both a suspend (which marks its children ``awaited`` first) and a child's
end (which settles its run row, then wakes the parent). Whichever commits second sees the
other's change: a suspend blocked on a child row being settled re-reads it once that commits
and wakes at once; a child settling after the suspend committed finds the task waiting.
"""

from __future__ import annotations

import sqlalchemy as sa

from kiln.core.definitions import WorkflowSpec
from kiln.core.errors import TaskCancelled
from kiln.core.states import TaskStatus, WorkflowStatus
from kiln.store.schema import tasks, workflows
from kiln.store.workflows import insert_workflow_txn


def start_child_txn(
    conn: sa.Connection,
    *,
    task_id: int,
    attempt: int,
    key: str,
    spec: WorkflowSpec,
    trace_context: str | None = None,
) -> int:
    """The child run of task ``task_id`` for its current try and ``key``: the existing one,
    or a new one. Refused (:class:`TaskCancelled`) unless the task still runs ``attempt``
    (its claim count): a stale handler starts nothing. The task row is locked first, so
    two calls with one key (a duplicate delivery) make one run, and a cancel of the parent
    either sees the child or is seen by this call. ``trace_context``: the traceparent of the
    span that started it (the parent's attempt), so one trace holds parent and children."""
    parent = conn.execute(
        sa.select(tasks.c.workflow_id, tasks.c.attempts, tasks.c.resumes)
        .where(
            tasks.c.id == task_id,
            tasks.c.attempts == attempt,
            tasks.c.status == TaskStatus.RUNNING,
        )
        .with_for_update()
    ).first()
    if parent is None:
        raise TaskCancelled(
            f"task {task_id} no longer runs attempt {attempt}; no child run was started"
        )
    try_ = parent.attempts - parent.resumes
    existing = conn.execute(
        sa.select(workflows.c.id).where(
            workflows.c.parent_task_id == task_id,
            workflows.c.parent_attempt == try_,
            workflows.c.child_key == key,
        )
    ).scalar()
    if existing is not None:
        return int(existing)
    run_id, _, _ = insert_workflow_txn(conn, spec, notify=True, trace_context=trace_context)
    link = {
        "parent_task_id": task_id,
        "parent_workflow_id": parent.workflow_id,
        "parent_attempt": try_,
        "child_key": key,
    }
    # A child started while its parent's run is paused starts paused, as pause would have
    # left it (see pause_workflow_txn); resume resumes it with the parent.
    paused = sa.select(workflows.c.status).where(
        workflows.c.id == parent.workflow_id, workflows.c.status == WorkflowStatus.PAUSED
    )
    if conn.execute(paused).first() is not None:
        link["status"] = WorkflowStatus.PAUSED
    conn.execute(workflows.update().where(workflows.c.id == run_id).values(**link))
    return run_id
