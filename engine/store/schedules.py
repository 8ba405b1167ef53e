"""Cron schedules: their rows, and firing them.

A schedule's ``next_fire_at`` is its cursor: the next fire time not yet handled. A controller
fires a due schedule in one transaction: it locks the row (``SKIP LOCKED``: another controller
takes the next schedule), inserts one ``schedule_fires`` row per fire time it fires, starts a
run only for a row it inserted, and moves the cursor. The fires' primary key (schedule, fire
time) is what guarantees one run per fire time with any number of controllers; the row lock
only keeps them from doing the same work twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from kiln.core.definitions import WorkflowSpec
from kiln.core.errors import ScheduleNameTaken, ScheduleNotFound
from kiln.core.schedules import CatchUp, Overlap, ScheduleSpec, next_fire_after, plan_fires
from kiln.core.states import WORKFLOW_TERMINAL
from kiln.store.db import aware, utcnow
from kiln.store.dialects import insert_ignoring
from kiln.store.schema import schedule_fires, schedules, workflows
from kiln.store.workflows import cancel_workflow_txn, insert_workflow_txn

TERMINAL = [str(s) for s in WORKFLOW_TERMINAL]


def _row(row: Any) -> dict[str, Any]:
    out = dict(row)
    for key in ("next_fire_at", "created_at", "updated_at"):
        out[key] = aware(out[key])
    return out


def create_schedule_txn(conn: sa.Connection, spec: ScheduleSpec) -> dict[str, Any]:
    """Store ``spec``; its first fire time is the first one after now. ScheduleNameTaken if
    the name is in use."""
    now = utcnow()
    values = {
        **spec.to_row(),
        "next_fire_at": next_fire_after(spec.cron, spec.timezone, now),
        "created_at": now,
        "updated_at": now,
    }
    new_id = conn.execute(
        insert_ignoring(conn, schedules, key=["name"]).values(values).returning(schedules.c.id)
    ).scalar()
    if new_id is None:
        raise ScheduleNameTaken(f"a schedule named {spec.name!r} exists already", name=spec.name)
    return get_schedule(conn, new_id)


def get_schedule(conn: sa.Connection, schedule_id: int) -> dict[str, Any]:
    row = conn.execute(sa.select(schedules).where(schedules.c.id == schedule_id)).mappings().first()
    if row is None:
        raise ScheduleNotFound(f"schedule {schedule_id} does not exist", id=schedule_id)
    return _row(row)


def list_schedules(conn: sa.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(sa.select(schedules).order_by(schedules.c.name)).mappings()
    return [_row(r) for r in rows]


def spec_of(row: dict[str, Any]) -> ScheduleSpec:
    """The stored schedule as a spec (to apply a change to)."""
    return ScheduleSpec(
        name=row["name"],
        cron=row["cron"],
        timezone=row["timezone"],
        workflow=row["definition"],
        overlap=Overlap(row["overlap"]),
        catch_up=CatchUp(row["catch_up"]),
        grace_s=row["grace_s"],
        retention_days=row["retention_days"],
        paused=row["paused"],
    )


def update_schedule_txn(conn: sa.Connection, schedule_id: int, spec: ScheduleSpec) -> dict:
    """Replace the schedule's fields with ``spec``'s. A new cron or time zone, or a resume,
    restarts its fire times after now (missed ones are not caught up)."""
    current = get_schedule(conn, schedule_id)
    taken = conn.execute(
        sa.select(schedules.c.id).where(
            schedules.c.name == spec.name, schedules.c.id != schedule_id
        )
    ).first()
    if taken is not None:
        raise ScheduleNameTaken(f"a schedule named {spec.name!r} exists already", name=spec.name)
    now = utcnow()
    values = {**spec.to_row(), "updated_at": now}
    restart = (spec.cron, spec.timezone) != (current["cron"], current["timezone"])
    if restart or (current["paused"] and not spec.paused):
        values["next_fire_at"] = next_fire_after(spec.cron, spec.timezone, now)
    conn.execute(schedules.update().where(schedules.c.id == schedule_id).values(values))
    return get_schedule(conn, schedule_id)


def delete_schedule_txn(conn: sa.Connection, schedule_id: int) -> None:
    """Delete the schedule and its fires; the runs it started stay."""
    if not conn.execute(schedules.delete().where(schedules.c.id == schedule_id)).rowcount:
        raise ScheduleNotFound(f"schedule {schedule_id} does not exist", id=schedule_id)


def set_paused_txn(conn: sa.Connection, schedule_id: int, paused: bool) -> dict[str, Any]:
    """Pause or resume. A resumed schedule fires from the first fire time after now; the ones
    while it was paused are not caught up. Pausing a paused schedule changes nothing."""
    row = get_schedule(conn, schedule_id)
    if row["paused"] != paused:
        now = utcnow()
        values: dict[str, Any] = {"paused": paused, "updated_at": now}
        if not paused:
            values["next_fire_at"] = next_fire_after(row["cron"], row["timezone"], now)
        conn.execute(
            schedules.update()
            .where(schedules.c.id == schedule_id, schedules.c.paused.is_(not paused))
            .values(values)
        )
    return get_schedule(conn, schedule_id)


def due_schedule_ids(conn: sa.Connection, now: dt.datetime, limit: int = 100) -> list[int]:
    """Schedules not paused whose next fire time has come, the most overdue first."""
    return list(
        conn.execute(
            sa.select(schedules.c.id)
            .where(schedules.c.paused.is_(False), schedules.c.next_fire_at <= now)
            .order_by(schedules.c.next_fire_at)
            .limit(limit)
        ).scalars()
    )


def fires_of(conn: sa.Connection, schedule_id: int, limit: int = 20) -> list[dict[str, Any]]:
    """The schedule's latest fires, newest first."""
    rows = conn.execute(
        sa.select(schedule_fires)
        .where(schedule_fires.c.schedule_id == schedule_id)
        .order_by(schedule_fires.c.fire_time.desc())
        .limit(limit)
    ).mappings()
    return [
        {**r, "fire_time": aware(r["fire_time"]), "fired_at": aware(r["fired_at"])} for r in rows
    ]


