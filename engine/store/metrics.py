"""The counts behind Kiln's Prometheus metrics, aggregated by the database in one read.
:mod:`kiln.app.metrics` turns them into metric families."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from kiln.core.states import TaskStatus
from kiln.store.db import aware, utcnow
from kiln.store.dialects import greatest, seconds_between
from kiln.store.processes import process_heartbeats
from kiln.store.schema import (
    instances,
    operations,
    task_attempts,
    task_dependencies,
    tasks,
    workflows,
)


@dataclass(frozen=True)
class MetricRows:
    """Rows are tuples (or named rows) in the order each field's comment gives."""

    tasks: list[Any]  # (state, model_type, n)
    workflows: list[Any]  # (state, n)
    ready: list[Any]  # (model_type, n): ready or retrying
    attempts_by_outcome: dict[str, int]
    retries: int  # attempts beyond a task's first
    quarantined: int
    # Histogram rows: the labels, ``n``, ``total`` and ``b0..bk`` (how many values are <=
    # each bucket bound).
    durations: list[Any]  # labels outcome, model_type
    submit_to_start: list[Any]  # label model_type
    predictions: list[Any]  # (model_type, n, sum |actual - predicted|, mean actual/predicted)
    operations: list[Any]  # (operation, status, n)
    instances: list[Any]  # id, name, model_type, status, slots, queue_size, heartbeat_at, in_flight
    processes: list[Any]  # (kind, heartbeat_at, concurrency) of processes not stopped
    # Per handler (``model_type:<type>`` for model_type tasks) and queue (``default``): every
    # one, unbounded; kiln.app.metrics folds the long tail into "other".
    handler_attempts: list[Any]  # (handler, queue, outcome, n)
    handler_durations: list[Any]  # histogram rows, labels handler, queue
    handler_retries: list[Any]  # (handler, n): attempts beyond a task's first
    expired_leases: int  # queued or running tasks whose lease ended (recovery's backlog)
    oldest_ready_s: float  # age of the oldest ready task (0: none)


def _handler() -> sa.ColumnElement[str]:
    model = sa.literal("model_type:").concat(sa.func.coalesce(tasks.c.model_type, ""))
    return sa.func.coalesce(tasks.c.handler, model).label("handler")


def _queue() -> sa.ColumnElement[str]:
    return sa.func.coalesce(tasks.c.queue, "default").label("queue")


def _model_type() -> sa.ColumnElement[str]:
    return sa.func.coalesce(tasks.c.model_type, "").label("model_type")


def _histogram_rows(
    conn: sa.Connection,
    value: sa.ColumnElement[float],
    labels: Sequence[sa.ColumnElement[Any]],
    buckets: Sequence[float],
    from_: Any,
    where: Sequence[sa.ColumnElement[bool]],
) -> list[Any]:
    v = greatest(conn, value, 0.0)
    columns = [
        *labels,
        sa.func.count().label("n"),
        sa.func.coalesce(sa.func.sum(v), 0.0).label("total"),
        *(
            sa.func.sum(sa.case((v <= bound, 1), else_=0)).label(f"b{i}")
            for i, bound in enumerate(buckets)
        ),
    ]
    return list(
        conn.execute(sa.select(*columns).select_from(from_).where(*where).group_by(*labels))
    )


def _instances(conn: sa.Connection) -> list[Any]:
    running = (
        sa.select(tasks.c.instance_id, sa.func.count().label("n"))
        .where(tasks.c.status == TaskStatus.RUNNING, tasks.c.instance_id.is_not(None))
        .group_by(tasks.c.instance_id)
        .subquery()
    )
    return list(
        conn.execute(
            sa.select(
                instances.c.id,
                instances.c.name,
                instances.c.model_type,
                instances.c.status,
                instances.c.slots,
                instances.c.queue_size,
                instances.c.active_tasks,
                instances.c.heartbeat_at,
                sa.func.coalesce(running.c.n, 0).label("in_flight"),
            )
            .select_from(instances.outerjoin(running, running.c.instance_id == instances.c.id))
            .where(instances.c.status != "stopped")
            .order_by(instances.c.id)
        ).all()
    )


