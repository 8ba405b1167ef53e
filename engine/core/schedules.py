"""Cron schedules, pure: checking a schedule, its fire times in its IANA time zone, and which
of the fire times due at a controller's pass it fires (the catch-up policy). The store keeps
one row per (schedule, fire time) fired, so these functions only decide; they never count.

Cron is parsed by ``croniter`` (five fields; a sixth, leading field is seconds). Fire times
are computed in the schedule's zone by ``zoneinfo``, so DST follows the IANA database: a
local time skipped by a spring-forward fires at the first instant after the gap, and a time at
a fixed hour repeated by a fall-back fires once (fire times are UTC instants).
"""

from __future__ import annotations

import datetime as dt
import enum
import re
import zoneinfo
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kiln.core.errors import InvalidSchedule

if TYPE_CHECKING:
    from croniter import croniter

SCHEDULE_FIELDS = {
    "name", "cron", "timezone", "workflow", "overlap", "catch_up", "grace_s", "retention_days",
    "paused",
}  # fmt: skip
# Fire times at most this late when a controller first sees them are on time; later ones
# were missed (every controller was down) and the catch-up policy decides.
DEFAULT_GRACE_S = 5.0
# One pass fires at most this many fire times of one schedule (catch_up=all after a long
# outage goes on at the next pass).
MAX_FIRES_PER_PASS = 100
NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "": 86400}


class Overlap(enum.StrEnum):
    """What a fire does while the schedule's previous run has not finished."""

    SKIP = "skip"  # fire nothing (the fire is recorded as skipped)
    ALLOW = "allow"  # start another run beside it
    CANCEL_PREVIOUS = "cancel_previous"  # cancel the unfinished runs, then start


class CatchUp(enum.StrEnum):
    """Which missed fire times (later than the grace when first seen) still fire."""

    NONE = "none"  # none: only fire times on time run
    LATEST = "latest"  # the latest missed one, once
    ALL = "all"  # every one, in order


@dataclass(frozen=True)
class ScheduleSpec:
    """A checked schedule. ``workflow`` is the definition each fire submits (checked by the
    application layer, which knows the deployment's limits and handlers)."""

    name: str
    cron: str
    timezone: str
    workflow: dict[str, Any]
    overlap: Overlap = Overlap.SKIP
    catch_up: CatchUp = CatchUp.NONE
    grace_s: float = DEFAULT_GRACE_S
    retention_days: float | None = None
    paused: bool = False

    def to_row(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cron": self.cron,
            "timezone": self.timezone,
            "definition": self.workflow,
            "overlap": self.overlap.value,
            "catch_up": self.catch_up.value,
            "grace_s": self.grace_s,
            "retention_days": self.retention_days,
            "paused": self.paused,
        }


def _fail(message: str, field: str) -> InvalidSchedule:
    return InvalidSchedule(message, field=field)


def check_cron(expression: Any) -> str:
    """The cron expression, stripped; InvalidSchedule unless croniter parses it with five
    fields, or six with seconds first."""
    if not isinstance(expression, str) or not expression.strip():
        raise _fail("cron must be a cron expression such as '*/5 * * * *'", "cron")
    expression = " ".join(expression.split())
    if len(expression.split(" ")) not in (5, 6):
        raise _fail(
            f"cron {expression!r} must have 5 fields (minute hour day month weekday), or 6 "
            "with seconds first",
            "cron",
        )
    from croniter import CroniterError

    try:
        _iterator(expression, dt.datetime(2000, 1, 1, tzinfo=dt.UTC)).get_next(dt.datetime)
    except (CroniterError, ValueError, KeyError) as exc:
        raise _fail(f"cron {expression!r} is not valid: {exc}", "cron") from None
    return expression


def check_timezone(name: Any) -> zoneinfo.ZoneInfo:
    if not isinstance(name, str) or not name:
        raise _fail("timezone must be an IANA time zone name such as 'Europe/Berlin'", "timezone")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise _fail(f"timezone {name!r} is not an IANA time zone", "timezone") from None


def _number(value: Any, field: str, *, allow_none: bool) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise _fail(f"{field} must be a number greater than 0", field)
    if value > 10**7:
        raise _fail(f"{field} must be at most {10**7}", field)
    return float(value)


