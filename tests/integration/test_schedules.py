"""Cron schedules on both databases: the HTTP API, firing each fire time once, the overlap
and catch-up policies, pause and resume. Controllers' passes are driven by calling
``kiln.schedules.fire_due(now=...)`` with the time they would see."""

from __future__ import annotations

import datetime as dt
import threading
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

import tests.handlers  # noqa: F401 - registers the handlers the definitions name
from kiln.app.runtime import Kiln
from kiln.core.clock import utcnow
from kiln.core.states import WORKFLOW_TERMINAL
from kiln.web.app import create_app
from tests.conftest import fast_settings, wait_for

ECHO = {"name": "tick", "tasks": [{"name": "A", "handler": "echo", "params": {"x": 1}}]}
LONG = {"name": "long", "tasks": [{"name": "A", "handler": "sleep", "params": {"seconds": 30}}]}


@pytest.fixture
def client(kiln, monkeypatch):
    monkeypatch.delenv("KILN_API_TOKEN", raising=False)
    return create_app(kiln).test_client()


def make(kiln, **fields):
    body = {"name": "s", "cron": "* * * * * *", "workflow": ECHO, **fields}
    return kiln.schedules.create(body)


def fires(kiln, schedule_id):
    """The schedule's fires, oldest first."""
    rows = kiln.schedules.get(schedule_id, fires=1000)["fires"]
    return [SimpleNamespace(**r) for r in reversed(rows)]


def runs_of(kiln, schedule_id):
    return kiln.read(
        lambda c: c.execute(
            sa.text("SELECT id, status FROM workflows WHERE schedule_id = :s ORDER BY id"),
            {"s": schedule_id},
        ).all()
    )


def test_a_schedule_is_created_read_changed_paused_resumed_and_deleted_over_http(client):
    r = client.post(
        "/schedules",
        json={"name": "nightly", "cron": "30 2 * * *", "timezone": "Europe/Berlin",
              "workflow": ECHO, "overlap": "allow", "catch_up": "latest"},
    )  # fmt: skip
    assert r.status_code == 201, r.get_json()
    s = r.get_json()
    assert s["overlap"] == "allow" and s["catch_up"] == "latest" and s["workflow"] == ECHO
    assert len(s["next_fire_times"]) == 5
    first = dt.datetime.fromisoformat(s["next_fire_times"][0])
    local = first.astimezone(dt.timezone(dt.timedelta(hours=1)))  # Berlin in December: +01
    assert (local.hour, local.minute) == (2, 30)

    assert [x["name"] for x in client.get("/schedules").get_json()["schedules"]] == ["nightly"]
    r = client.patch(f"/schedules/{s['id']}", json={"cron": "0 * * * *", "timezone": "UTC"})
    assert r.status_code == 200, r.get_json()
    assert dt.datetime.fromisoformat(r.get_json()["next_fire_at"]).minute == 0

    paused = client.post(f"/schedules/{s['id']}/pause").get_json()
    assert paused["paused"] is True and paused["next_fire_times"] == []
    resumed = client.post(f"/schedules/{s['id']}/resume").get_json()
    assert resumed["paused"] is False and len(resumed["next_fire_times"]) == 5

    detail = client.get(f"/schedules/{s['id']}").get_json()
    assert detail["fires"] == [] and detail["name"] == "nightly"
    assert client.delete(f"/schedules/{s['id']}").status_code == 204
    assert client.get(f"/schedules/{s['id']}").status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"cron": "61 * * * *"}, 422, "cron"),
        ({"cron": "* * *"}, 422, "cron"),
        ({"timezone": "Mars/Olympus"}, 422, "timezone"),
        ({"overlap": "sometimes"}, 422, "overlap"),
        ({"catch_up": "some"}, 422, "catch_up"),
        ({"workflow": {"name": "w", "tasks": [{"name": "A", "handler": "os:system"}]}}, 422, None),
        ({"workflow": {"name": "w", "tasks": []}}, 422, None),
        ({"retention_days": -1}, 422, "retention_days"),
        ({"surprise": 1}, 422, "surprise"),
    ],
)
def test_an_invalid_schedule_is_refused_with_the_one_error_shape(client, body, status, field):
    r = client.post("/schedules", json={"name": "bad", "cron": "* * * * *", "workflow": ECHO,
                                        **body})  # fmt: skip
    assert r.status_code == status, r.get_json()
    err = r.get_json()
    assert set(err) == {"error", "message", "details"}
    if field:
        assert err["details"]["field"] == field
    assert client.get("/schedules").get_json()["schedules"] == []


