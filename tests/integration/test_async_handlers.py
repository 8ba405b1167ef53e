"""Async and sync handlers time out, retry, report progress and stop on cancel the same way,
on the embedded runtime, against both PostgreSQL and SQLite."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from kiln.core.builder import Workflow
from kiln.core.errors import TaskCancelled, UnknownHandler
from kiln.core.handlers import check_handler, task
from kiln.core.task_context import Cancellation, TaskContext
from tests import handlers
from tests.conftest import wait_for
from tests.integration.test_workflows import run_to_end, tasks_by_name

KINDS = ["sync", "async"]
SLEEP = {"sync": "sleep", "async": "async_sleep"}
FAIL_UNTIL = {"sync": "fail_until", "async": "async_fail_until"}
PROGRESS = {"sync": "progress", "async": "async_progress"}
UNTIL_CANCELLED = {"sync": "report_until_cancelled", "async": "async_report_until_cancelled"}
# What each saw when stopped: TaskCancelled from report_progress, or its coroutine cancelled.
STOPPED_BY = {"sync": "TaskCancelled", "async": "cancelled"}


@pytest.mark.parametrize("kind", KINDS)
def test_a_handler_past_its_timeout_times_out_and_is_retried(kiln, embedded, kind):
    wf = Workflow(f"timeout-{kind}")
    wf.add(SLEEP[kind], name="Slow", params={"seconds": 5}, timeout_s=0.3, max_attempts=2)
    run = run_to_end(kiln, wf)
    t = tasks_by_name(run)["Slow"]
    assert t["status"] == "failed" and t["attempts"] == 2
    assert [a["outcome"] for a in t["attempt_history"]] == ["timed_out", "timed_out"]
    assert "timed out after 0.3s" in t["error"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_failing_handler_is_retried_until_it_succeeds(kiln, embedded, kind):
    wf = Workflow(f"retry-{kind}")
    wf.add(FAIL_UNTIL[kind], name="Flaky", params={"succeed_on": 2}, max_attempts=3)
    run = run_to_end(kiln, wf)
    t = tasks_by_name(run)["Flaky"]
    assert run["status"] == "succeeded"
    assert t["result"] == {"attempt": 2}
    assert [a["outcome"] for a in t["attempt_history"]] == ["failed", "succeeded"]
    assert "failing attempt 1" in t["attempt_history"][0]["error"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_handler_reports_progress_and_returns_its_result(kiln, embedded, kind):
    wf = Workflow(f"progress-{kind}")
    wf.add(PROGRESS[kind], name="Long", params={"steps": 3, "delay": 0.05})
    run = run_to_end(kiln, wf)
    t = tasks_by_name(run)["Long"]
    assert run["status"] == "succeeded" and t["result"] == "done"
    assert t["progress"] == 1.0 and t["progress_message"] == "step 3"


def _started(key: str) -> bool:
    return "started" in handlers.SEEN.get(key, [])


@pytest.mark.parametrize("kind", KINDS)
def test_cancelling_a_run_stops_its_running_handlers(kiln, embedded, kind):
    keys = [f"{kind}-{uuid.uuid4().hex}" for _ in range(3)]
    wf = Workflow(f"cancel-{kind}")
    for i, key in enumerate(keys):
        wf.add(UNTIL_CANCELLED[kind], name=f"Loop {i}", params={"key": key}, max_attempts=3)
    if kind == "sync":  # one more that checks the flag instead of reporting progress
        keys.append(f"poll-{uuid.uuid4().hex}")
        wf.add("poll_cancelled", name="Poll", params={"key": keys[-1]}, max_attempts=3)
    wf_id = kiln.submit(wf)
    wait_for(lambda: all(_started(k) for k in keys), timeout=20, what="every handler running")

    kiln.cancel(wf_id)

    expected = {k: STOPPED_BY[kind] for k in keys}
    if kind == "sync":
        expected[keys[-1]] = "cancelled"
    wait_for(
        lambda: all(handlers.SEEN[k][-1] == expected[k] for k in keys),
        timeout=10,
        what="every handler to see the cancel",
    )

    def attempts_ended() -> list | None:
        history = [a for t in kiln.workflow(wf_id)["tasks"] for a in t["attempt_history"]]
        return None if any(a["outcome"] == "running" for a in history) else history

    history = wait_for(attempts_ended, timeout=10, what="every attempt to end")
    assert len(history) == len(keys)  # none was retried
    assert {a["outcome"] for a in history} == {"stale"}  # refused: none counted as a success
    run = kiln.workflow(wf_id)
    assert run["status"] == "cancelled"
    assert all(t["result"] is None for t in run["tasks"])


@pytest.mark.parametrize("kind", KINDS)
def test_a_timed_out_handler_sees_that_it_was_cancelled(kiln, embedded, kind):
    key = f"timeout-{kind}-{uuid.uuid4().hex}"
    wf = Workflow(f"timeout-flag-{kind}")
    handler = "poll_cancelled" if kind == "sync" else "async_poll_cancelled"
    wf.add(handler, name="Watcher", params={"key": key}, timeout_s=0.3, max_attempts=1)
    run = run_to_end(kiln, wf)
    t = tasks_by_name(run)["Watcher"]
    assert [a["outcome"] for a in t["attempt_history"]] == ["timed_out"]
    # Flagged (and an async handler's coroutine cancelled) before any forced interrupt.
    wait_for(lambda: handlers.SEEN[key] == ["started", "cancelled"], timeout=10)


def test_report_progress_raises_task_cancelled_once_the_flag_is_set():
    flag = Cancellation()
    reports: list[float] = []
    ctx = TaskContext(1, 1, "T", 1, 1, _report=lambda f, m: reports.append(f), _cancellation=flag)
    ctx.report_progress(0.1)
    assert not ctx.cancelled
    flag.cancel("its run was cancelled")
    assert ctx.cancelled
    with pytest.raises(TaskCancelled, match="its run was cancelled"):
        ctx.report_progress(0.2)
    assert reports == [0.1]


async def _agen():  # pragma: no cover - never run: refused
    yield 1


def _gen():  # pragma: no cover - never run: refused
    yield 1


@pytest.mark.parametrize("fn", [_agen, _gen, 42], ids=["async generator", "generator", "int"])
def test_a_handler_kiln_cannot_run_is_refused_when_registered(fn):
    with pytest.raises(TypeError, match="cannot register"):
        task(name=f"refused-{id(fn)}")(fn)


def test_a_handler_kiln_cannot_run_is_refused_when_submitted(kiln):
    with pytest.raises(UnknownHandler, match="async generator"):
        check_handler(f"{__name__}:_agen", ("tests",))
    wf = Workflow("refused")
    wf.add(f"{__name__}:_gen", name="Gen")
    with pytest.raises(UnknownHandler, match="generator function"):
        kiln.submit(wf)


def test_an_async_handler_is_accepted_at_submit(kiln):
    assert asyncio.iscoroutinefunction(handlers.async_sleep)
    check_handler("async_sleep", ())
    check_handler("tests.handlers:async_sleep", ("tests",))
