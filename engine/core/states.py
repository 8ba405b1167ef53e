"""Task and workflow states, and the only transitions allowed between them.

Every transition is carried out by one guarded SQL statement in ``kiln.store.dispatch``,
``kiln.store.tasks``, ``kiln.store.recovery`` or ``kiln.store.workflows``, whose ``WHERE``
clause names the
allowed source states listed here; a statement that matches no row changed nothing and is
reported to its caller.
"""

from __future__ import annotations

import enum


class TaskStatus(enum.StrEnum):
    """Lifecycle of one task.

    ====================  ==================================================  ===================
    from                  to                                                  by
    ====================  ==================================================  ===================
    pending               ready                                               last dependency ok
    pending               upstream_failed                                     a dependency failed
    ready, retrying       queued   (attempt leased, message sent)             controller dispatch
    queued                running  (``attempts += 1``, fenced by attempt)     worker claim
    queued                ready    (workflow paused before a worker claimed)  pause, worker claim
    running               succeeded                                           worker finish
    running               retrying (``not_before`` = now + backoff)           failure / lost lease
    running               failed   (attempts exhausted, or not retryable)     failure / lost lease
    running               waiting  (the handler waits for child runs)         worker finish
    ready                 waiting  (a map task: its items written)            map expansion
    ready                 succeeded (a map task over an empty list: ``[]``)   map expansion
    ready                 failed   (a map task whose list is not a list, ...) map expansion
    waiting               ready    (every awaited child run ended)            child run's end
    waiting               succeeded (a map task: every item succeeded)        last item's finish
    waiting               failed   (a map task: an item failed for good)      the item's failure
    any non-terminal      cancelled                                           cancel, on_error=stop
    pending, ready, ...   upstream_failed                                     failure propagation
    ====================  ==================================================  ===================

    A ``waiting`` task has no worker and no lease; its ``waiting_reason`` says what it waits
    for. A map task (``map_over``) never runs a handler: its items (``Name[i]``, with
    ``mapped_from`` and ``map_index``) do, and its result is their results in item order.

    ``queued`` tasks whose dispatch lease expired are re-sent with the *same* attempt number
    (the message was lost); that refreshes the lease but is not a state change.
    A lease that commits just after its run was paused (the pause saw the task still
    ``ready``) is put back to ``ready`` by the claim, the one statement every start goes through.
    """

    PENDING = "pending"
    READY = "ready"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UPSTREAM_FAILED = "upstream_failed"
    WAITING = "waiting"


TASK_TERMINAL = frozenset(
    {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.UPSTREAM_FAILED}
)
TASK_ACTIVE = frozenset(set(TaskStatus) - TASK_TERMINAL)
# States a task may be dispatched from.
TASK_DISPATCHABLE = frozenset({TaskStatus.READY, TaskStatus.RETRYING})
# States in which no worker holds the task: cancellation/failure propagation may move them
# without racing a running handler.
TASK_NOT_STARTED = frozenset(
    {TaskStatus.PENDING, TaskStatus.READY, TaskStatus.RETRYING, TaskStatus.QUEUED}
)
# States in which no worker holds the task and a run's stop may cancel it.
TASK_UNHELD = TASK_NOT_STARTED | {TaskStatus.WAITING}

TASK_TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.PENDING: frozenset(
        {TaskStatus.READY, TaskStatus.UPSTREAM_FAILED, TaskStatus.CANCELLED}
    ),
    TaskStatus.READY: frozenset(
        {
            TaskStatus.QUEUED,
            TaskStatus.WAITING,
            TaskStatus.SUCCEEDED,
            TaskStatus.FAILED,
            TaskStatus.UPSTREAM_FAILED,
            TaskStatus.CANCELLED,
        }
    ),
    TaskStatus.RETRYING: frozenset(
        {TaskStatus.QUEUED, TaskStatus.UPSTREAM_FAILED, TaskStatus.CANCELLED}
    ),
    TaskStatus.QUEUED: frozenset(
        {TaskStatus.RUNNING, TaskStatus.READY, TaskStatus.UPSTREAM_FAILED, TaskStatus.CANCELLED}
    ),
    TaskStatus.RUNNING: frozenset(
        {
            TaskStatus.SUCCEEDED,
            TaskStatus.RETRYING,
            TaskStatus.FAILED,
            TaskStatus.CANCELLED,
            TaskStatus.WAITING,
        }
    ),
    TaskStatus.WAITING: frozenset(
        {TaskStatus.READY, TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED}
    ),
    TaskStatus.SUCCEEDED: frozenset(),
    TaskStatus.FAILED: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
    TaskStatus.UPSTREAM_FAILED: frozenset(),
}


class WorkflowStatus(enum.StrEnum):
    """Lifecycle of one workflow run.

    =================  =====================  ===========================================
    from               to                     by
    =================  =====================  ===========================================
    pending            running                first task dispatched
    pending, running   paused                 pause operation (nothing new is dispatched)
    paused             running                resume operation
    paused             succeeded              the last running task finished meanwhile
    running            succeeded              every task succeeded
    pending, running   failed                 a task failed (on_error=stop: at once;
                                              on_error=continue: when nothing is left)
    any non-terminal   cancelled              cancel operation
    =================  =====================  ===========================================
    """

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


WORKFLOW_TERMINAL = frozenset(
    {WorkflowStatus.SUCCEEDED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED}
)
WORKFLOW_ACTIVE = frozenset(set(WorkflowStatus) - WORKFLOW_TERMINAL)

WORKFLOW_TRANSITIONS: dict[WorkflowStatus, frozenset[WorkflowStatus]] = {
    WorkflowStatus.PENDING: frozenset(
        {
            WorkflowStatus.RUNNING,
            WorkflowStatus.PAUSED,
            WorkflowStatus.FAILED,
            WorkflowStatus.SUCCEEDED,
            WorkflowStatus.CANCELLED,
        }
    ),
    WorkflowStatus.RUNNING: frozenset(
        {
            WorkflowStatus.SUCCEEDED,
            WorkflowStatus.FAILED,
            WorkflowStatus.CANCELLED,
            WorkflowStatus.PAUSED,
        }
    ),
    WorkflowStatus.PAUSED: frozenset(
        {
            WorkflowStatus.RUNNING,
            WorkflowStatus.CANCELLED,
            WorkflowStatus.FAILED,
            WorkflowStatus.SUCCEEDED,
        }
    ),
    WorkflowStatus.SUCCEEDED: frozenset(),
    WorkflowStatus.FAILED: frozenset(),
    WorkflowStatus.CANCELLED: frozenset(),
}


def sources_of(transitions: dict, target) -> list[str]:
    """The states from which ``target`` may be reached, as plain strings for SQL."""
    return sorted(str(s) for s, targets in transitions.items() if target in targets)
