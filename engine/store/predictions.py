"""Durations observed on TaskInstances (``observations``, what the predictor learns from) and
the predictions and measured times stored on ``model_type`` tasks."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from kiln.core.states import TaskStatus
from kiln.store.db import utcnow
from kiln.store.schema import observations, tasks

# Tasks that may still be scheduled, so a prediction still helps.
WAITING = [TaskStatus.PENDING, TaskStatus.READY, TaskStatus.RETRYING]


def insert_observation_txn(
    conn: sa.Connection,
    *,
    model_type: str,
    hardware: str | None,
    features: dict[str, float],
    duration_s: float,
    task_id: int | None = None,
    instance_id: int | None = None,
) -> None:
    conn.execute(
        observations.insert().values(
            model_type=model_type,
            hardware=hardware,
            features=features,
            duration_s=max(float(duration_s), 0.0),
            task_id=task_id,
            instance_id=instance_id,
            observed_at=utcnow(),
        )
    )


def observations_after(conn: sa.Connection, after_id: int, limit: int) -> list[Any]:
    """Up to ``limit`` observations with ids above ``after_id``, oldest first."""
    return list(
        conn.execute(
            sa.select(observations)
            .where(observations.c.id > after_id)
            .order_by(observations.c.id)
            .limit(limit)
        ).all()
    )


def observation_counts(conn: sa.Connection) -> list[Any]:
    """``model_type, hardware, n``: how many observations each pair has."""
    return list(
        conn.execute(
            sa.select(
                observations.c.model_type,
                observations.c.hardware,
                sa.func.count().label("n"),
            ).group_by(observations.c.model_type, observations.c.hardware)
        ).all()
    )


def unpredicted_tasks(conn: sa.Connection, limit: int) -> list[Any]:
    """``id, model_type, params`` of waiting ``model_type`` tasks without a prediction."""
    return list(
        conn.execute(
            sa.select(tasks.c.id, tasks.c.model_type, tasks.c.params)
            .where(
                tasks.c.status.in_(WAITING),
                tasks.c.model_type.is_not(None),
                tasks.c.predicted.is_(None),
            )
            .order_by(tasks.c.id)
            .limit(limit)
        ).all()
    )


def set_prediction_txn(
    conn: sa.Connection, task_id: int, predicted: dict[str, Any], predicted_s: float
) -> int:
    """Store a prediction on a task that has none yet; return 1 if it did."""
    return conn.execute(
        tasks.update()
        .where(tasks.c.id == task_id, tasks.c.predicted.is_(None))
        .values(predicted=predicted, predicted_s=predicted_s)
    ).rowcount


def record_actual_txn(
    conn: sa.Connection, task_id: int, attempt: int, actual_s: float
) -> tuple[bool, dict[str, Any] | None]:
    """Store an attempt's measured execution time on its task; return whether the attempt
    still had the task, and the task's prediction."""
    row = conn.execute(
        tasks.update()
        .where(tasks.c.id == task_id, tasks.c.attempts == attempt)
        .values(actual_s=actual_s)
        .returning(tasks.c.predicted)
    ).first()
    return (row is not None, row.predicted if row is not None else None)
