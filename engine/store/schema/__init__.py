"""Kiln's tables, as SQLAlchemy Core metadata. Alembic migrations create them; this package is
what the code queries with and what ``alembic check`` compares the migrated database against.
One module per noun (runs, pipelines, fleet, schedules), all on the one ``metadata``."""

from __future__ import annotations

from kiln.store.schema.columns import Id, Json, Timestamp, metadata, one_of
from kiln.store.schema.fleet import (
    INSTANCE_STATES,
    instance_capabilities,
    instances,
    observations,
    processes,
    scheduler_state,
)
from kiln.store.schema.pipelines import context_shards, contexts, operations, pipelines
from kiln.store.schema.runs import (
    TASK_STATES,
    WORKFLOW_STATES,
    events,
    signals,
    task_attempts,
    task_dependencies,
    tasks,
    workflows,
)
from kiln.store.schema.schedules import FIRE_OUTCOMES, schedule_fires, schedules

__all__ = [
    "metadata",
    "Id",
    "Json",
    "Timestamp",
    "one_of",
    "TASK_STATES",
    "WORKFLOW_STATES",
    "workflows",
    "tasks",
    "signals",
    "task_dependencies",
    "task_attempts",
    "events",
    "processes",
    "INSTANCE_STATES",
    "instances",
    "instance_capabilities",
    "observations",
    "scheduler_state",
    "contexts",
    "context_shards",
    "pipelines",
    "operations",
    "schedules",
    "FIRE_OUTCOMES",
    "schedule_fires",
]
