"""Child runs with real worker and controller processes on PostgreSQL + Redis: a task
waiting for its children holds no worker thread, and cancelling the parent reaches them all."""

from __future__ import annotations

import pytest

from kiln.core.builder import Workflow
from tests.conftest import wait_for

pytestmark = pytest.mark.slow

H = "tests.child_handlers"


def _parents(count: int, children: int, sleep: float) -> Workflow:
    wf = Workflow("parents", on_error="continue")
    for p in range(count):
        wf.add(
            f"{H}:fan_out",
            name=f"Parent{p}",
            params={"count": children, "sleep": sleep},
            max_attempts=1,
        )
    return wf


def test_two_parents_waiting_on_fifty_children_each_finish_on_a_worker_of_two_threads(
    cluster, pg_kiln
):
    # Were a waiting parent to hold its thread, the two parents would hold both threads of
    # the only worker and their 100 children could never run.
    cluster.controller()
    cluster.worker(threads=2)
    run_id = pg_kiln.submit(_parents(2, 50, 0.01))
    run = wait_for(
        lambda: (r := pg_kiln.workflow(run_id))["status"] in ("succeeded", "failed") and r,
        timeout=180,
        what="the parents to finish",
    )
    assert run["status"] == "succeeded", cluster.logs()
    assert len(run["children"]) == 100
    assert {c["status"] for c in run["children"]} == {"succeeded"}
    for t in run["tasks"]:
        assert t["result"]["total"] == sum(i * i for i in range(50))
        assert "waiting" in [a["outcome"] for a in t["attempt_history"]]


def test_cancelling_a_parent_cancels_all_fifty_of_its_children(cluster, pg_kiln):
    cluster.controller()
    cluster.worker(threads=2)
    run_id = pg_kiln.submit(_parents(1, 50, 5.0))
    wait_for(
        lambda: (
            len(pg_kiln.workflow(run_id)["children"]) == 50
            and pg_kiln.workflow(run_id)["tasks"][0]["status"] == "waiting"
        ),
        timeout=60,
        what="the parent waiting for its 50 children",
    )
    pg_kiln.cancel(run_id)
    run = pg_kiln.workflow(run_id)
    assert run["status"] == "cancelled" and run["tasks"][0]["status"] == "cancelled"
    assert [c["status"] for c in run["children"]] == ["cancelled"] * 50
    for c in run["children"]:
        assert [t["status"] for t in pg_kiln.workflow(c["id"])["tasks"]] == ["cancelled"]
