"""SQL expressions the noun modules and both stores build their statements from. Pure
expressions over ``kiln.store.schema`` (no connection, no other store module), so any module of
the store can import them without closing an import loop."""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

import sqlalchemy as sa

from kiln.core.states import TASK_DISPATCHABLE, TaskStatus, WorkflowStatus
from kiln.store.schema import instance_capabilities, instances, tasks, workflows

DISPATCHABLE = [str(s) for s in TASK_DISPATCHABLE]
# An instance serving tasks is "running" and has sent a heartbeat lately.
LIVE = "running"
DEFAULT_LOST_AFTER_S = 10.0


def status_literal(status: Any) -> sa.ColumnElement[Any]:
    """The status (a lower-case word) written into the SQL as a constant, for a statement
    built once: a bound value would be rendered again at every execution when in a list."""
    word = str(status)
    if not (word.replace("_", "").isalpha() and word.islower()):
        raise ValueError(f"not a status word: {word!r}")
    return sa.literal_column(f"'{word}'")


def status_in(column: sa.ColumnElement[Any], statuses: Any) -> sa.ColumnElement[bool]:
    """``column IN ('a', 'b')``, the statuses written as constants (:func:`status_literal`)."""
    return column.in_([status_literal(s) for s in statuses])


def run_is_active() -> sa.Exists:
    """The task's run is one whose tasks may be dispatched: pending or running (not paused,
    not finished)."""
    return sa.exists().where(
        workflows.c.id == tasks.c.workflow_id,
        workflows.c.status.in_([WorkflowStatus.PENDING, WorkflowStatus.RUNNING]),
    )


def taken_back(now: dt.datetime) -> dict[str, Any]:
    """The values that take a queued task back to ``ready`` because its run was paused before
    a worker claimed it (by the pause, or by the claim of a lease that committed after it)."""
    return {
        "status": TaskStatus.READY,
        "lease_expires_at": None,
        "queued_at": None,
        "ready_at": now,
    }


def lost_after_s() -> float:
    """Seconds without a heartbeat after which an instance is lost (KILN_INSTANCE_LOST_AFTER_S)."""
    raw = os.environ.get("KILN_INSTANCE_LOST_AFTER_S")
    return float(raw) if raw else DEFAULT_LOST_AFTER_S


def live_clause(now: dt.datetime) -> sa.ColumnElement[bool]:
    """The instance is running and sent a heartbeat within :func:`lost_after_s`."""
    cutoff = now - dt.timedelta(seconds=lost_after_s())
    return sa.and_(instances.c.status == LIVE, instances.c.heartbeat_at >= cutoff)


def served_clause(model_type: sa.ColumnElement[Any], now: dt.datetime) -> sa.ColumnElement[bool]:
    """True where some live instance serves ``model_type`` (a column or value)."""
    return sa.exists().where(
        instance_capabilities.c.capability == model_type,
        instances.c.id == instance_capabilities.c.instance_id,
        live_clause(now),
    )