@dataclass
class Fired:
    """What one schedule's firing did: ``started`` runs ``(fire time, workflow id)``,
    ``skipped`` fire times (overlap=skip), fire times ``missed`` (dropped by catch-up)."""

    schedule_id: int
    started: list[tuple[dt.datetime, int]] = field(default_factory=list)
    skipped: list[dt.datetime] = field(default_factory=list)
    missed: int = 0


def _unfinished_runs(conn: sa.Connection, schedule_id: int) -> list[int]:
    return list(
        conn.execute(
            sa.select(workflows.c.id)
            .where(workflows.c.schedule_id == schedule_id, workflows.c.status.not_in(TERMINAL))
            .order_by(workflows.c.id)
        ).scalars()
    )


def fire_schedule_txn(
    conn: sa.Connection,
    schedule_id: int,
    *,
    now: dt.datetime,
    workflow_of: Callable[[dict[str, Any]], WorkflowSpec],
    trace_context: str | None = None,
) -> Fired | None:
    """Fire the schedule's due fire times (``kiln.core.schedules.plan_fires``); None when it
    is not due, paused, or another controller holds it. ``workflow_of`` turns the stored
    definition into the spec each fire submits; ``trace_context`` is the traceparent of the
    controller's fire span, stored with each run started."""
    row = (
        conn.execute(
            sa.select(schedules)
            .where(
                schedules.c.id == schedule_id,
                schedules.c.paused.is_(False),
                schedules.c.next_fire_at <= now,
            )
            .with_for_update(skip_locked=True)
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    cursor = aware(row["next_fire_at"])
    plan = plan_fires(
        row["cron"],
        row["timezone"],
        cursor=cursor,
        now=now,
        catch_up=CatchUp(row["catch_up"]),
        grace_s=row["grace_s"],
    )
    fired = Fired(schedule_id, missed=plan.missed)
    overlap = Overlap(row["overlap"])
    spec = workflow_of(row["definition"]) if plan.fires else None
    for fire_time in plan.fires:
        claimed = conn.execute(
            insert_ignoring(conn, schedule_fires, key=["schedule_id", "fire_time"])
            .values(schedule_id=schedule_id, fire_time=fire_time, fired_at=now, outcome="skipped")
            .returning(schedule_fires.c.fire_time)
        ).first()
        if claimed is None:
            continue  # fired already (the key, not the lock, is the guarantee)
        unfinished = _unfinished_runs(conn, schedule_id) if overlap != Overlap.ALLOW else []
        if unfinished and overlap == Overlap.SKIP:
            fired.skipped.append(fire_time)
            continue
        for run_id in unfinished:
            cancel_workflow_txn(conn, run_id)
        assert spec is not None
        wf_id, _, _ = insert_workflow_txn(conn, spec, trace_context=trace_context)
        conn.execute(
            workflows.update().where(workflows.c.id == wf_id).values(schedule_id=schedule_id)
        )
        conn.execute(
            schedule_fires.update()
            .where(
                schedule_fires.c.schedule_id == schedule_id,
                schedule_fires.c.fire_time == fire_time,
            )
            .values(outcome="started", workflow_id=wf_id)
        )
        fired.started.append((fire_time, wf_id))
    conn.execute(
        schedules.update()
        .where(schedules.c.id == schedule_id, schedules.c.next_fire_at == row["next_fire_at"])
        .values(next_fire_at=plan.cursor)
    )
    return fired
