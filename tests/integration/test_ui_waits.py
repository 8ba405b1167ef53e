"""The dashboard's issue-14 parts as HTML, on both databases with the embedded runtime: a run's
tasks waiting for a signal with the form that sends one, the run's signals, the rerun button and
the link back from a rerun, and the schedules page's fire times in the schedule's own zone."""

from __future__ import annotations

import html
import re

import pytest

from kiln.core.builder import Workflow
from kiln.core.states import WORKFLOW_TERMINAL
from kiln.web.ui import when
from tests.conftest import wait_for


@pytest.fixture
def client(kiln, monkeypatch):
    from kiln.web.app import create_app

    monkeypatch.delenv("KILN_API_TOKEN", raising=False)
    return create_app(kiln).test_client()


def approval() -> Workflow:
    wf = Workflow("approval")
    wf.add("noop", name="prepare")
    wf.add_signal("Approve", signal="approve", timeout_s=3600, depends_on=["prepare"])
    wf.add("echo", name="publish", params={"ok": "{{Approve.result.approved}}"},
           depends_on=["Approve"])  # fmt: skip
    return wf


def task(kiln, run_id: int, name: str) -> dict:
    return next(t for t in kiln.workflow(run_id)["tasks"] if t["name"] == name)


def finished(kiln, run_id: int) -> dict:
    return wait_for(
        lambda: (r := kiln.workflow(run_id))["status"] in WORKFLOW_TERMINAL and r,
        30,
        what=f"run {run_id} to finish",
    )


def test_a_waiting_task_gets_a_form_whose_signal_finishes_the_run_and_is_listed(
    kiln, embedded, client
):
    run_id = kiln.submit(approval())
    wait_for(lambda: task(kiln, run_id, "Approve")["status"] == "waiting", 20, what="waiting")
    approve = task(kiln, run_id, "Approve")
    page = client.get(f"/ui/runs/{run_id}").text
    assert "<h2>Waiting for signals</h2>" in page
    form = re.search(r'<form class="signal-form[^>]*>', page)
    assert form is not None, page
    assert f'data-signal-form="/workflows/{run_id}/signals/approve"' in form.group()
    assert 'data-task="Approve"' in form.group()
    assert approve["wake_at"] is not None  # the signal's timeout
    assert f"Deadline {when(approve['wake_at'])} UTC" in page
    assert f'id="signal-payload-{approve["id"]}"' in page
    assert 'id="signals-table"' not in page  # nothing sent yet

    # What the form sends, as the browser sends it: the JSON payload to the form's URL.
    sent = client.post(f"/workflows/{run_id}/signals/approve", json={"approved": True})
    assert sent.status_code == 201, sent.get_json()
    done = finished(kiln, run_id)
    assert done["status"] == "succeeded", done.get("error")
    assert task(kiln, run_id, "publish")["result"] == {"ok": True}

    fragment = client.get(f"/ui/runs/{run_id}?fragment=1").text
    assert "Waiting for signals" not in fragment and "signal-form" not in fragment
    row = re.search(r'<tr data-signal-id="\d+" data-taken="yes">.*?</tr>', fragment, re.S)
    assert row is not None, fragment
    cells = html.unescape(row.group())
    assert "approve" in cells and '{"approved": true}' in cells
    assert f'href="/ui/runs/{run_id}/tasks/{approve["id"]}">Approve</a>' in cells


def test_a_signal_sent_before_its_task_waits_is_shown_as_kept(kiln, client):
    run_id = kiln.submit(approval())  # no runtime: nothing runs, the signal is kept
    kiln.signal(run_id, "approve", {"approved": False, "password": "hunter2"}, key="early")
    page = client.get(f"/ui/runs/{run_id}").text
    assert "Waiting for signals" not in page
    row = re.search(r'<tr data-signal-id="\d+" data-taken="no">.*?</tr>', page, re.S)
    assert row is not None, page
    assert "kept: no task has taken it yet" in row.group() and "early" in row.group()
    assert "hunter2" not in page  # payloads are redacted like params and results


def needs_marker(marker: str) -> str:
    from pathlib import Path

    if not Path(marker).exists():
        raise RuntimeError(f"{marker} is missing")
    return "fixed"


def test_a_failed_run_offers_a_rerun_and_the_rerun_links_back(kiln, embedded, client, tmp_path):
    marker = tmp_path / "fixed"
    definition = {
        "name": "fragile",
        "tasks": [
            {"name": "first", "handler": "echo", "params": {"n": 1}},
            {"name": "second", "handler": f"{__name__}:needs_marker", "max_attempts": 1,
             "params": {"marker": str(marker)}, "depends_on": ["first"]},
        ],
    }  # fmt: skip
    run_id = kiln.submit(definition)
    assert finished(kiln, run_id)["status"] == "failed"
    page = client.get(f"/ui/runs/{run_id}").text
    button = re.search(r'<button[^>]*data-action="/workflows/\d+/rerun"[^>]*>', page, re.S)
    assert button is not None, page
    assert f'data-action="/workflows/{run_id}/rerun"' in button.group()
    assert 'data-body=\'{"from": "failed"}\'' in button.group()
    assert 'data-opens="/ui/runs/{id}"' in button.group()

    marker.write_text("ok")
    r = client.post(f"/workflows/{run_id}/rerun", json={"from": "failed"})
    assert r.status_code == 201, r.get_json()
    new_id = r.get_json()["id"]
    assert finished(kiln, new_id)["status"] == "succeeded"
    again = client.get(f"/ui/runs/{new_id}").text
    assert f'<dt>Rerun of</dt><dd><a href="/ui/runs/{run_id}">run {run_id}</a></dd>' in again
    assert "Rerun from failure" not in again  # it succeeded
    reused = re.findall(r'<tr data-task="(\w+)".*?</tr>', again, re.S)
    assert reused == ["first", "second"]
    assert again.count(f"result reused from run {run_id}") == 1  # first's, not second's


def test_the_schedules_page_shows_fire_times_in_utc_and_in_the_schedules_zone(kiln, client):
    s = kiln.schedules.create(
        {
            "name": "berlin-night",
            "cron": "30 2 * * *",
            "timezone": "Europe/Berlin",
            "workflow": {"name": "n", "tasks": [{"name": "x", "handler": "noop"}]},
        }
    )
    page = client.get("/ui/schedules").text
    row = re.search(rf'<tr id="schedule-{s["id"]}".*?</tr>', page, re.S)
    assert row is not None, page
    times = re.findall(r'<span class="fire-time">([^<]+)</span>', row.group())
    assert times == [t.strftime("%Y-%m-%d %H:%M:%S") for t in s["next_fire_times"]]
    local = re.findall(r"· (\d{4}-\d\d-\d\d 02:30 CES?T)", row.group())
    assert len(local) == len(times) == 5
    assert 'data-paused="no"' in row.group() and 'data-status="active"' in row.group()
