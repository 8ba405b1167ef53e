"""RunHandle over a fake source: waits in long polls, then gives results or raises."""

from __future__ import annotations

import pytest

from kiln.core.errors import RunCancelled, RunFailed
from kiln.core.runs import WAIT_STEP_S, RunHandle, outcome


class Source:
    def __init__(self, answers: list[dict]) -> None:
        self.answers = answers
        self.waits: list[float] = []

    def wait(self, run_id: int, timeout_s: float) -> dict:
        self.waits.append(timeout_s)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def cancel(self, run_id: int) -> None:
        raise AssertionError("not called")


def run(status: str, *tasks: dict) -> dict:
    return {"id": 7, "status": status, "error": "", "tasks": list(tasks)}


def test_result_asks_again_until_the_run_ends_in_waits_of_at_most_the_server_maximum():
    source = Source([run("running"), run("succeeded", {"name": "A", "status": "succeeded",
                                                        "result": 3})])  # fmt: skip
    assert RunHandle(source, 7).result() == {"A": 3}
    assert source.waits == [WAIT_STEP_S, WAIT_STEP_S]


def test_a_failed_run_names_its_first_failed_task_and_a_cancelled_run_says_so():
    failed = run("failed", {"name": "A", "status": "upstream_failed"},
                 {"name": "B", "status": "failed", "error": "RuntimeError: boom"})  # fmt: skip
    with pytest.raises(RunFailed) as caught:
        outcome(failed)
    assert (caught.value.task, caught.value.error) == ("B", "RuntimeError: boom")
    with pytest.raises(RunCancelled):
        outcome(run("cancelled"))


def test_a_wait_that_times_out_raises_timeout_error():
    with pytest.raises(TimeoutError):
        RunHandle(Source([run("running")]), 7).wait(timeout=0)