def parse_schedule(data: dict[str, Any], *, partial_of: ScheduleSpec | None = None) -> ScheduleSpec:
    """Check a schedule as sent (``POST /schedules``), or, with ``partial_of``, the fields of a
    change to that schedule (``PATCH``). InvalidSchedule (422) names the first bad field."""
    if not isinstance(data, dict):
        raise _fail("a schedule must be a JSON object", "body")
    unknown = sorted(set(data) - SCHEDULE_FIELDS)
    if unknown:
        raise _fail(f"unknown field {unknown[0]!r}", unknown[0])
    base = partial_of.to_row() if partial_of else {}
    if partial_of:
        base["workflow"] = base.pop("definition")
    merged = {**base, **data}
    for required in ("name", "cron", "workflow"):
        if required not in merged:
            raise _fail(f"missing required field {required!r}", required)
    name = merged["name"]
    if not isinstance(name, str) or not NAME.match(name):
        raise _fail("name must be 1-200 letters, digits or _ . : -", "name")
    if not isinstance(merged["workflow"], dict):
        raise _fail("workflow must be a workflow definition (a JSON object)", "workflow")
    timezone = merged.get("timezone", "UTC")
    check_timezone(timezone)
    try:
        overlap = Overlap(merged.get("overlap", Overlap.SKIP))
    except ValueError:
        raise _fail("overlap must be one of skip, allow, cancel_previous", "overlap") from None
    try:
        catch_up = CatchUp(merged.get("catch_up", CatchUp.NONE))
    except ValueError:
        raise _fail("catch_up must be one of none, latest, all", "catch_up") from None
    paused = merged.get("paused", False)
    if not isinstance(paused, bool):
        raise _fail("paused must be true or false", "paused")
    grace = _number(merged.get("grace_s", DEFAULT_GRACE_S), "grace_s", allow_none=False)
    return ScheduleSpec(
        name=name,
        cron=check_cron(merged["cron"]),
        timezone=timezone,
        workflow=merged["workflow"],
        overlap=overlap,
        catch_up=catch_up,
        grace_s=grace or DEFAULT_GRACE_S,
        retention_days=_number(merged.get("retention_days"), "retention_days", allow_none=True),
        paused=paused,
    )


def _iterator(expression: str, start: dt.datetime) -> croniter:
    # Imported here: every process loads this module (for the schedules table's enums), and
    # croniter's import costs a worker's start-up more than the rest of this module.
    from croniter import croniter

    six = len(expression.split(" ")) == 6
    return croniter(expression, start, second_at_beginning=six)


def fire_times_after(
    expression: str, timezone: str, after: dt.datetime, *, count: int
) -> list[dt.datetime]:
    """The next ``count`` fire times strictly after ``after``, as UTC instants, each once."""
    zone = check_timezone(timezone)
    it = _iterator(expression, after.astimezone(zone))
    fields = expression.split(" ")
    fixed_hour = not fields[len(fields) - 4].startswith("*")
    out: list[dt.datetime] = []
    last, last_wall = after, None
    while len(out) < count:
        local = it.get_next(dt.datetime).astimezone(zone)
        t, wall = local.astimezone(dt.UTC), local.replace(tzinfo=None)
        # A fall-back repeats an hour of wall-clock time: a job at a fixed hour fires the
        # first time only, as cron does; one on every hour fires in both (they are real hours).
        repeated = last_wall is not None and wall <= last_wall
        if t > last and not (fixed_hour and repeated):
            out.append(t)
        last, last_wall = max(last, t), max(wall, last_wall or wall)
    return out


def next_fire_after(expression: str, timezone: str, after: dt.datetime) -> dt.datetime:
    return fire_times_after(expression, timezone, after, count=1)[0]


@dataclass(frozen=True)
class Plan:
    """What one pass does for a schedule: fire ``fires`` (oldest first), and move its cursor
    (the next fire time not yet handled) to ``cursor``; ``missed`` were dropped by the
    catch-up policy."""

    fires: list[dt.datetime]
    missed: int
    cursor: dt.datetime


def plan_fires(
    expression: str,
    timezone: str,
    *,
    cursor: dt.datetime,
    now: dt.datetime,
    catch_up: CatchUp,
    grace_s: float,
    limit: int = MAX_FIRES_PER_PASS,
) -> Plan:
    """The fire times due at ``now`` from ``cursor`` (the schedule's next unhandled fire
    time, itself a fire time): those on time (at most ``grace_s`` late) fire; of the missed
    ones, ``all`` fires every one, ``latest`` the latest, ``none`` none. At most ``limit`` fire
    times are looked at; the cursor then stops after the last one, for the next pass."""
    due: list[dt.datetime] = []
    t = cursor
    while t <= now and len(due) < limit:
        due.append(t)
        t = next_fire_after(expression, timezone, t)
    late = [f for f in due if (now - f).total_seconds() > grace_s]
    on_time = [f for f in due if (now - f).total_seconds() <= grace_s]
    if catch_up == CatchUp.ALL:
        fires = due
    elif catch_up == CatchUp.LATEST and late:
        fires = [late[-1], *on_time]
    else:
        fires = on_time
    return Plan(fires=fires, missed=len(due) - len(fires), cursor=t)


def parse_age(text: str) -> dt.timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` (a bare number is days) as a duration."""
    match = AGE.match(text or "")
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not an age such as 30d, 12h, 90m or 45s")
    return dt.timedelta(seconds=float(match.group(1)) * AGE_UNITS[match.group(2)])


OVERLAP_CHOICES = [o.value for o in Overlap]
CATCH_UP_CHOICES = [c.value for c in CatchUp]
