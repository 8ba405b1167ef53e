"""DAG execution on the embedded runtime, against both PostgreSQL and SQLite."""

from __future__ import annotations

import sqlalchemy as sa

from kiln.app.runtime import Kiln
from kiln.core.builder import Workflow
from kiln.core.states import WORKFLOW_TERMINAL
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


def test_results_flow_into_nested_params_keeping_their_json_types(kiln, embedded):
    wf = Workflow("refs")
    a = wf.add("echo", name="Make", params={"rows": [{"id": 1}, {"id": 2}], "n": 2, "ok": True})
    wf.add(
        "echo",
        name="Use",
        params={
            "deep": {"list": [a.result["rows"], {"first": a.result["rows"][0]["id"]}]},
            "n": a.result["n"],
            "ok": a.result["ok"],
            "text": f"got {a.result['n']} rows",
        },
        depends_on=[a],
    )
    run = run_to_end(kiln, wf)
    assert run["status"] == "succeeded"
    assert tasks_by_name(run)["Use"]["result"] == {
        "deep": {"list": [[{"id": 1}, {"id": 2}], {"first": 1}]},
        "n": 2,
        "ok": True,
        "text": "got 2 rows",
    }


def test_a_failing_task_is_retried_with_backoff_until_it_succeeds(kiln, embedded):
    wf = Workflow("retry")
    wf.add("fail_until", name="Flaky", params={"succeed_on": 3}, max_attempts=3)
    run = run_to_end(kiln, wf)
    task = tasks_by_name(run)["Flaky"]
    assert run["status"] == "succeeded"
    assert task["result"] == {"attempt": 3}
    history = task["attempt_history"]
    assert [a["outcome"] for a in history] == ["failed", "failed", "succeeded"]
    assert "failing attempt 1" in history[0]["error"]
    gaps = [
        (history[i + 1]["started_at"] - history[i]["finished_at"]).total_seconds() for i in range(2)
    ]
    # fast_settings: base 0.05s, so waits of at least 0.025s then 0.05s (equal jitter)
    assert gaps[0] >= 0.025 and gaps[1] >= 0.05


def test_a_task_that_always_fails_ends_failed_after_max_attempts(kiln, embedded):
    wf = Workflow("doomed")
    wf.add("fail_always", name="Doomed", params={"message": "no luck"}, max_attempts=2)
    run = run_to_end(kiln, wf)
    task = tasks_by_name(run)["Doomed"]
    assert run["status"] == "failed"
    assert task["status"] == "failed" and task["attempts"] == 2
    assert "RuntimeError: no luck" in task["error"]
    assert "Doomed" in run["error"]


def test_a_task_running_past_its_timeout_is_interrupted_and_retried(kiln, embedded):
    wf = Workflow("slow")
    wf.add(
        "sleep_ignoring_cancel", name="Slow", params={"seconds": 5}, timeout_s=0.3, max_attempts=2
    )
    run = run_to_end(kiln, wf)
    task = tasks_by_name(run)["Slow"]
    assert task["status"] == "failed" and task["attempts"] == 2
    assert [a["outcome"] for a in task["attempt_history"]] == ["timed_out", "timed_out"]
    assert "timed out after 0.3s" in task["error"]
    for attempt in task["attempt_history"]:  # ended before the handler's own 5 s were up
        assert (attempt["finished_at"] - attempt["started_at"]).total_seconds() < 5


def on_error_workflow(on_error: str) -> Workflow:
    wf = Workflow(f"on-error-{on_error}", on_error=on_error)
    bad = wf.add("fail_always", name="Bad", max_attempts=1)
    wf.add("echo", name="After bad", depends_on=[bad])
    slow = wf.add("sleep", name="Independent", params={"seconds": 0.5, "value": 1})
    wf.add("echo", name="After independent", params={"v": slow.result}, depends_on=[slow])
    return wf


def test_on_error_stop_fails_the_run_and_runs_nothing_more(kiln, embedded):
    run = run_to_end(kiln, on_error_workflow("stop"))
    t = tasks_by_name(run)
    assert run["status"] == "failed"
    assert t["Bad"]["status"] == "failed"
    assert t["After bad"]["status"] == "upstream_failed"
    assert t["After independent"]["status"] in ("cancelled", "upstream_failed")
    assert t["After independent"]["attempts"] == 0


def test_on_error_continue_lets_independent_branches_finish(kiln, embedded):
    run = run_to_end(kiln, on_error_workflow("continue"))
    t = tasks_by_name(run)
    assert run["status"] == "failed"
    assert t["After bad"]["status"] == "upstream_failed"
    assert t["Independent"]["status"] == "succeeded"
    assert t["After independent"]["status"] == "succeeded"
    assert t["After independent"]["result"] == {"v": 1}


def test_handlers_can_be_named_by_import_path(kiln, embedded):
    wf = Workflow("by-path")
    wf.add("tests.handlers:not_registered", name="Double", params={"x": 21})
    run = run_to_end(kiln, wf)
    assert tasks_by_name(run)["Double"]["result"] == 42


def test_progress_reported_by_a_handler_is_stored_on_the_task(kiln, embedded):
    wf = Workflow("progress")
    wf.add("progress", name="Long", params={"steps": 4, "delay": 0.3})
    wf_id = kiln.submit(wf)
    seen = wait_for(
        lambda: (
            (t := kiln.workflow(wf_id)["tasks"][0])["status"] == "running"
            and t["progress"]
            and 0 < t["progress"] < 1
            and t
        ),
        what="progress while running",
    )
    assert seen["progress_message"].startswith("step")
    run = wait_for(lambda: (r := kiln.workflow(wf_id))["status"] in WORKFLOW_TERMINAL and r)
    assert run["tasks"][0]["progress"] == 1.0


