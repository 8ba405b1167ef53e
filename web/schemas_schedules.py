"""Request and response schemas of cron schedules (``/schedules``) and reruns. The shapes are
checked here; the engine checks the cron expression, the time zone and the workflow."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate

from kiln.core.schedules import CatchUp, Overlap

OVERLAPS = [o.value for o in Overlap]
CATCH_UPS = [c.value for c in CatchUp]
Positive = {"validate": validate.Range(min=0, min_inclusive=False, max=10**7)}


class ScheduleChangeSchema(ma.Schema):
    """Any fields of a schedule (``PATCH``); the result is checked as a whole."""

    name = fields.String(
        validate=validate.Regexp(r"^[A-Za-z0-9_.:-]{1,200}$"),
        metadata={"description": "unique; 1-200 letters, digits or _ . : -"},
    )
    cron = fields.String(
        metadata={"description": "5 fields (minute hour day month weekday), or 6 with seconds "
                  "first: '*/15 * * * * *' fires every 15 s"},
    )  # fmt: skip
    timezone = fields.String(
        metadata={"description": "IANA time zone the cron fields are read in (default UTC); "
                  "DST follows the IANA database"},
    )  # fmt: skip
    workflow = fields.Dict(metadata={"description": "the workflow definition each fire submits"})
    overlap = fields.String(
        validate=validate.OneOf(OVERLAPS),
        metadata={"description": "while the previous run is unfinished: skip (default) the "
                  "fire, allow another run, or cancel_previous and start"},
    )  # fmt: skip
    catch_up = fields.String(
        validate=validate.OneOf(CATCH_UPS),
        metadata={"description": "fire times missed while no controller ran (more than grace_s "
                  "late): none (default), the latest once, or all"},
    )  # fmt: skip
    grace_s = fields.Float(
        metadata={"description": "a fire time at most this late is on time (default 5)"},
        **Positive,
    )
    retention_days = fields.Float(
        allow_none=True,
        metadata={"description": "prune this schedule's finished runs after this many days "
                  "(overrides KILN_RETENTION_DAYS)"},
        **Positive,
    )  # fmt: skip
    paused = fields.Boolean()


class ScheduleCreateSchema(ScheduleChangeSchema):
    name = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z0-9_.:-]{1,200}$"))
    cron = fields.String(required=True)
    workflow = fields.Dict(required=True)


class FireSchema(ma.Schema):
    fire_time = fields.DateTime(required=True, metadata={"description": "the cron time (UTC)"})
    fired_at = fields.DateTime(required=True)
    outcome = fields.String(required=True, metadata={"enum": ["started", "skipped"]})
    workflow_id = fields.Integer(allow_none=True)


class ScheduleSchema(ma.Schema):
    id = fields.Integer(required=True)
    name = fields.String(required=True)
    cron = fields.String(required=True)
    timezone = fields.String(required=True)
    workflow = fields.Dict(attribute="definition", required=True)
    overlap = fields.String(required=True, metadata={"enum": OVERLAPS})
    catch_up = fields.String(required=True, metadata={"enum": CATCH_UPS})
    grace_s = fields.Float(required=True)
    retention_days = fields.Float(allow_none=True)
    paused = fields.Boolean(required=True)
    next_fire_at = fields.DateTime(
        required=True, metadata={"description": "the next fire time not yet handled"}
    )
    next_fire_times = fields.List(
        fields.DateTime(), metadata={"description": "the next few fire times (none if paused)"}
    )
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class ScheduleDetailSchema(ScheduleSchema):
    fires = fields.List(fields.Nested(FireSchema), metadata={"description": "latest first"})


class ScheduleListSchema(ma.Schema):
    schedules = fields.List(fields.Nested(ScheduleSchema), required=True)


class RerunSchema(ma.Schema):
    from_ = fields.String(
        data_key="from",
        load_default="failed",
        validate=validate.OneOf(["failed"]),
        metadata={"description": "rerun the failed tasks and what depends on them (the one "
                  "choice today); the succeeded tasks' results are reused"},
    )  # fmt: skip


class RerunCreatedSchema(ma.Schema):
    id = fields.Integer(required=True)
    name = fields.String(required=True)
    status = fields.String(required=True)
    rerun_of = fields.Integer(required=True)
    reused = fields.List(fields.String(), metadata={"description": "tasks whose results were "
                         "reused"})  # fmt: skip
    created_at = fields.DateTime(allow_none=True)
