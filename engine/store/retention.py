"""Retention: deleting finished runs, with their tasks, attempts, edges and events, in
batches, each one short transaction.

A run may go when it is finished (succeeded, failed, cancelled) and finished before its
cutoff, and nothing still needs it: no pipeline is backed by it, no operation on it is
unfinished, and it is not the child of a run that has not finished. The batch locks its runs
(``FOR UPDATE SKIP LOCKED``) and the final delete re-checks the status, so a run that is not
finished is never removed, and two pruning controllers take different runs.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import sqlalchemy as sa

from kiln.core.operations import UNFINISHED
from kiln.core.states import WORKFLOW_TERMINAL
from kiln.store.schema import (
    events,
    operations,
    pipelines,
    schedule_fires,
    schedules,
    task_attempts,
    task_dependencies,
    tasks,
    workflows,
)

TERMINAL = [str(s) for s in WORKFLOW_TERMINAL]
DEFAULT_BATCH = 500


@dataclass(frozen=True)
class Cutoffs:
    """Which finished runs are old enough to go: those finished before ``default`` (None:
    none), except runs of a schedule in ``by_schedule``, which go when finished before its
    own cutoff, and then runs named in ``by_name``, before theirs. ``everything``:
    ``default`` applies to every run (``--older-than``)."""

    default: dt.datetime | None
    by_schedule: dict[int, dt.datetime]
    everything: bool = False
    by_name: dict[str, dt.datetime] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.default is None and not self.by_schedule and not self.by_name


@dataclass
class Pruned:
    runs: int = 0
    tasks: int = 0
    attempts: int = 0
    events: int = 0
    last_id: int = 0  # the highest run id the batch looked at: the next batch starts after it

    def add(self, other: Pruned) -> None:
        self.runs += other.runs
        self.tasks += other.tasks
        self.attempts += other.attempts
        self.events += other.events
        self.last_id = max(self.last_id, other.last_id)

    def as_dict(self) -> dict[str, int]:
        return {"runs": self.runs, "tasks": self.tasks, "attempts": self.attempts,
                "events": self.events}  # fmt: skip


def cutoffs(
    conn: sa.Connection,
    *,
    now: dt.datetime,
    default_days: float | None,
    older_than: dt.timedelta | None = None,
    days_by_name: tuple[tuple[str, float], ...] = (),
) -> Cutoffs:
    """``older_than`` given: every finished run older than that. Otherwise ``default_days``
    (``KILN_RETENTION_DAYS``), each schedule's ``retention_days`` and ``days_by_name``
    (``KILN_RETENTION_DAYS_BY_NAME``)."""
    if older_than is not None:
        return Cutoffs(now - older_than, {}, everything=True)
    overrides = conn.execute(
        sa.select(schedules.c.id, schedules.c.retention_days).where(
            schedules.c.retention_days.is_not(None)
        )
    ).all()
    default = now - dt.timedelta(days=default_days) if default_days else None
    return Cutoffs(
        default,
        {r.id: now - dt.timedelta(days=r.retention_days) for r in overrides},
        by_name={name: now - dt.timedelta(days=days) for name, days in days_by_name},
    )


def _old_enough(c: Cutoffs) -> sa.ColumnElement[bool]:
    finished = workflows.c.finished_at
    if c.everything:
        assert c.default is not None
        return finished < c.default
    clauses = [
        sa.and_(workflows.c.schedule_id == sid, finished < cutoff)
        for sid, cutoff in sorted(c.by_schedule.items())
    ]
    # Not a schedule's with its own retention: the name's, then the default.
    unscheduled: sa.ColumnElement[bool] = workflows.c.schedule_id.is_(None)
    if c.by_schedule:
        unscheduled = sa.or_(unscheduled, workflows.c.schedule_id.not_in(sorted(c.by_schedule)))
    clauses += [
        sa.and_(unscheduled, workflows.c.name == name, finished < cutoff)
        for name, cutoff in sorted(c.by_name.items())
    ]
    if c.default is not None:
        others = unscheduled
        if c.by_name:
            others = sa.and_(others, workflows.c.name.not_in(sorted(c.by_name)))
        clauses.append(sa.and_(others, finished < c.default))
    return sa.or_(*clauses) if clauses else sa.false()


def _prunable(c: Cutoffs) -> sa.ColumnElement[bool]:
    parent = workflows.alias("parent")
    return sa.and_(
        workflows.c.status.in_(TERMINAL),
        workflows.c.finished_at.is_not(None),
        _old_enough(c),
        ~sa.exists().where(pipelines.c.workflow_id == workflows.c.id),
        ~sa.exists().where(
            operations.c.workflow_id == workflows.c.id, operations.c.status.in_(list(UNFINISHED))
        ),
        ~sa.exists().where(
            parent.c.id == workflows.c.parent_workflow_id, parent.c.status.not_in(TERMINAL)
        ),
    )


def preview(conn: sa.Connection, c: Cutoffs) -> dict[str, int]:
    """What pruning with ``c`` would delete now: counts of runs, tasks, attempts, events."""
    if c.empty:
        return Pruned().as_dict()
    runs = sa.select(workflows.c.id).where(_prunable(c)).subquery()
    task_ids = sa.select(tasks.c.id).where(tasks.c.workflow_id.in_(sa.select(runs.c.id)))
    count = sa.func.count()
    row = conn.execute(
        sa.select(
            sa.select(count).select_from(runs).scalar_subquery().label("runs"),
            sa.select(count)
            .select_from(tasks)
            .where(tasks.c.workflow_id.in_(sa.select(runs.c.id)))
            .scalar_subquery()
            .label("tasks"),
            sa.select(count)
            .select_from(task_attempts)
            .where(task_attempts.c.task_id.in_(task_ids))
            .scalar_subquery()
            .label("attempts"),
            sa.select(count)
            .select_from(events)
            .where(events.c.workflow_id.in_(sa.select(runs.c.id)))
            .scalar_subquery()
            .label("events"),
        )
    ).one()
    return {"runs": row.runs, "tasks": row.tasks, "attempts": row.attempts, "events": row.events}


def prune_batch_txn(
    conn: sa.Connection, c: Cutoffs, *, batch: int = DEFAULT_BATCH, after_id: int = 0
) -> Pruned:
    """Delete up to ``batch`` prunable runs with ids above ``after_id`` (oldest first) and
    everything of theirs. A pass of batches goes on after the last one's ``last_id``, so it
    does not walk again over the index entries of the runs it deleted (dead until vacuum)."""
    if c.empty:
        return Pruned()
    ids = list(
        conn.execute(
            sa.select(workflows.c.id)
            .where(workflows.c.id > after_id, _prunable(c))
            .order_by(workflows.c.id)
            .limit(batch)
            .with_for_update(skip_locked=True, of=workflows)
        ).scalars()
    )
    if not ids:
        return Pruned()
    task_ids = sa.select(tasks.c.id).where(tasks.c.workflow_id.in_(ids))
    attempts = conn.execute(
        task_attempts.delete().where(task_attempts.c.task_id.in_(task_ids))
    ).rowcount
    conn.execute(task_dependencies.delete().where(task_dependencies.c.task_id.in_(task_ids)))
    n_tasks = conn.execute(tasks.delete().where(tasks.c.workflow_id.in_(ids))).rowcount
    n_events = conn.execute(events.delete().where(events.c.workflow_id.in_(ids))).rowcount
    conn.execute(operations.delete().where(operations.c.workflow_id.in_(ids)))
    conn.execute(schedule_fires.delete().where(schedule_fires.c.workflow_id.in_(ids)))
    runs = conn.execute(
        workflows.delete().where(workflows.c.id.in_(ids), workflows.c.status.in_(TERMINAL))
    ).rowcount
    return Pruned(runs=runs, tasks=n_tasks, attempts=attempts, events=n_events, last_id=ids[-1])


def prune_skipped_fires_txn(conn: sa.Connection, c: Cutoffs) -> int:
    """Delete fires that started no run (overlap=skip) older than the cutoffs."""
    clauses = [
        sa.and_(schedule_fires.c.schedule_id == sid, schedule_fires.c.fire_time < cutoff)
        for sid, cutoff in c.by_schedule.items()
    ]
    if c.default is not None:
        clauses.append(schedule_fires.c.fire_time < c.default)
    if not clauses:
        return 0
    return conn.execute(
        schedule_fires.delete().where(schedule_fires.c.outcome == "skipped", sa.or_(*clauses))
    ).rowcount