def count_rows(kiln: Kiln) -> dict[str, int]:
    tables = ("workflows", "tasks", "task_dependencies")
    return kiln.read(
        lambda c: {t: c.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar() for t in tables}
    )


def test_a_bad_definition_is_rejected_and_nothing_is_written(kiln):
    import pytest

    from kiln.core.errors import InvalidDefinition

    before = count_rows(kiln)
    bad = {
        "name": "bad",
        "tasks": [
            {"name": "A", "handler": "echo"},
            {"name": "B", "handler": "echo", "params": {"x": "{{C.result}}"}, "depends_on": ["A"]},
            {"name": "C", "handler": "echo"},
        ],
    }
    with pytest.raises(InvalidDefinition, match="not upstream"):
        kiln.submit(bad)
    with pytest.raises(InvalidDefinition, match="not registered"):
        kiln.submit({"name": "x", "tasks": [{"name": "A", "handler": "no_such_handler"}]})
    assert count_rows(kiln) == before


def test_a_retried_submission_with_the_same_idempotency_key_returns_the_same_run(kiln):
    wf = Workflow("once")
    wf.add("echo", name="A")
    first = kiln.submit_with_status(wf, idempotency_key="k-1")
    again = kiln.submit_with_status(wf, idempotency_key="k-1")
    assert first[1] is True and again == (first[0], False)
    assert count_rows(kiln)["workflows"] == 1


def test_cancel_stops_a_run_and_its_unfinished_tasks(kiln, embedded):
    wf = Workflow("cancel-me")
    a = wf.add("sleep", name="Slow", params={"seconds": 1})
    wf.add("echo", name="Later", depends_on=[a])
    wf_id = kiln.submit(wf)
    wait_for(lambda: kiln.workflow(wf_id)["tasks"][0]["status"] == "running")
    kiln.cancel(wf_id)
    run = kiln.workflow(wf_id)
    assert run["status"] == "cancelled"
    assert {t["status"] for t in run["tasks"]} == {"cancelled"}
    # the handler still running finishes, but its result is refused as stale
    wait_for(
        lambda: kiln.workflow(wf_id)["tasks"][0]["attempt_history"][0]["outcome"] == "stale",
        timeout=10,
    )
    assert kiln.workflow(wf_id)["tasks"][0]["result"] is None


def test_pause_holds_dispatch_and_resume_continues(kiln, embedded):
    wf = Workflow("pausable")
    a = wf.add("sleep", name="First", params={"seconds": 0.5})
    wf.add("echo", name="Second", depends_on=[a])
    wf_id = kiln.submit(wf)
    wait_for(lambda: kiln.workflow(wf_id)["tasks"][0]["status"] == "running")
    kiln.pause(wf_id)
    wait_for(lambda: kiln.workflow(wf_id)["tasks"][0]["status"] == "succeeded")
    import time

    time.sleep(0.5)  # give a (wrong) dispatch every chance to happen
    run = kiln.workflow(wf_id)
    assert run["status"] == "paused" and run["tasks"][1]["status"] == "ready"
    kiln.resume(wf_id)
    run = wait_for(lambda: (r := kiln.workflow(wf_id))["status"] in WORKFLOW_TERMINAL and r)
    assert run["status"] == "succeeded"


def test_every_state_change_is_recorded_in_the_events_table(kiln, embedded):
    wf = Workflow("audited")
    wf.add("fail_until", name="T", params={"succeed_on": 2})
    run = run_to_end(kiln, wf)
    task_id = run["tasks"][0]["id"]
    rows = kiln.read(
        lambda c: c.execute(
            sa.text(
                "SELECT from_status, to_status FROM events WHERE entity = 'task' AND entity_id = :id ORDER BY id"
            ),
            {"id": str(task_id)},
        ).all()
    )
    assert [tuple(r) for r in rows] == [
        ("ready", "queued"),
        ("queued", "running"),
        ("running", "retrying"),
        ("retrying", "queued"),
        ("queued", "running"),
        ("running", "succeeded"),
    ]


def test_a_dependent_readied_by_the_statement_that_finishes_its_dependency_is_audited_too(
    kiln, embedded
):
    # On PostgreSQL one statement finishes A and readies B (two updates of tasks); the
    # statement-level trigger must record both tasks' changes, and the run's.
    wf = Workflow("audited-chain")
    a = wf.add("echo", name="A", params={"value": 1})
    wf.add("echo", name="B", params={"value": 2}, depends_on=[a])
    run = run_to_end(kiln, wf)
    assert run["status"] == "succeeded"
    q = sa.text(
        "SELECT from_status, to_status FROM events WHERE entity = :e AND entity_id = :id "
        "ORDER BY id"
    )

    def events(entity: str, entity_id: int) -> list[tuple]:
        return [
            tuple(r) for r in kiln.read(lambda c: c.execute(q, {"e": entity, "id": str(entity_id)}))
        ]

    by_name = tasks_by_name(run)
    assert events("task", by_name["A"]["id"]) == [
        ("ready", "queued"),
        ("queued", "running"),
        ("running", "succeeded"),
    ]
    assert events("task", by_name["B"]["id"]) == [
        ("pending", "ready"),
        ("ready", "queued"),
        ("queued", "running"),
        ("running", "succeeded"),
    ]
    assert events("workflow", run["id"]) == [("pending", "running"), ("running", "succeeded")]
