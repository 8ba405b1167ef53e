"""Reads for operators: the dashboard's pages and the health checks. Nothing here writes."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from kiln.core.states import TaskStatus
from kiln.store.clauses import live_clause, served_clause
from kiln.store.db import aware, utcnow
from kiln.store.schema import (
    instances,
    operations,
    pipelines,
    tasks,
    workflows,
)
from kiln.store.workflows import list_workflows


def ping(conn: sa.Connection) -> None:
    """Raise unless the database answers ``SELECT 1``."""
    conn.execute(sa.text("SELECT 1")).scalar_one()


def instance_health(conn: sa.Connection) -> dict[str, Any]:
    """How many instances are live (see :func:`~kiln.store.clauses.live_clause`), lost and
    registered (not stopped), and which model types of ready tasks no live instance serves."""
    now = utcnow()
    live = live_clause(now)
    counts = conn.execute(
        sa.select(
            sa.func.count().filter(live),
            sa.func.count().filter(instances.c.status == "lost"),
            sa.func.count(),
        ).where(instances.c.status != "stopped")
    ).one()
    unserved = (
        conn.execute(
            sa.select(tasks.c.model_type)
            .where(
                tasks.c.status.in_([TaskStatus.READY, TaskStatus.RETRYING]),
                tasks.c.model_type.is_not(None),
                ~served_clause(tasks.c.model_type, now),
            )
            .distinct()
            .order_by(tasks.c.model_type)
        )
        .scalars()
        .all()
    )
    return {
        "live": counts[0],
        "lost": counts[1],
        "registered": counts[2],
        "unserved_model_types": list(unserved),
    }


def runs_page(
    conn: sa.Connection, *, status: str, query: str, limit: int, **filters: Any
) -> tuple[list[dict[str, Any]], dict[int, dict[str, int]], dict[str, int]]:
    """The newest runs matching the filters (``status``, a case-insensitive substring of the
    name, and :func:`list_workflows`' ``created_after``, ``created_before`` and ``handler``,
    each ignored when empty), their task counts by state, and how many runs are in each state
    overall."""
    rows = list_workflows(conn, status=status, name_contains=query, limit=limit, **filters)
    counts: dict[int, dict[str, int]] = {r["id"]: {} for r in rows}
    if rows:
        for wid, st, n in conn.execute(
            sa.select(tasks.c.workflow_id, tasks.c.status, sa.func.count())
            .where(tasks.c.workflow_id.in_(list(counts)))
            .group_by(tasks.c.workflow_id, tasks.c.status)
        ):
            counts[wid][st] = n
    by_status: dict[str, int] = dict(
        conn.execute(
            sa.select(workflows.c.status, sa.func.count()).group_by(workflows.c.status)
        ).all()
    )
    return rows, counts, by_status


def pipeline_of_workflow(conn: sa.Connection, workflow_id: int) -> int | None:
    """The pipeline a workflow run backs, if any."""
    return conn.execute(
        sa.select(pipelines.c.id).where(pipelines.c.workflow_id == workflow_id)
    ).scalar()


def task_name(conn: sa.Connection, task_id: int) -> str | None:
    """A task's name by its id (a child run names its parent task by id), or None."""
    return conn.execute(sa.select(tasks.c.name).where(tasks.c.id == task_id)).scalar()


def last_operations(conn: sa.Connection, pipeline_ids: list[int]) -> dict[int, dict[str, Any]]:
    """The newest operation of each listed pipeline (what the operator last asked for)."""
    if not pipeline_ids:
        return {}
    latest: dict[int, dict[str, Any]] = {}
    rows = conn.execute(
        sa.select(
            operations.c.pipeline_id,
            operations.c.operation,
            operations.c.status,
            operations.c.error,
            operations.c.created_at,
        )
        .where(operations.c.pipeline_id.in_(pipeline_ids))
        .order_by(operations.c.created_at.desc())
    ).mappings()
    for r in rows:
        latest.setdefault(r["pipeline_id"], dict(r))
    return latest


def instance_backlogs(conn: sa.Connection, now: dt.datetime) -> dict[int, tuple[float, int]]:
    """Per instance: predicted seconds of work still to do on the tasks placed on it (queued
    ones in full, running ones minus the time they have run, never below zero, scaled by the
    instance's learned speed factor), and how many tasks that is. Tasks without a
    prediction count as zero seconds."""
    rows = conn.execute(
        sa.select(
            tasks.c.instance_id,
            tasks.c.status,
            tasks.c.predicted_s,
            tasks.c.started_at,
            instances.c.speed_factor,
        )
        .join(instances, instances.c.id == tasks.c.instance_id)
        .where(tasks.c.status.in_([TaskStatus.QUEUED, TaskStatus.RUNNING]))
    ).all()
    out: dict[int, tuple[float, int]] = {}
    for r in rows:
        predicted = (r.predicted_s or 0.0) * (r.speed_factor or 1.0)
        if r.status == TaskStatus.RUNNING and r.started_at is not None:
            predicted -= (now - aware(r.started_at)).total_seconds()
        seconds, n = out.get(r.instance_id, (0.0, 0))
        out[r.instance_id] = (seconds + max(predicted, 0.0), n + 1)
    return out
