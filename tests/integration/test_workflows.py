"""DAG execution on the embedded runtime, against both PostgreSQL and SQLite."""

from __future__ import annotations

import sqlalchemy as sa

from engine.definitions import Workflow
from engine.runtime import Kiln
from engine.states import WORKFLOW_TERMINAL
from tests.conftest import wait_for


def run_to_end(kiln: Kiln, definition, timeout: float = 30.0) -> dict:
    wf_id = kiln.submit(definition)
    return wait_for(
        lambda: (r := kiln.workflow(wf_id))["status"] in WORKFLOW_TERMINAL and r,
        timeout=timeout,
        what=f"workflow {wf_id} to finish",
    )


def tasks_by_name(run: dict) -> dict:
    return {t["name"]: t for t in run["tasks"]}


def test_a_dag_runs_every_task_after_its_dependencies(kiln, embedded):
    wf = Workflow("diamond")
    a = wf.add("echo", name="A", params={"v": 1})
    b = wf.add("echo", name="B", params={"v": 2}, depends_on=[a])
    c = wf.add("echo", name="C", params={"v": 3}, depends_on=[a])
    wf.add("echo", name="D", params={"v": 4}, depends_on=[b, c])
    run = run_to_end(kiln, wf)
    assert run["status"] == "succeeded"
    t = tasks_by_name(run)
    for child, parent in (("B", "A"), ("C", "A"), ("D", "B"), ("D", "C")):
        assert t[child]["started_at"] >= t[parent]["finished_at"], (child, parent)
    assert all(x["attempts"] == 1 for x in run["tasks"])
