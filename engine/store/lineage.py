"""The tree of runs (a child run's ``parent_workflow_id``), and waking a ``waiting`` task
whose wait is over (its children ended, its time came, its signal was sent): used by the
run-level transitions in ``kiln.store.workflows`` (cancel and pause reach the runs below; a
run's end wakes its parent task) and by ``kiln.store.waits``, whose docstring gives the lock
order that keeps a wake-up from being lost."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from kiln.core.states import WORKFLOW_ACTIVE, TaskStatus
from kiln.store.db import utcnow
from kiln.store.dialects import notify_ready
from kiln.store.schema import signals, tasks, workflows

ACTIVE_RUN = [str(s) for s in WORKFLOW_ACTIVE]


def wake_parents_txn(conn: sa.Connection, runs: Iterable[int]) -> int:
    """Wake the parent tasks of the runs ``runs`` (which just ended) that wait for nothing
    else (:func:`wake_tasks_txn`)."""
    runs = sorted(set(runs))
    if not runs:
        return 0
    parents = (
        sa.select(workflows.c.parent_task_id)
        .where(workflows.c.id.in_(runs), workflows.c.parent_task_id.is_not(None))
        .scalar_subquery()
    )
    return wake_tasks_txn(conn, parents)


def wake_tasks_txn(conn: sa.Connection, ids: Any) -> int:
    """waiting -> ready for the tasks among ``ids`` (ids, or a select of them) whose wait is
    over: its time (``wake_at``) came, a signal it waits for was sent, or every child run it
    marked ``awaited`` ended. The task's handler runs again (a resume: ``resumes`` + 1, the
    same try). Returns how many woke."""
    # Two children ending at once in two transactions would each see the other still going
    # and neither would wake the task: lock the waiting tasks first (id order), so the second
    # to get the lock checks in a statement that sees the first one's commit.
    locked = (
        conn.execute(
            sa.select(tasks.c.id)
            .where(tasks.c.id.in_(ids), tasks.c.status == TaskStatus.WAITING)
            .order_by(tasks.c.id)
            .with_for_update()
        )
        .scalars()
        .all()
    )
    if not locked:
        return 0
    now = utcnow()
    child = workflows.alias("child")
    children_going = sa.exists().where(
        child.c.parent_task_id == tasks.c.id,
        child.c.awaited.is_(True),
        child.c.status.in_(ACTIVE_RUN),
    )
    signal_sent = sa.exists().where(
        signals.c.workflow_id == tasks.c.workflow_id,
        signals.c.name == tasks.c.waiting_signal,
        sa.or_(signals.c.taken_by.is_(None), signals.c.taken_by == tasks.c.id),
    )
    over = sa.or_(
        tasks.c.wake_at <= now,
        sa.and_(tasks.c.waiting_signal.is_not(None), signal_sent),
        sa.and_(tasks.c.waiting_signal.is_(None), tasks.c.wake_at.is_(None), ~children_going),
    )
    woke = conn.execute(
        tasks.update()
        .where(
            tasks.c.id.in_(locked),
            tasks.c.status == TaskStatus.WAITING,
            tasks.c.map_over.is_(None),
            over,
        )
        .values(
            status=TaskStatus.READY,
            resumes=tasks.c.resumes + 1,
            ready_at=now,
            waiting_reason=None,
            wake_at=None,
            waiting_signal=None,
        )
        .returning(tasks.c.id)
    ).all()
    if woke:
        notify_ready(conn)
    return len(woke)


def descendants(workflow_id: int, *, only_active: bool = True) -> sa.Select:
    """The ids of the runs below ``workflow_id`` (children, their children, ...)."""
    below = (
        sa.select(workflows.c.id.label("id"))
        .where(workflows.c.parent_workflow_id == workflow_id)
        .cte("below", recursive=True)
    )
    step = workflows.alias("w")
    below = below.union_all(
        sa.select(step.c.id).join(below, step.c.parent_workflow_id == below.c.id)
    )
    q = sa.select(below.c.id)
    if only_active:
        q = q.where(
            below.c.id.in_(sa.select(workflows.c.id).where(workflows.c.status.in_(ACTIVE_RUN)))
        )
    return q


def has_children(conn: sa.Connection, workflow_id: int) -> bool:
    return (
        conn.execute(
            sa.select(workflows.c.id).where(workflows.c.parent_workflow_id == workflow_id).limit(1)
        ).first()
        is not None
    )
