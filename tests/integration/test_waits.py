"""Durable sleep and signals on the embedded runtime, against PostgreSQL and SQLite: a task
that waits holds no worker thread; a signal sent early is kept, one sent twice with one key
counts once, and a signal's timeout takes the branch its task chose."""

from __future__ import annotations

import time

import pytest

from kiln.core.builder import Workflow
from kiln.core.errors import IllegalTransition, WorkflowNotFound
from tests.conftest import wait_for
from tests.integration.test_workflows import run_to_end, tasks_by_name


def _wait_status(kiln, run_id, task, status, timeout=20):
    return wait_for(
        lambda: tasks_by_name(kiln.workflow(run_id))[task]["status"] == status,
        timeout=timeout,
        what=f"{task} to be {status}",
    )


def test_a_sleep_task_waits_its_time_without_a_worker_then_succeeds(kiln, embedded):
    wf = Workflow("nap")
    cool = wf.add_sleep("Cool", seconds=1.0)
    wf.add("echo", name="After", params={"value": cool.result["slept_until"]}, depends_on=[cool])
    started = time.monotonic()
    run = run_to_end(kiln, wf)
    assert run["status"] == "succeeded", run
    assert time.monotonic() - started >= 1.0
    t = tasks_by_name(run)
    assert [a["outcome"] for a in t["Cool"]["attempt_history"]] == ["waiting", "succeeded"]
    assert t["After"]["result"] == {"value": t["Cool"]["result"]["slept_until"]}
    started_at = t["Cool"]["attempt_history"][0]["started_at"]
    resumed_at = t["Cool"]["attempt_history"][1]["started_at"]
    assert (resumed_at - started_at).total_seconds() >= 1.0


def test_a_handler_sleeps_until_a_time_and_finds_its_saved_state(kiln, embedded):
    wf = Workflow("nap-handler")
    wf.add("tests.child_handlers:nap_then_count", name="Nap", params={"seconds": 0.5})
    run = run_to_end(kiln, wf)
    task = tasks_by_name(run)["Nap"]
    assert run["status"] == "succeeded" and task["result"]["runs"] == 2
    assert task["resumes"] == 1 and task["attempts"] == 2  # one try, run twice


def _approval(timeout_s=None, on_timeout=None) -> Workflow:
    wf = Workflow("approval")
    first = wf.add_sleep("First", seconds=0.5)
    approve = wf.add_signal(
        "Approve", signal="approve", timeout_s=timeout_s, on_timeout=on_timeout,
        depends_on=[first],
    )  # fmt: skip
    wf.add("echo", name="Use", params={"value": approve.result["approved"]}, depends_on=[approve])
    return wf


def test_a_signal_sent_before_its_task_is_reached_is_kept_and_delivered(kiln, embedded):
    run_id = kiln.submit(_approval())
    sent = kiln.signal(run_id, "approve", {"approved": True, "by": "ada"})
    assert sent["duplicate"] is False and sent["woke"] == 0  # nobody waits yet: kept
    run = wait_for(lambda: (r := kiln.workflow(run_id))["status"] == "succeeded" and r, timeout=20)
    tasks = tasks_by_name(run)
    assert tasks["Approve"]["result"] == {"approved": True, "by": "ada"}
    assert tasks["Use"]["result"] == {"value": True}
    (signal,) = kiln.signals(run_id)
    assert signal["taken_by"] == tasks["Approve"]["id"]


def test_a_signal_wakes_the_task_waiting_for_it(kiln, embedded):
    run_id = kiln.submit(_approval())
    _wait_status(kiln, run_id, "Approve", "waiting")
    task = tasks_by_name(kiln.workflow(run_id))["Approve"]
    assert task["waiting_reason"] == "waiting for signal 'approve'"
    assert kiln.signal(run_id, "approve", {"approved": False})["woke"] == 1
    run = wait_for(lambda: (r := kiln.workflow(run_id))["status"] == "succeeded" and r, timeout=20)
    assert tasks_by_name(run)["Use"]["result"] == {"value": False}


def test_a_signal_sent_twice_with_one_key_is_delivered_once(kiln, embedded):
    wf = Workflow("twice")
    one = wf.add_signal("One", signal="go")
    wf.add_signal(
        "Two", signal="go", timeout_s=1.0, on_timeout={"continue": "no second signal"},
        depends_on=[one],
    )  # fmt: skip
    run_id = kiln.submit(wf)
    first = kiln.signal(run_id, "go", {"n": 1}, key="k1")
    again = kiln.signal(run_id, "go", {"n": 2}, key="k1")
    assert again["duplicate"] is True and again["id"] == first["id"]
    run = wait_for(lambda: (r := kiln.workflow(run_id))["status"] == "succeeded" and r, timeout=20)
    tasks = tasks_by_name(run)
    assert tasks["One"]["result"] == {"n": 1}
    assert tasks["Two"]["result"] == "no second signal"
    assert len(kiln.signals(run_id)) == 1


def test_a_signal_timeout_fails_the_task_when_it_says_fail(kiln, embedded):
    run = run_to_end(kiln, _approval(timeout_s=0.5, on_timeout="fail"))
    assert run["status"] == "failed"
    task = tasks_by_name(run)["Approve"]
    assert task["status"] == "failed" and "no signal 'approve' before" in task["error"]
    assert tasks_by_name(run)["Use"]["status"] in ("upstream_failed", "cancelled")


def test_a_signal_timeout_continues_with_the_default_when_it_says_continue(kiln, embedded):
    run = run_to_end(kiln, _approval(timeout_s=0.5, on_timeout={"continue": {"approved": False}}))
    assert run["status"] == "succeeded", run
    assert tasks_by_name(run)["Use"]["result"] == {"value": False}


def test_signals_to_a_missing_or_finished_run_are_refused(kiln, embedded):
    with pytest.raises(WorkflowNotFound):
        kiln.signal(999_999, "approve", {})
    wf = Workflow("done")
    wf.add("noop", name="N")
    run = run_to_end(kiln, wf)
    with pytest.raises(IllegalTransition, match="takes no signals"):
        kiln.signal(run["id"], "approve", {})


def test_cancelling_a_run_cancels_its_sleeping_task(kiln, embedded):
    wf = Workflow("long-nap")
    wf.add_sleep("Cool", seconds=3600)
    run_id = kiln.submit(wf)
    _wait_status(kiln, run_id, "Cool", "waiting")
    kiln.cancel(run_id)
    task = tasks_by_name(kiln.workflow(run_id))["Cool"]
    assert task["status"] == "cancelled"
