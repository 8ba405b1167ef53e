"""The Procfile's real processes as subprocesses, on real PostgreSQL and Redis, with crashes."""

from __future__ import annotations

import json
import os
import signal

import pytest
import redis
import sqlalchemy as sa

from kiln.core.builder import Workflow
from kiln.core.states import WORKFLOW_TERMINAL
from tests.conftest import wait_for

pytestmark = pytest.mark.slow


def finished(kiln, wf_id, timeout=60.0, cluster=None):
    try:
        return wait_for(
            lambda: (r := kiln.workflow(wf_id))["status"] in WORKFLOW_TERMINAL and r,
            timeout=timeout,
            what=f"workflow {wf_id} to finish",
        )
    except AssertionError:
        if cluster is not None:
            print(cluster.logs())
        print(
            [
                (t["name"], t["status"], t["attempts"], t["dispatch_count"])
                for t in kiln.workflow(wf_id)["tasks"]
            ]
        )
        raise


def successful_attempts_per_task(kiln) -> dict[int, int]:
    rows = kiln.read(
        lambda c: c.execute(
            sa.text(
                "SELECT t.id, count(a.id) FILTER (WHERE a.outcome = 'succeeded') "
                "FROM tasks t LEFT JOIN task_attempts a ON a.task_id = t.id GROUP BY t.id"
            )
        ).all()
    )
    return {r[0]: r[1] for r in rows}


def test_a_task_whose_worker_is_sigkilled_mid_run_runs_again_elsewhere(cluster, pg_kiln):
    cluster.controller()
    cluster.worker(threads=2)
    cluster.worker(threads=2)
    wf = Workflow("survive-a-crash")
    first = wf.add("sleep", name="Long", params={"seconds": 2.0, "value": "done"}, max_attempts=3)
    wf.add("echo", name="After", params={"got": first.result}, depends_on=[first])
    wf_id = pg_kiln.submit(wf, check_handlers=False)

    running = wait_for(
        lambda: (t := pg_kiln.workflow(wf_id)["tasks"][0])["status"] == "running" and t,
        what="the long task to start",
    )
    victim_pid = int(running["lease_owner"].split(":")[2])
    os.kill(victim_pid, signal.SIGKILL)

    run = finished(pg_kiln, wf_id, cluster=cluster)
    long_task = run["tasks"][0]
    assert run["status"] == "succeeded", cluster.logs()
    assert [a["outcome"] for a in long_task["attempt_history"]] == ["lost", "succeeded"]
    assert str(victim_pid) not in long_task["attempt_history"][1]["worker"]
    assert run["tasks"][1]["result"] == {"got": "done"}
    assert set(successful_attempts_per_task(pg_kiln).values()) == {1}


def test_tasks_dispatched_but_lost_with_a_flushed_redis_are_sent_again(cluster, pg_kiln):
    # Its own Redis database, so flushing it cannot disturb anything else on this server.
    cluster.env["KILN_BROKER_URL"] = "redis://127.0.0.1:6379/9"
    r = redis.Redis.from_url(cluster.env["KILN_BROKER_URL"])
    r.flushdb()
    cluster.controller()  # no worker yet: dispatched messages wait in Redis
    wf = Workflow("lost-messages")
    for i in range(20):
        wf.add("echo", name=f"T{i}", params={"i": i})
    wf_id = pg_kiln.submit(wf, check_handlers=False)
    wait_for(
        lambda: {t["status"] for t in pg_kiln.workflow(wf_id)["tasks"]} == {"queued"},
        what="every task dispatched",
    )
    # The controller commits the leases, then sends several messages one after another:
    # wait until the queue holds a message for every task, or a late one survives the flush.
    task_ids = {t["id"] for t in pg_kiln.workflow(wf_id)["tasks"]}

    def sent_task_ids() -> set[int]:
        queue = cluster.env["KILN_QUEUE"]
        return {
            item[0]
            for raw in r.hvals(f"dramatiq:{queue}.msgs")
            for item in json.loads(raw)["args"][0]
        }

    wait_for(lambda: sent_task_ids() >= task_ids, what="a message for every task in Redis")
    r.flushdb()  # every dispatched message is gone
    cluster.worker(threads=4)

    run = finished(pg_kiln, wf_id, cluster=cluster)
    assert run["status"] == "succeeded", cluster.logs()
    assert all(t["dispatch_count"] >= 2 for t in run["tasks"])
    assert all(t["attempts"] == 1 for t in run["tasks"])
    r.flushdb()
    r.close()