def metric_rows(
    conn: sa.Connection,
    *,
    duration_buckets: Sequence[float],
    latency_buckets: Sequence[float],
) -> MetricRows:
    """Every count the metrics need, read in one connection."""
    mt = _model_type()
    by_outcome: dict[str, int] = dict(
        conn.execute(  # type: ignore[arg-type]
            sa.select(task_attempts.c.outcome, sa.func.count()).group_by(task_attempts.c.outcome)
        ).all()
    )
    attempt_of_task = task_attempts.join(tasks, tasks.c.id == task_attempts.c.task_id)
    predicted = [tasks.c.predicted_s.is_not(None), tasks.c.actual_s.is_not(None)]
    handler, queue = _handler(), _queue()  # one object each: the same bind names in GROUP BY
    now = utcnow()
    oldest_ready = conn.execute(
        sa.select(sa.func.min(tasks.c.ready_at)).where(tasks.c.status == TaskStatus.READY)
    ).scalar()
    return MetricRows(
        tasks=list(
            conn.execute(
                sa.select(tasks.c.status, mt, sa.func.count()).group_by(tasks.c.status, mt)
            ).all()
        ),
        workflows=list(
            conn.execute(
                sa.select(workflows.c.status, sa.func.count()).group_by(workflows.c.status)
            ).all()
        ),
        ready=list(
            conn.execute(
                sa.select(mt, sa.func.count())
                .where(tasks.c.status.in_([TaskStatus.READY, TaskStatus.RETRYING]))
                .group_by(mt)
            ).all()
        ),
        attempts_by_outcome=by_outcome,
        retries=conn.execute(
            sa.select(sa.func.count()).select_from(task_attempts).where(task_attempts.c.attempt > 1)
        ).scalar_one(),
        quarantined=conn.execute(
            sa.select(sa.func.count())
            .select_from(tasks)
            .where(tasks.c.status == TaskStatus.FAILED, tasks.c.error.like("quarantined:%"))
        ).scalar_one(),
        durations=_histogram_rows(
            conn,
            seconds_between(conn, task_attempts.c.started_at, task_attempts.c.finished_at),
            [task_attempts.c.outcome, mt],
            duration_buckets,
            attempt_of_task,
            [task_attempts.c.finished_at.is_not(None)],
        ),
        # Tasks without dependencies: their wait is all queueing and dispatch.
        submit_to_start=_histogram_rows(
            conn,
            seconds_between(conn, workflows.c.created_at, task_attempts.c.started_at),
            [mt],
            latency_buckets,
            attempt_of_task.join(workflows, workflows.c.id == tasks.c.workflow_id),
            [
                task_attempts.c.attempt == 1,
                ~sa.exists().where(task_dependencies.c.task_id == tasks.c.id),
            ],
        ),
        predictions=list(
            conn.execute(
                sa.select(
                    mt,
                    sa.func.count(),
                    sa.func.sum(sa.func.abs(tasks.c.actual_s - tasks.c.predicted_s)),
                    sa.func.avg(tasks.c.actual_s / sa.func.nullif(tasks.c.predicted_s, 0.0)),
                )
                .where(*predicted)
                .group_by(mt)
            ).all()
        ),
        operations=list(
            conn.execute(
                sa.select(operations.c.operation, operations.c.status, sa.func.count()).group_by(
                    operations.c.operation, operations.c.status
                )
            ).all()
        ),
        instances=_instances(conn),
        processes=process_heartbeats(conn),
        handler_attempts=list(
            conn.execute(
                sa.select(handler, queue, task_attempts.c.outcome, sa.func.count())
                .select_from(attempt_of_task)
                .group_by(handler, queue, task_attempts.c.outcome)
            ).all()
        ),
        handler_durations=_histogram_rows(
            conn,
            seconds_between(conn, task_attempts.c.started_at, task_attempts.c.finished_at),
            [handler, queue],
            duration_buckets,
            attempt_of_task,
            [task_attempts.c.finished_at.is_not(None)],
        ),
        handler_retries=list(
            conn.execute(
                sa.select(handler, sa.func.count())
                .select_from(attempt_of_task)
                .where(task_attempts.c.attempt > 1)
                .group_by(handler)
            ).all()
        ),
        expired_leases=conn.execute(
            sa.select(sa.func.count())
            .select_from(tasks)
            .where(
                tasks.c.status.in_([TaskStatus.QUEUED, TaskStatus.RUNNING]),
                tasks.c.lease_expires_at < now,
            )
        ).scalar_one(),
        oldest_ready_s=(now - aware(oldest_ready)).total_seconds() if oldest_ready else 0.0,
    )
