"""The scheduler's persisted row (``scheduler_state``: policy, its tuning, placement strategy,
counters) and the task figures the scheduler reads: finished run times, the active counts,
the dispatchable queue."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from kiln.core.scheduling import SchedulerState
from kiln.core.states import TaskStatus
from kiln.store.db import aware, utcnow
from kiln.store.dialects import insert_ignoring
from kiln.store.dispatch import best_and_oldest, dispatchable_tasks, oldest_ranked
from kiln.store.schema import scheduler_state, tasks

DEFAULT_POLICY = "FIFO"
DEFAULT_PLACEMENT = "min_expected_completion"
ACTIVE = [TaskStatus.READY, TaskStatus.RETRYING, TaskStatus.QUEUED, TaskStatus.RUNNING]


@dataclass
class StoredScheduler:
    policy: str
    params: dict[str, dict[str, Any]]
    placement: str
    state: SchedulerState
    placement_turn: int
    updated_at: dt.datetime


def _default_row() -> dict[str, Any]:
    return {
        "id": 1,
        "policy": DEFAULT_POLICY,
        "params": {},
        "placement": DEFAULT_PLACEMENT,
        "state": {**SchedulerState().to_dict(), "placement_turn": 0},
        "updated_at": utcnow(),
    }


def load_txn(conn: sa.Connection, *, lock: bool = False) -> StoredScheduler:
    """The stored scheduler (the defaults while none is stored). ``lock`` locks its row,
    creating it first if need be."""
    q = sa.select(scheduler_state).where(scheduler_state.c.id == 1)
    row: Mapping[Any, Any] | None = (
        conn.execute(q.with_for_update() if lock else q).mappings().first()
    )
    if row is None and lock:
        conn.execute(insert_ignoring(conn, scheduler_state, key=["id"]).values(_default_row()))
        row = conn.execute(q.with_for_update()).mappings().first()
    if row is None:
        row = _default_row()
    state = dict(row["state"] or {})
    turn = int(state.pop("placement_turn", 0))
    known = set(SchedulerState().to_dict())
    return StoredScheduler(
        policy=row["policy"],
        # Anything but an object (written by hand) reads as no tuning, not as a crash.
        params=dict(row["params"]) if isinstance(row["params"], dict) else {},
        placement=row["placement"],
        state=SchedulerState.from_dict({k: v for k, v in state.items() if k in known}),
        placement_turn=turn,
        updated_at=aware(row["updated_at"]) or utcnow(),
    )


def write_txn(conn: sa.Connection, stored: StoredScheduler, **changes: Any) -> None:
    """Write ``stored`` (and ``changes``) back; its row must exist (``load_txn(lock=True)``)."""
    values = {
        "policy": stored.policy,
        "params": stored.params,
        "placement": stored.placement,
        "state": {**stored.state.to_dict(), "placement_turn": stored.placement_turn},
        "updated_at": utcnow(),
        **changes,
    }
    conn.execute(scheduler_state.update().where(scheduler_state.c.id == 1).values(values))


def finished_since(conn: sa.Connection, since: dt.datetime, *, limit: int = 1000) -> list[Any]:
    """Tasks that finished after ``since`` having started, oldest first: the queue-item
    columns plus ``started_at, finished_at, actual_s``."""
    return list(
        conn.execute(
            sa.select(
                tasks.c.id,
                tasks.c.workflow_id,
                tasks.c.priority,
                tasks.c.ready_at,
                tasks.c.created_at,
                tasks.c.predicted,
                tasks.c.started_at,
                tasks.c.finished_at,
                tasks.c.actual_s,
            )
            .where(tasks.c.finished_at > since, tasks.c.started_at.is_not(None))
            .order_by(tasks.c.finished_at)
            .limit(limit)
        ).all()
    )


def active_counts(conn: sa.Connection) -> dict[str, int]:
    """How many tasks are ready, retrying, queued and running (absent statuses have none)."""
    return dict(
        conn.execute(  # type: ignore[arg-type]
            sa.select(tasks.c.status, sa.func.count())
            .where(tasks.c.status.in_(ACTIVE))
            .group_by(tasks.c.status)
        ).all()
    )


def queued_rows(conn: sa.Connection, limit: int) -> list[Any]:
    """The dispatchable queue with ``name`` and ``waiting_reason``, as a controller ranks it:
    the best ``limit`` by priority, and the oldest (see ``dispatch_candidates_txn``)."""
    q = dispatchable_tasks(tasks.c.name, tasks.c.waiting_reason)
    return best_and_oldest(conn, q, limit=limit, oldest=oldest_ranked(limit))
