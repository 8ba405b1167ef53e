"""Counting down dependencies: the one statement by which a task that succeeded without the
worker's ``finish`` (a map task, SQLite's finish) readies what waits on it. PostgreSQL's
``finish`` named query does the same inside its one round trip."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import sqlalchemy as sa

from kiln.core.states import TaskStatus
from kiln.store.schema import task_dependencies, tasks


def count_down_dependents_txn(
    conn: sa.Connection, succeeded: Iterable[int], *, now: dt.datetime
) -> list[int]:
    """The pending dependents of the just-succeeded tasks ``succeeded`` count them off; those
    left with no dependency go ``pending -> ready``. Returns the ids made ready."""
    ids = sorted(set(succeeded))
    if not ids:
        return []
    d = task_dependencies
    children = sa.select(d.c.task_id).where(d.c.depends_on_id.in_(ids)).scalar_subquery()
    done_here = (
        sa.select(sa.func.count())
        .where(d.c.task_id == tasks.c.id, d.c.depends_on_id.in_(ids))
        .scalar_subquery()
    )
    left = tasks.c.deps_remaining - done_here
    rows = conn.execute(
        tasks.update()
        .where(tasks.c.id.in_(children), tasks.c.status == TaskStatus.PENDING)
        .values(
            deps_remaining=left,
            status=sa.case((left <= 0, TaskStatus.READY.value), else_=tasks.c.status),
            ready_at=sa.case((left <= 0, now), else_=tasks.c.ready_at),
        )
        .returning(tasks.c.id, tasks.c.status)
    ).all()
    return sorted(r.id for r in rows if r.status == TaskStatus.READY)
