"""Cron schedules, pure: checking them, fire times across DST, and the catch-up policies."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from kiln.core.errors import InvalidSchedule
from kiln.core.schedules import (
    CatchUp,
    fire_times_after,
    parse_age,
    parse_schedule,
    plan_fires,
)

UTC = dt.UTC
BERLIN = ZoneInfo("Europe/Berlin")
WF = {"name": "w", "tasks": [{"name": "A", "handler": "echo"}]}


def at(*args: int, tz: dt.tzinfo = UTC) -> dt.datetime:
    return dt.datetime(*args, tzinfo=tz)


def test_a_daily_time_skipped_by_spring_forward_fires_once_right_after_the_gap():
    # Berlin, 29 March 2026: 02:00 CET jumps to 03:00 CEST, so 02:30 does not exist that day.
    times = fire_times_after("30 2 * * *", "Europe/Berlin", at(2026, 3, 27, 12), count=3)
    local = [t.astimezone(BERLIN) for t in times]
    assert [(t.day, t.hour, t.minute) for t in local] == [(28, 2, 30), (29, 3, 0), (30, 2, 30)]
    assert len(set(times)) == 3


def test_a_daily_time_repeated_by_fall_back_fires_once():
    # Berlin, 25 October 2026: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
    times = fire_times_after("30 2 * * *", "Europe/Berlin", at(2026, 10, 23, 12), count=4)
    days = [t.astimezone(BERLIN).day for t in times]
    assert days == [24, 25, 26, 27]


def test_two_times_in_the_repeated_hour_each_fire_once():
    times = fire_times_after("0,30 2 * * *", "Europe/Berlin", at(2026, 10, 24, 12), count=4)
    local = [(t.astimezone(BERLIN).day, t.astimezone(BERLIN).minute) for t in times]
    assert local == [(25, 0), (25, 30), (26, 0), (26, 30)]


def test_an_hourly_schedule_fires_every_real_hour_through_fall_back():
    times = fire_times_after("0 * * * *", "Europe/Berlin", at(2026, 10, 24, 22, 30), count=4)
    gaps = {(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)}
    assert gaps == {3600.0}  # 02:00 CEST and 02:00 CET are an hour apart, both fire


def test_the_time_zone_decides_the_instant():
    utc = fire_times_after("0 9 * * *", "UTC", at(2026, 6, 1), count=1)[0]
    ny = fire_times_after("0 9 * * *", "America/New_York", at(2026, 6, 1), count=1)[0]
    assert (ny - utc).total_seconds() == 4 * 3600  # EDT is UTC-4 in June


def test_six_fields_are_seconds_first():
    times = fire_times_after("*/15 * * * * *", "UTC", at(2026, 1, 1), count=3)
    assert [t.second for t in times] == [15, 30, 45]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (CatchUp.NONE, [8, 9, 10]),
        (CatchUp.LATEST, [7, 8, 9, 10]),
        (CatchUp.ALL, list(range(1, 11))),
    ],
)
def test_the_catch_up_policy_picks_the_missed_fire_times(policy, expected):
    plan = plan_fires(
        "* * * * * *",
        "UTC",
        cursor=at(2026, 1, 1, 0, 0, 1),
        now=at(2026, 1, 1, 0, 0, 10),
        catch_up=policy,
        grace_s=2,
    )
    assert [f.second for f in plan.fires] == expected
    assert plan.missed == 10 - len(expected)
    assert plan.cursor == at(2026, 1, 1, 0, 0, 11)


def test_catching_up_all_after_a_long_outage_goes_on_at_the_next_pass():
    plan = plan_fires(
        "* * * * * *",
        "UTC",
        cursor=at(2026, 1, 1),
        now=at(2026, 1, 2),
        catch_up=CatchUp.ALL,
        grace_s=5,
        limit=100,
    )
    assert len(plan.fires) == 100 and plan.cursor == at(2026, 1, 1, 0, 1, 40)


def test_nothing_is_due_before_the_cursor():
    plan = plan_fires("* * * * *", "UTC", cursor=at(2026, 1, 1, 0, 1), now=at(2026, 1, 1, 0, 0, 59),
                      catch_up=CatchUp.ALL, grace_s=5)  # fmt: skip
    assert plan.fires == [] and plan.cursor == at(2026, 1, 1, 0, 1)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"cron": "every day"}, "cron"),
        ({"cron": "* * * * * * *"}, "cron"),
        ({"timezone": "Berlin"}, "timezone"),
        ({"name": ""}, "name"),
        ({"overlap": "no"}, "overlap"),
        ({"grace_s": 0}, "grace_s"),
        ({"workflow": []}, "workflow"),
        ({"paused": "yes"}, "paused"),
    ],
)
def test_an_invalid_schedule_names_its_field(change, field):
    with pytest.raises(InvalidSchedule) as err:
        parse_schedule({"name": "s", "cron": "* * * * *", "workflow": WF, **change})
    assert err.value.details["field"] == field


def test_a_change_is_checked_merged_with_the_schedule_it_changes():
    base = parse_schedule({"name": "s", "cron": "* * * * *", "workflow": WF, "catch_up": "all"})
    changed = parse_schedule({"cron": "0 * * * *"}, partial_of=base)
    assert (changed.cron, changed.catch_up, changed.workflow) == ("0 * * * *", CatchUp.ALL, WF)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30d", 30 * 86400),
        ("12h", 43200),
        ("90m", 5400),
        ("45s", 45),
        ("2w", 14 * 86400),
        ("7", 7 * 86400),
        ("1.5h", 5400),
    ],  # fmt: skip
)
def test_ages_read_as_people_write_them(text, seconds):
    assert parse_age(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "30x", "-1d", "0d", "d"])
def test_a_bad_age_is_refused(text):
    with pytest.raises(ValueError):
        parse_age(text)