def test_two_controllers_and_two_workers_run_a_thousand_tasks_exactly_once(cluster, pg_kiln):
    for _ in range(2):
        cluster.controller()
        cluster.worker(threads=4)
    ids = []
    for w in range(10):
        wf = Workflow(f"bulk-{w}")
        roots = [wf.add("noop", name=f"root-{i}") for i in range(10)]
        for i in range(90):
            wf.add("noop", name=f"leaf-{i}", depends_on=[roots[i % 10]])
        ids.append(pg_kiln.submit(wf, check_handlers=False))
    runs = [finished(pg_kiln, wf_id, timeout=120, cluster=cluster) for wf_id in ids]
    assert {r["status"] for r in runs} == {"succeeded"}
    per_task = successful_attempts_per_task(pg_kiln)
    assert len(per_task) == 1000
    assert set(per_task.values()) == {1}
    total_attempts = pg_kiln.read(
        lambda c: c.execute(sa.text("SELECT count(*) FROM task_attempts")).scalar()
    )
    assert total_attempts == 1000  # nothing was even claimed twice


def test_a_task_that_kills_its_worker_every_time_ends_failed_after_max_attempts(cluster, pg_kiln):
    cluster.controller()
    wf = Workflow("poison")
    wf.add("kill_worker_always", name="Poison", max_attempts=2)
    wf_id = pg_kiln.submit(wf, check_handlers=False)
    deaths = 0
    deadline = 60
    while pg_kiln.workflow(wf_id)["status"] not in WORKFLOW_TERMINAL:
        worker = cluster.worker(threads=1)
        wait_for(
            lambda w=worker: (
                w.poll() is not None or pg_kiln.workflow(wf_id)["status"] in WORKFLOW_TERMINAL
            ),
            timeout=deadline,
            what="the worker to die or the run to end",
        )
        deaths += worker.poll() is not None
        assert deaths <= 2, "the poison task was claimed more than max_attempts times"
        if worker.poll() is not None:
            wait_for(
                lambda: pg_kiln.workflow(wf_id)["tasks"][0]["status"] != "running",
                timeout=deadline,
                what="the lost attempt to be recovered",
            )
    run = pg_kiln.workflow(wf_id)
    task = run["tasks"][0]
    assert run["status"] == "failed"
    assert task["status"] == "failed" and task["attempts"] == 2
    assert [a["outcome"] for a in task["attempt_history"]] == ["lost", "lost"]
    assert "lost during attempt 2 of 2" in task["error"]


def test_a_task_still_running_when_its_worker_is_told_to_stop_keeps_its_lease_and_finishes_once(
    cluster, pg_kiln
):
    # The suite's lease is 3 s; the task runs 6 s after SIGTERM. A worker that stopped
    # extending its leases on SIGTERM would lose this one to recovery midway, its result
    # would be refused as stale, and with no other worker the run would not end.
    cluster.controller()
    worker = cluster.worker(threads=2)
    wf = Workflow("drain-on-sigterm")
    wf.add("sleep", name="Long", params={"seconds": 6.0, "value": "done"}, max_attempts=3)
    wf_id = pg_kiln.submit(wf, check_handlers=False)
    wait_for(
        lambda: pg_kiln.workflow(wf_id)["tasks"][0]["status"] == "running",
        what="the long task to start",
    )
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0, cluster.logs()

    run = pg_kiln.workflow(wf_id)
    long_task = run["tasks"][0]
    assert run["status"] == "succeeded", cluster.logs()
    assert [a["outcome"] for a in long_task["attempt_history"]] == ["succeeded"]
    assert long_task["result"] == "done"
