"""Child runs: a handler starts runs of its own and waits for them in the ``waiting`` state,
holding no worker thread; cancel and pause reach the children. On the embedded runtime,
against both PostgreSQL and SQLite."""

from __future__ import annotations

import pytest

from kiln.core.builder import Workflow
from kiln.core.errors import HandlerNotAllowed
from tests.conftest import wait_for
from tests.integration.test_workflows import run_to_end, tasks_by_name

H = "tests.child_handlers"


def parent(handler: str, **params) -> Workflow:
    wf = Workflow("parent")
    wf.add(f"{H}:{handler}", name="Parent", params=params)
    return wf


def test_a_parent_waits_for_its_child_and_gets_its_result(kiln, embedded):
    run = run_to_end(kiln, parent("one_child", n=3))
    assert run["status"] == "succeeded", run
    task = tasks_by_name(run)["Parent"]
    assert task["result"]["result"] == {"n": 3, "square": 9}
    # It ran, waited (no worker held it), and ran again once the child ended: one try.
    assert [a["outcome"] for a in task["attempt_history"]] == ["waiting", "succeeded"]
    assert task["resumes"] == 1
    (child,) = run["children"]
    assert child["id"] == task["result"]["child"] and child["child_key"] == "only"
    assert child["parent_task_id"] == task["id"] and child["status"] == "succeeded"
    linked = kiln.workflow(child["id"])
    assert linked["parent_workflow_id"] == run["id"] and linked["parent_task_id"] == task["id"]


def test_a_parent_waiting_for_twenty_children_wakes_once_when_the_last_ends(kiln, embedded):
    run = run_to_end(kiln, parent("fan_out", count=20, sleep=0.5), timeout=60)
    assert run["status"] == "succeeded", run
    task = tasks_by_name(run)["Parent"]
    assert task["result"]["total"] == sum(i * i for i in range(20))
    assert len(run["children"]) == 20, "a resumed handler starting the same keys made new runs"
    assert all(c["status"] == "succeeded" for c in run["children"])
    outcomes = [a["outcome"] for a in task["attempt_history"]]
    assert outcomes[-1] == "succeeded" and set(outcomes[:-1]) == {"waiting"}
    assert len(outcomes) <= 3  # waits at most until the first wake finds all ended


def test_a_failed_child_raises_in_the_parent_which_may_handle_it(kiln, embedded):
    run = run_to_end(kiln, parent("child_fails_caught"))
    assert run["status"] == "succeeded", run
    assert tasks_by_name(run)["Parent"]["result"] == "child failed: Leaf"
    (child,) = run["children"]
    assert child["status"] == "failed"


def test_a_failed_child_fails_a_parent_that_does_not_handle_it(kiln, embedded):
    wf = Workflow("parent")
    wf.add(f"{H}:fan_out", name="Parent", params={"count": 3, "fail_at": 1}, max_attempts=1)
    run = run_to_end(kiln, wf)
    assert run["status"] == "failed"
    task = tasks_by_name(run)["Parent"]
    assert task["status"] == "failed" and "leaf 1 failed on purpose" in task["error"]


def test_except_exception_in_a_handler_does_not_swallow_the_wait(kiln, embedded):
    run = run_to_end(kiln, parent("swallow_everything"))
    assert tasks_by_name(run)["Parent"]["result"] == "waited"


def test_a_task_of_kind_workflow_runs_the_named_definition_as_its_child(kiln, embedded):
    wf = Workflow("uses-a-child")
    sub = wf.add_workflow(f"{H}:one_leaf", name="Sub")
    wf.add("echo", name="After", params={"value": sub.result["Leaf"]}, depends_on=[sub])
    run = run_to_end(kiln, wf)
    assert run["status"] == "succeeded", run
    tasks = tasks_by_name(run)
    assert tasks["Sub"]["result"] == {"Leaf": {"n": 7, "square": 49}}
    assert tasks["After"]["result"] == {"value": {"n": 7, "square": 49}}
    (child,) = run["children"]
    assert child["name"] == "one-leaf" and child["parent_task_id"] == tasks["Sub"]["id"]
    assert kiln.workflow(run["id"])["definition"]["tasks"][0]["workflow"] == f"{H}:one_leaf"


def test_a_workflow_task_naming_a_module_not_allowed_is_refused_at_submit(kiln):
    wf = Workflow("bad")
    wf.add_workflow("os:environ", name="Sub")
    with pytest.raises(HandlerNotAllowed, match="'os:environ' is not allowed"):
        kiln.submit(wf)
    assert kiln.workflows() == []


def _state(kiln, run_id: int) -> str:
    run = kiln.workflow(run_id)
    out = [(run["status"], [(t["name"], t["status"], t["waiting_reason"]) for t in run["tasks"]])]
    for c in run["children"]:
        child = kiln.workflow(c["id"])
        out.append((c["id"], child["status"], [(t["status"], t["error"]) for t in child["tasks"]]))
    return repr(out)


def _children_of(kiln, run_id: int) -> list[dict]:
    return kiln.workflow(run_id)["children"]


def test_cancelling_the_parent_cancels_its_children(kiln, embedded):
    run_id = kiln.submit(parent("fan_out", count=6, sleep=30))
    wait_for(
        lambda: (
            len(_children_of(kiln, run_id)) == 6
            and tasks_by_name(kiln.workflow(run_id))["Parent"]["status"] == "waiting"
        ),
        timeout=30,
        what="the parent waiting for 6 children",
    )
    kiln.cancel(run_id)
    run = kiln.workflow(run_id)
    assert run["status"] == "cancelled"
    assert tasks_by_name(run)["Parent"]["status"] == "cancelled"
    assert {c["status"] for c in run["children"]} == {"cancelled"}
    for c in run["children"]:
        tasks = kiln.workflow(c["id"])["tasks"]
        assert {t["status"] for t in tasks} == {"cancelled"}, tasks


def test_pausing_the_parent_pauses_its_children_and_resume_resumes_them(kiln, embedded):
    run_id = kiln.submit(parent("fan_out", count=3, sleep=0.2))
    wait_for(lambda: len(_children_of(kiln, run_id)) == 3, timeout=30, what="three children")
    kiln.pause(run_id)
    assert kiln.run(run_id)["status"] == "paused"
    assert all(c["status"] in ("paused", "succeeded") for c in _children_of(kiln, run_id)), (
        "a child went on running new tasks while its parent was paused"
    )
    kiln.resume(run_id)
    try:
        run = wait_for(
            lambda: (r := kiln.workflow(run_id))["status"] == "succeeded" and r, timeout=30
        )
    except AssertionError:
        raise AssertionError(f"the resumed parent did not finish: {_state(kiln, run_id)}") from None
    assert {c["status"] for c in run["children"]} == {"succeeded"}, _state(kiln, run_id)
