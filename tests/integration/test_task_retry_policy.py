"""A task's own retry policy and its full tracebacks, on PostgreSQL and SQLite."""

from __future__ import annotations

from kiln.core.builder import Workflow
from kiln.core.redaction import redact
from tests.integration.test_workflows import run_to_end, tasks_by_name
from tests.retry_handlers import Transient

FLAKY = "tests.retry_handlers:flaky"


def test_a_task_is_retried_when_its_exception_is_listed_in_the_policy(kiln, embedded):
    wf = Workflow("listed")
    wf.add(
        FLAKY,
        name="Flaky",
        params={"error": "transient", "succeed_on": 3},
        retry={"max_attempts": 4, "on": [Transient]},
    )
    run = run_to_end(kiln, wf)
    task = tasks_by_name(run)["Flaky"]
    assert run["status"] == "succeeded" and task["result"] == {"attempt": 3}
    assert task["max_attempts"] == 4
    assert task["retry"] == {"on": ["tests.retry_handlers:Transient"]}
    assert [a["outcome"] for a in task["attempt_history"]] == ["failed", "failed", "succeeded"]


def test_a_task_whose_exception_is_not_listed_fails_after_one_attempt(kiln, embedded):
    definition = {
        "name": "unlisted",
        "tasks": [
            {
                "name": "Wrong",
                "handler": FLAKY,
                "params": {"error": "value"},
                "max_attempts": 5,
                "retry": {"on": ["ConnectionError"]},
            }
        ],
    }
    run = run_to_end(kiln, definition)
    task = tasks_by_name(run)["Wrong"]
    assert run["status"] == "failed"
    assert task["status"] == "failed" and task["attempts"] == 1
    assert task["error"].startswith("ValueError: attempt 1 failed")


def test_the_policys_backoff_spaces_the_attempts(kiln, embedded):
    wf = Workflow("spaced")
    # The deployment's base is 0.05s (fast_settings): a 0.4s gap can only be the policy's.
    policy = {"backoff_s": 0.4, "max_backoff_s": 0.4, "jitter": 0}
    wf.add(FLAKY, name="Spaced", params={"error": "value"}, max_attempts=3, retry=policy)
    run = run_to_end(kiln, wf)
    history = tasks_by_name(run)["Spaced"]["attempt_history"]
    assert [a["outcome"] for a in history] == ["failed", "failed", "failed"]
    for before, after in zip(history, history[1:], strict=False):
        assert (after["started_at"] - before["finished_at"]).total_seconds() >= 0.4


def test_each_attempt_keeps_the_handlers_whole_traceback_and_the_task_a_one_line_error(
    kiln, embedded
):
    wf = Workflow("traced")
    wf.add(
        FLAKY,
        name="Traced",
        params={"error": "value", "secret_url": "https://bob:hunter2@db.example/x"},
        max_attempts=2,
    )
    run = run_to_end(kiln, wf)
    task = tasks_by_name(run)["Traced"]
    assert "\n" not in task["error"] and task["error"].startswith("ValueError: attempt 2")
    assert len(task["attempt_history"]) == 2
    for n, attempt in enumerate(task["attempt_history"], start=1):
        error = attempt["error"]
        assert error.startswith(f"ValueError: attempt {n} failed")
        assert "Traceback (most recent call last):" in error
        assert "in flaky" in error and "in _deeper" in error
        assert "retry_handlers.py" in error
    shown = redact(run)["tasks"][0]["attempt_history"][0]["error"]
    assert "hunter2" not in shown and "Traceback" in shown
