"""Cron schedules over HTTP: create, list, read (with the next fire times and the latest
fires), change, delete, pause and resume. Controllers fire them (``kiln.schedules``)."""

from __future__ import annotations

from flask_smorest import Blueprint

from kiln.web.common import MUTATING_DOC, kiln
from kiln.web.schemas_schedules import (
    ScheduleChangeSchema,
    ScheduleCreateSchema,
    ScheduleDetailSchema,
    ScheduleListSchema,
    ScheduleSchema,
)

blp = Blueprint("schedules", __name__, description="Cron schedules that submit a workflow.")
ID = "int(max=9223372036854775807)"
WRITE_DOC = {"security": MUTATING_DOC["security"]}


@blp.post("/schedules")
@blp.arguments(ScheduleCreateSchema())
@blp.response(201, ScheduleSchema)
@blp.doc(**WRITE_DOC)
def create(data):  # type: ignore[no-untyped-def]
    """Create a schedule: 201 with it and its next fire times; 409 ``schedule_name_taken``
    when the name is in use; 422 when the cron, the time zone or the workflow is invalid."""
    return kiln().schedules.create(data), 201


@blp.get("/schedules")
@blp.response(200, ScheduleListSchema)
def list_schedules():  # type: ignore[no-untyped-def]
    """Every schedule, by name, with its next fire times."""
    return {"schedules": kiln().schedules.list()}


@blp.get(f"/schedules/<{ID}:schedule_id>")
@blp.response(200, ScheduleDetailSchema)
def get_schedule(schedule_id: int):  # type: ignore[no-untyped-def]
    """A schedule, its next fire times and its latest fires (the runs they started)."""
    return kiln().schedules.get(schedule_id)


@blp.patch(f"/schedules/<{ID}:schedule_id>")
@blp.arguments(ScheduleChangeSchema())
@blp.response(200, ScheduleSchema)
@blp.doc(**WRITE_DOC)
def change(data, schedule_id: int):  # type: ignore[no-untyped-def]
    """Change any fields. A new cron or time zone fires from the next fire time after now."""
    return kiln().schedules.update(schedule_id, data)


@blp.delete(f"/schedules/<{ID}:schedule_id>")
@blp.response(204)
@blp.doc(**WRITE_DOC)
def delete(schedule_id: int):  # type: ignore[no-untyped-def]
    """Delete a schedule and its fire history; the runs it started stay."""
    kiln().schedules.delete(schedule_id)
    return ""


@blp.post(f"/schedules/<{ID}:schedule_id>/pause")
@blp.response(200, ScheduleSchema)
@blp.doc(**WRITE_DOC)
def pause(schedule_id: int):  # type: ignore[no-untyped-def]
    """Stop firing (pausing a paused schedule changes nothing)."""
    return kiln().schedules.pause(schedule_id)


@blp.post(f"/schedules/<{ID}:schedule_id>/resume")
@blp.response(200, ScheduleSchema)
@blp.doc(**WRITE_DOC)
def resume(schedule_id: int):  # type: ignore[no-untyped-def]
    """Fire again, from the next fire time after now: the paused ones are not caught up."""
    return kiln().schedules.resume(schedule_id)
