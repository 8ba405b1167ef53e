"""Kiln.start: a run handle backed by the database, on PostgreSQL and SQLite."""

from __future__ import annotations

import pytest

from kiln import RunCancelled, RunFailed
from kiln.core.builder import Workflow


def test_a_started_run_waits_to_succeeded_and_gives_every_tasks_result_by_name(kiln, embedded):
    wf = Workflow("sum")
    a = wf.add("add", name="A", params={"a": 1, "b": 2})
    wf.add("add", name="B", params={"a": "{{A.result}}", "b": 10}, depends_on=[a])
    handle = kiln.start(wf)
    run = handle.wait(timeout=30)
    assert run["status"] == "succeeded" == handle.status()
    assert handle.result() == {"A": 3, "B": 13}


def test_a_failed_run_raises_run_failed_naming_the_task_and_its_error(kiln, embedded):
    wf = Workflow("doomed")
    wf.add("fail_always", name="Doomed", params={"message": "no luck"}, max_attempts=1)
    with pytest.raises(RunFailed) as caught:
        kiln.start(wf).result(timeout=30)
    assert caught.value.task == "Doomed"
    assert "no luck" in caught.value.error


def test_waiting_past_the_timeout_raises_timeout_error_and_a_cancelled_run_raises(kiln):
    # No worker runs: the run stays unfinished until cancelled.
    wf = Workflow("idle")
    wf.add("noop", name="Idle")
    handle = kiln.start(wf, idempotency_key="idle-1")
    with pytest.raises(TimeoutError):
        handle.wait(timeout=0.3)
    assert kiln.start(wf, idempotency_key="idle-1").id == handle.id
    handle.cancel()
    with pytest.raises(RunCancelled):
        handle.result(timeout=10)
