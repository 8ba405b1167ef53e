"""Durable sleep with real processes on PostgreSQL + Redis: a run sleeping 5 s outlives
SIGKILL of every worker and controller, and goes on at its time once they are back."""

from __future__ import annotations

import datetime as dt
import os
import signal

import pytest

import tests.handlers  # noqa: F401 - registers echo
from kiln.core.builder import Workflow
from tests.acceptance.test_crash_recovery import finished
from tests.conftest import wait_for

pytestmark = pytest.mark.slow


def test_a_sleeping_run_survives_sigkill_of_every_process_and_wakes_on_time(cluster, pg_kiln):
    controller, worker = cluster.controller(), cluster.worker(threads=2)
    wf = Workflow("nap")
    cool = wf.add_sleep("Cool", seconds=5)
    wf.add("echo", name="After", params={"value": cool.result["slept_until"]}, depends_on=[cool])
    run_id = pg_kiln.submit(wf)
    wait_for(
        lambda: pg_kiln.workflow(run_id)["tasks"][0]["status"] == "waiting",
        timeout=30,
        what="Cool to sleep",
    )
    for proc in (controller, worker):
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    cool_row = pg_kiln.workflow(run_id)["tasks"][0]
    assert cool_row["status"] == "waiting" and cool_row["waiting_reason"].startswith(
        "sleeping until"
    )
    woke_at = dt.datetime.fromisoformat(cool_row["state"]["until"])

    old = {
        p.id
        for kind in ("controller", "worker")
        for p in pg_kiln.monitor.live_processes(kind, stale_after_s=60)
    }
    cluster.controller()
    cluster.worker(threads=2)

    def up() -> bool:
        return all(
            {p.id for p in pg_kiln.monitor.live_processes(kind, stale_after_s=60)} - old
            for kind in ("controller", "worker")
        )

    wait_for(up, timeout=60, what="the restarted controller and worker")
    # Normally up well before the 5 s are over; on a slow machine perhaps after: the bound
    # then counts from when they were up (a sleeping task cannot wake before anything runs).
    up_at = dt.datetime.now(dt.UTC)
    run = finished(pg_kiln, run_id, timeout=60, cluster=cluster)
    assert run["status"] == "succeeded", cluster.logs()
    tasks = {t["name"]: t for t in run["tasks"]}
    resumed = tasks["Cool"]["attempt_history"][-1]
    assert [a["outcome"] for a in tasks["Cool"]["attempt_history"]] == ["waiting", "succeeded"]
    # The wake-up is late by at most a controller pass and a dispatch.
    assert resumed["started_at"] >= woke_at
    assert (resumed["started_at"] - max(woke_at, up_at)).total_seconds() <= 1.0, cluster.logs()
    assert tasks["After"]["result"] == {"value": woke_at.isoformat()}
