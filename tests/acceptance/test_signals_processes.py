"""Signals with real worker and controller processes on PostgreSQL + Redis: a signal sent
before its task is reached is delivered, one sent twice with one key counts once, and a
signal's timeout takes the branch its task chose."""

from __future__ import annotations

import pytest

import tests.handlers  # noqa: F401 - registers echo
from kiln.core.builder import Workflow
from tests.acceptance.test_crash_recovery import finished

pytestmark = pytest.mark.slow


def test_early_and_duplicate_signals_are_delivered_once_each(cluster, pg_kiln):
    cluster.controller()
    cluster.worker(threads=2)
    wf = Workflow("approvals")
    first = wf.add_sleep("First", seconds=1)
    one = wf.add_signal("One", signal="go", depends_on=[first])
    two = wf.add_signal(
        "Two", signal="go", timeout_s=2, on_timeout={"continue": "none"}, depends_on=[one]
    )
    wf.add("echo", name="Use", params={"value": [one.result, two.result]}, depends_on=[two])
    run_id = pg_kiln.submit(wf)
    # Sent while First sleeps: nobody waits for "go" yet, so it is kept.
    assert pg_kiln.signal(run_id, "go", {"n": 1}, key="once")["woke"] == 0
    assert pg_kiln.signal(run_id, "go", {"n": 2}, key="once")["duplicate"] is True
    run = finished(pg_kiln, run_id, timeout=60, cluster=cluster)
    assert run["status"] == "succeeded", cluster.logs()
    tasks = {t["name"]: t for t in run["tasks"]}
    assert tasks["Use"]["result"] == {"value": [{"n": 1}, "none"]}
    assert [s["taken_by"] for s in pg_kiln.signals(run_id)] == [tasks["One"]["id"]]


def test_a_signal_timeout_fails_or_continues_as_its_task_says(cluster, pg_kiln):
    cluster.controller()
    cluster.worker(threads=2)
    wf = Workflow("timeouts", on_error="continue")
    wf.add_signal("Strict", signal="never", timeout_s=1, on_timeout="fail")
    lax = wf.add_signal("Lax", signal="never", timeout_s=1, on_timeout={"continue": {"ok": False}})
    wf.add("echo", name="After", params={"value": lax.result["ok"]}, depends_on=[lax])
    run = finished(pg_kiln, pg_kiln.submit(wf), timeout=60, cluster=cluster)
    tasks = {t["name"]: t for t in run["tasks"]}
    assert tasks["Strict"]["status"] == "failed", cluster.logs()
    assert "no signal 'never' before" in tasks["Strict"]["error"]
    assert tasks["Lax"]["result"] == {"ok": False}
    assert tasks["After"]["result"] == {"value": False}