def test_a_missing_field_a_taken_name_and_an_unknown_schedule_get_400_409_and_404(client):
    r = client.post("/schedules", json={"name": "x", "cron": "* * * * *"})
    assert r.status_code == 400 and r.get_json()["error"] == "missing_field"
    ok = {"name": "x", "cron": "* * * * *", "workflow": ECHO}
    assert client.post("/schedules", json=ok).status_code == 201
    r = client.post("/schedules", json=ok)
    assert r.status_code == 409 and r.get_json()["error"] == "schedule_name_taken"
    for method, path in (("get", "/schedules/999"), ("patch", "/schedules/999"),
                         ("delete", "/schedules/999"), ("post", "/schedules/999/pause")):  # fmt: skip
        r = getattr(client, method)(path, json={} if method == "patch" else None)
        assert r.status_code == 404, (method, path, r.get_json())
        assert r.get_json()["error"] == "schedule_not_found"


def test_each_fire_time_starts_one_run_however_often_and_concurrently_it_is_fired(kiln):
    s = make(kiln, overlap="allow", catch_up="all")
    now = s["next_fire_at"] + dt.timedelta(seconds=4.5)  # five fire times due
    handles = [Kiln(kiln.settings, pool_size=2) for _ in range(4)]
    try:
        threads = [
            threading.Thread(target=h.schedules.fire_due, kwargs={"now": now}) for h in handles
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for h in handles:
            h.schedules.fire_due(now=now)
    finally:
        for h in handles:
            h.close()
    fired = fires(kiln, s["id"])
    assert [f.outcome for f in fired] == ["started"] * 5
    assert len({f.workflow_id for f in fired}) == 5
    assert len(runs_of(kiln, s["id"])) == 5
    step = {
        (b.fire_time - a.fire_time).total_seconds() for a, b in zip(fired, fired[1:], strict=False)
    }
    assert step == {1.0}


def test_overlap_skip_records_the_fire_and_starts_no_second_run(kiln):
    s = make(kiln, workflow=LONG, overlap="skip")
    t0 = s["next_fire_at"]
    assert kiln.schedules.fire_due(now=t0) == 1
    assert kiln.schedules.fire_due(now=t0 + dt.timedelta(seconds=1)) == 0
    assert [f.outcome for f in fires(kiln, s["id"])] == ["started", "skipped"]
    assert len(runs_of(kiln, s["id"])) == 1


def test_overlap_cancel_previous_cancels_the_unfinished_run_and_starts_a_new_one(kiln):
    s = make(kiln, workflow=LONG, overlap="cancel_previous")
    t0 = s["next_fire_at"]
    kiln.schedules.fire_due(now=t0)
    kiln.schedules.fire_due(now=t0 + dt.timedelta(seconds=1))
    runs = runs_of(kiln, s["id"])
    assert [r.status for r in runs] == ["cancelled", "pending"]


def test_overlap_allow_starts_a_run_beside_the_unfinished_one(kiln):
    s = make(kiln, workflow=LONG, overlap="allow")
    t0 = s["next_fire_at"]
    kiln.schedules.fire_due(now=t0)
    kiln.schedules.fire_due(now=t0 + dt.timedelta(seconds=1))
    assert [r.status for r in runs_of(kiln, s["id"])] == ["pending", "pending"]


@pytest.mark.parametrize(("catch_up", "late_runs"), [("none", 0), ("latest", 1), ("all", 9)])
def test_after_an_outage_the_catch_up_policy_decides_which_missed_fire_times_run(
    kiln, catch_up, late_runs
):
    s = make(kiln, overlap="allow", catch_up=catch_up, grace_s=2)
    t0 = s["next_fire_at"]
    kiln.schedules.fire_due(now=t0)
    # every controller is down for 12 s: t0+1 .. t0+12 are due when one comes back at
    # t0+12; t0+1 .. t0+9 are more than grace_s late (missed), t0+10 .. t0+12 on time
    back = t0 + dt.timedelta(seconds=12)
    kiln.schedules.fire_due(now=back)
    fired = [f.fire_time for f in fires(kiln, s["id"])]
    late = [f for f in fired[1:] if (back - f).total_seconds() > 2]
    on_time = [f for f in fired[1:] if (back - f).total_seconds() <= 2]
    assert len(late) == late_runs
    assert len(on_time) == 3  # t0+10, t0+11, t0+12: at most grace_s late
    if catch_up == "latest":
        assert late == [t0 + dt.timedelta(seconds=9)]
    assert len(runs_of(kiln, s["id"])) == len(fired)
    assert kiln.schedules.fire_due(now=back) == 0  # the cursor moved past them all


def test_a_paused_schedule_does_not_fire_and_a_resumed_one_does_not_catch_up(kiln):
    s = make(kiln, overlap="allow", catch_up="all")
    kiln.schedules.pause(s["id"])
    later = s["next_fire_at"] + dt.timedelta(seconds=5)
    assert kiln.schedules.fire_due(now=later) == 0
    # paused over two fire times of the clock itself, so the resume has ones to not catch up
    wait_for(lambda: utcnow() > s["next_fire_at"] + dt.timedelta(seconds=1.1), what="2 s")
    resumed = kiln.schedules.resume(s["id"])
    assert resumed["next_fire_at"] > utcnow() - dt.timedelta(seconds=1)
    kiln.schedules.fire_due(now=resumed["next_fire_at"])
    assert [f.fire_time for f in fires(kiln, s["id"])] == [resumed["next_fire_at"]]


def test_a_fired_run_runs_to_the_end_and_the_schedule_shows_it(kiln, embedded):
    s = make(kiln, overlap="allow")
    kiln.schedules.fire_due(now=s["next_fire_at"])
    [(run_id, _)] = runs_of(kiln, s["id"])
    run = wait_for(
        lambda: (r := kiln.workflow(run_id))["status"] in WORKFLOW_TERMINAL and r,
        what="the scheduled run to finish",
    )
    assert run["status"] == "succeeded" and run["schedule_id"] == s["id"]
    [fire] = kiln.schedules.get(s["id"])["fires"]
    assert fire["workflow_id"] == run_id and fire["outcome"] == "started"


def test_a_controller_fires_a_due_schedule_on_its_own(database_url):
    import tests.handlers  # noqa: F401, F811
    from kiln.workers.embedded import EmbeddedRuntime

    k = Kiln(fast_settings(database_url=database_url), pool_size=8)
    try:
        s = make(k, overlap="allow")
        with EmbeddedRuntime(k, threads=2):
            runs = wait_for(lambda: runs_of(k, s["id"]), what="the controller to fire it")
            wait_for(lambda: k.run(runs[0].id)["status"] == "succeeded", what="the run to succeed")
        k.schedules.delete(s["id"])
        assert k.run(runs[0].id)["status"] == "succeeded"  # the runs stay
    finally:
        k.close()


def test_the_dashboard_lists_schedules_with_their_next_fire_times_and_actions(kiln, client):
    s = make(kiln, name="nightly", cron="30 2 * * *", timezone="Europe/Berlin")
    page = client.get("/ui/schedules")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "nightly" in html and "Europe/Berlin" in html
    first = s["next_fire_times"][0].strftime("%Y-%m-%d %H:%M:%S")
    assert first in html
    assert f'data-action="/schedules/{s["id"]}/pause"' in html
    kiln.schedules.pause(s["id"])
    fragment = client.get("/ui/schedules?fragment=1").get_data(as_text=True)
    assert f'data-action="/schedules/{s["id"]}/resume"' in fragment and first not in fragment
