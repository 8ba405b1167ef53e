"""A task that waits: running -> waiting (:func:`suspend_txn`), for child runs, a time, or a
signal; signals sent to a run (:func:`send_signal_txn`) and taken by its tasks
(:func:`take_signal_txn`); and the controller's pass over waits whose time came
(:func:`wake_due_txn`). The waking itself is ``kiln.store.lineage.wake_tasks_txn``.

Lock order, against lost wake-ups: a wait for child runs locks the children's ``workflows``
rows before its task (as a child's end does: its run row, then the parent's task); a wait for
a signal locks its run's row first (as sending one does), so a signal sent while the task
suspends is seen by one of the two. Functions ending in ``_txn`` never commit.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa

from kiln.core.errors import IllegalTransition, WorkflowNotFound
from kiln.core.execution import Outcome
from kiln.core.states import WORKFLOW_TERMINAL, TaskStatus
from kiln.store.attempts import close_attempt_txn
from kiln.store.db import utcnow
from kiln.store.dialects import statements
from kiln.store.lineage import wake_tasks_txn
from kiln.store.schema import signals, tasks, workflows


def suspend_txn(conn: sa.Connection, o: Outcome) -> bool:
    """running -> waiting (fenced by attempt) for a handler that stopped to wait for what
    ``o.suspension`` says; the attempt is closed as ``waiting``. Wakes the task at once if
    the wait is over already (the children ended, the signal came meanwhile). False when
    the attempt no longer owns the task."""
    t, wait = o.task, o.suspension
    assert wait is not None
    if wait.signal is not None:
        _lock_run(conn, t.workflow_id)
    marked = 0
    if wait.runs:  # children first (see the module's lock order); only its own count
        marked = conn.execute(
            workflows.update()
            .where(workflows.c.id.in_(wait.runs), workflows.c.parent_task_id == t.id)
            .values(awaited=True)
        ).rowcount
    values: dict[str, Any] = {
        "status": TaskStatus.WAITING,
        "waiting_reason": wait.reason() if not wait.runs else _runs_reason(marked),
        "wake_at": wait.wake_at,
        "waiting_signal": wait.signal,
        "lease_owner": None,
        "lease_expires_at": None,
        "progress_message": None,
    }
    if wait.state is not None:
        values["state"] = wait.state
    changed = conn.execute(
        tasks.update()
        .where(tasks.c.id == t.id, tasks.c.attempts == t.attempt, tasks.c.status == "running")
        .values(**values)
        .returning(tasks.c.id)
    ).first()
    close_attempt_txn(
        conn,
        t.id,
        t.attempt,
        outcome="waiting" if changed else "stale",
        finished_at=o.finished_at,
    )
    if changed is None:
        return False
    wake_tasks_txn(conn, [t.id])
    return True


def _runs_reason(n: int) -> str:
    return f"waiting for {n} child run{'s' if n != 1 else ''} to end"


def _lock_run(conn: sa.Connection, workflow_id: int) -> Any:
    return conn.execute(
        sa.select(workflows.c.id, workflows.c.status)
        .where(workflows.c.id == workflow_id)
        .with_for_update()
    ).first()


def send_signal_txn(
    conn: sa.Connection, workflow_id: int, name: str, payload: Any, *, key: str | None = None
) -> dict[str, Any]:
    """Keep signal ``name`` for run ``workflow_id`` and wake the task waiting for it, if one
    is. With ``key`` used before for this run and name, nothing new is kept (``duplicate``).
    A finished run takes no signal (:class:`IllegalTransition`)."""
    run = _lock_run(conn, workflow_id)
    if run is None:
        raise WorkflowNotFound(f"workflow {workflow_id} does not exist", id=workflow_id)
    if run.status in WORKFLOW_TERMINAL:
        raise IllegalTransition(
            f"workflow {workflow_id} is {run.status}; a finished run takes no signals",
            id=workflow_id,
            status=run.status,
        )
    key = key or uuid.uuid4().hex
    inserted = conn.execute(
        statements(conn)
        .insert_ignoring(signals, key=["workflow_id", "name", "key"])
        .values(workflow_id=workflow_id, name=name, key=key, payload=payload, created_at=utcnow())
        .returning(signals.c.id)
    ).first()
    row = conn.execute(
        sa.select(signals.c.id, signals.c.taken_by).where(
            signals.c.workflow_id == workflow_id, signals.c.name == name, signals.c.key == key
        )
    ).one()
    waiting = sa.select(tasks.c.id).where(
        tasks.c.workflow_id == workflow_id,
        tasks.c.status == TaskStatus.WAITING,
        tasks.c.waiting_signal == name,
    )
    woke = wake_tasks_txn(conn, waiting) if inserted is not None else 0
    return {
        "id": row.id,
        "workflow_id": workflow_id,
        "name": name,
        "key": key,
        "duplicate": inserted is None,
        "woke": woke,
        "taken_by": row.taken_by,
    }


def take_signal_txn(
    conn: sa.Connection, *, task_id: int, attempt: int, workflow_id: int, name: str
) -> tuple[bool, Any]:
    """The payload of the signal ``name`` task ``task_id`` took before (a handler run again
    takes the same one), else of the first one sent to its run that no task took, now taken
    by it. Refused unless the task still runs ``attempt``."""
    running = conn.execute(
        sa.select(tasks.c.id).where(
            tasks.c.id == task_id, tasks.c.attempts == attempt, tasks.c.status == "running"
        )
    ).first()
    if running is None:
        return False, None
    mine = conn.execute(
        sa.select(signals.c.payload)
        .where(
            signals.c.workflow_id == workflow_id,
            signals.c.name == name,
            signals.c.taken_by == task_id,
        )
        .order_by(signals.c.id)
        .limit(1)
    ).first()
    if mine is not None:
        return True, mine.payload
    first = (
        sa.select(signals.c.id)
        .where(
            signals.c.workflow_id == workflow_id,
            signals.c.name == name,
            signals.c.taken_by.is_(None),
        )
        .order_by(signals.c.id)
        .limit(1)
        .scalar_subquery()
    )
    taken = conn.execute(
        signals.update()
        .where(signals.c.id == first, signals.c.taken_by.is_(None))
        .values(taken_by=task_id, taken_at=utcnow())
        .returning(signals.c.payload)
    ).first()
    return (True, taken.payload) if taken is not None else (False, None)


def wake_due_txn(conn: sa.Connection, *, limit: int = 500) -> int:
    """waiting -> ready for the tasks whose ``wake_at`` came (a sleep ended, a wait for a
    signal timed out); the controller calls this on each pass. Rows another controller is
    waking are skipped."""
    due = (
        conn.execute(
            sa.select(tasks.c.id)
            .where(tasks.c.status == TaskStatus.WAITING, tasks.c.wake_at <= utcnow())
            .order_by(tasks.c.wake_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        .scalars()
        .all()
    )
    return wake_tasks_txn(conn, due) if due else 0


def list_signals(conn: sa.Connection, workflow_id: int) -> list[dict[str, Any]]:
    return [
        dict(r)
        for r in conn.execute(
            sa.select(signals).where(signals.c.workflow_id == workflow_id).order_by(signals.c.id)
        ).mappings()
    ]


def next_wake_at(conn: sa.Connection) -> dt.datetime | None:
    """The earliest ``wake_at`` of a waiting task (the controller need not sleep past it)."""
    return conn.execute(
        sa.select(sa.func.min(tasks.c.wake_at)).where(tasks.c.status == TaskStatus.WAITING)
    ).scalar()
