"""Logs: one JSON object per line with the ids involved, a readable format for people, the
level from the environment — and real worker and controller processes that start while Redis
is down, say so in their logs, and carry on when it comes back."""

from __future__ import annotations

import io
import json
import logging
import socket

import pytest
import sqlalchemy as sa

import tests.handlers  # noqa: F401 - registers the handlers the submitted run names
from kiln.app.logs import HANDLER_NAME, log_context, set_process_fields, setup_logging
from kiln.core.task_context import TaskContext, reset_current, set_current
from kiln.store.schema import processes
from tests.chaos.services import ThrowawayRedis, available
from tests.conftest import wait_for


@pytest.fixture
def captured(monkeypatch):
    """Kiln's handler on the root logger, writing into a buffer; removed afterwards."""
    root = logging.getLogger()
    level = root.level
    buffers = []

    def install(fmt: str = "json", log_level: str = "INFO") -> io.StringIO:
        monkeypatch.setenv("KILN_LOG_FORMAT", fmt)
        monkeypatch.setenv("KILN_LOG_LEVEL", log_level)
        buffer = io.StringIO()
        setup_logging("test", stream=buffer)
        buffers.append(buffer)
        return buffer

    yield install
    for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(handler)
    root.setLevel(level)
    set_process_fields(process_id=None)


def lines(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_each_line_is_one_json_object_with_the_ids_involved(captured):
    buffer = captured()
    log = logging.getLogger("kiln.test")
    set_process_fields(process_id="worker:h:1:abc")
    log.info("plain")
    with log_context(workflow_id=7, operation_id="ic-1"):
        log.warning("in context", extra={"instance_id": 3})
    token = set_current(TaskContext(task_id=11, workflow_id=7, name="T", attempt=2, max_attempts=3))
    try:
        log.error("inside a handler")
    finally:
        reset_current(token)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    plain, ctx, handler, failed = lines(buffer)
    assert {"timestamp", "level", "logger", "message", "process"} <= set(plain)
    assert plain["timestamp"].endswith("+00:00") and plain["level"] == "INFO"
    assert plain["logger"] == "kiln.test" and plain["message"] == "plain"
    assert plain["process_id"] == "worker:h:1:abc"
    assert plain["process"].startswith(f"test:{socket.gethostname()}:")
    assert (ctx["workflow_id"], ctx["operation_id"], ctx["instance_id"]) == (7, "ic-1", 3)
    assert (handler["workflow_id"], handler["task_id"], handler["attempt"]) == (7, 11, 2)
    assert "operation_id" not in handler  # the context ended with its block
    assert "RuntimeError: boom" in failed["exception"]


def test_the_level_comes_from_kiln_log_level(captured):
    buffer = captured(log_level="WARNING")
    logging.getLogger("kiln.test").info("hidden")
    logging.getLogger("kiln.test").warning("shown")
    assert [r["message"] for r in lines(buffer)] == ["shown"]


def test_the_text_format_is_for_people_and_still_names_the_ids(captured):
    buffer = captured(fmt="text")
    with log_context(workflow_id=5, task_id=9):
        logging.getLogger("kiln.test").warning("hello")
    line = buffer.getvalue().strip()
    assert "WARNING kiln.test: hello [workflow_id=5 task_id=9]" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_a_bad_log_setting_is_refused_with_a_readable_message(monkeypatch):
    monkeypatch.setenv("KILN_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="KILN_LOG_FORMAT must be json or text"):
        setup_logging("test", stream=io.StringIO())


def json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.strip():
            out.append(json.loads(line))  # every line must be JSON
    return out


@pytest.mark.redis
def test_processes_start_while_redis_is_down_say_so_and_work_once_it_is_back(cluster, pg_kiln):
    if (reason := available()) and "redis" in reason:
        pytest.skip(reason)
    redis = ThrowawayRedis()
    try:
        redis.stop()  # down before any process starts
        cluster.env["KILN_BROKER_URL"] = redis.url
        cluster.env["KILN_LOG_FORMAT"] = "json"
        worker = cluster.worker(threads=2)
        controller = cluster.controller()
        run_id = pg_kiln.submit(
            {"name": "w", "tasks": [{"name": "A", "handler": "add", "params": {"a": 1, "b": 2}}]}
        )
        wait_for(
            lambda: (
                pg_kiln.read(
                    lambda c: c.execute(
                        sa.select(sa.func.count())
                        .select_from(processes)
                        .where(processes.c.stopped_at.is_(None))
                    ).scalar()
                )
                == 2
            ),
            what="worker and controller to register while Redis is down",
        )
        worker_log = next(p for p in cluster.log_dir.glob("worker-*.log"))
        controller_log = next(p for p in cluster.log_dir.glob("controller-*.log"))
        wait_for(
            lambda: any(
                "connection error" in r["message"] for r in json_lines(worker_log.read_text())
            ),
            what="the worker to log that the broker is unreachable",
        )
        wait_for(
            lambda: any(
                "broker send failed" in r["message"] for r in json_lines(controller_log.read_text())
            ),
            what="the controller to log that it could not send",
        )
        assert worker.poll() is None and controller.poll() is None
        redis.start()
        wait_for(
            lambda: pg_kiln.workflow(run_id)["status"] == "succeeded", timeout=30, what="the run"
        )
        assert pg_kiln.workflow(run_id)["tasks"][0]["result"] == 3
        records = json_lines(worker_log.read_text())
        registered = [r for r in records if r["message"].startswith("worker registered")]
        assert registered and registered[0]["process_id"].startswith("worker:")
        assert all({"timestamp", "level", "logger", "message"} <= set(r) for r in records)
        assert json_lines(controller_log.read_text())
    finally:
        redis.stop()


@pytest.mark.redis
def test_at_the_default_level_each_failed_attempt_is_one_warning_and_a_failed_task_one_error(
    cluster, pg_kiln
):
    cluster.env.pop("KILN_LOG_LEVEL")  # the default, WARNING
    cluster.env["KILN_LOG_FORMAT"] = "json"
    cluster.worker(threads=2)
    cluster.controller()
    flaky = pg_kiln.submit({"name": "flaky", "on_error": "continue", "tasks": [
        {"name": "Twice", "handler": "fail_until", "params": {"succeed_on": 3}, "max_attempts": 3},
        {"name": "Never", "handler": "fail_always", "params": {"message": "no luck"},
         "max_attempts": 2},
    ]})  # fmt: skip
    late = pg_kiln.submit(
        {"name": "late", "tasks": [{"name": "Nap", "handler": "sleep", "params": {"seconds": 2}}]}
    )
    wait_for(lambda: pg_kiln.workflow(late)["tasks"][0]["status"] == "running", what="Nap runs")
    pg_kiln.cancel(late)  # Nap's result arrives after the cancel: refused as stale, quietly

    def stale_recorded() -> bool:
        attempts = pg_kiln.workflow(late)["tasks"][0]["attempt_history"]
        return [a["outcome"] for a in attempts] == ["stale"]

    wait_for(stale_recorded, what="Nap's late result to be refused")
    wait_for(lambda: pg_kiln.workflow(flaky)["status"] == "failed", timeout=30, what="flaky")
    worker_log = next(cluster.log_dir.glob("worker-*.log"))
    twice, never = (t["id"] for t in pg_kiln.workflow(flaky)["tasks"])

    def about(task_id: int, level: str) -> list[dict]:
        """Its lines at ``level``, each message without the error's " (at file:line)"."""
        return [
            {**r, "message": r["message"].split(" (at ")[0]}
            for r in json_lines(worker_log.read_text())
            if r.get("task_id") == task_id and r["level"] == level
        ]

    wait_for(lambda: about(never, "ERROR"), what="the failed task's ERROR line")
    assert [r["message"] for r in about(twice, "WARNING")] == [
        f"task {twice} ('Twice') attempt 1 of 3 failed, will retry: RuntimeError: failing attempt 1",
        f"task {twice} ('Twice') attempt 2 of 3 failed, will retry: RuntimeError: failing attempt 2",
    ]
    assert about(twice, "ERROR") == []
    assert [r["message"] for r in about(never, "WARNING")] == [
        f"task {never} ('Never') attempt 1 of 2 failed, will retry: RuntimeError: no luck"
    ]
    (error,) = about(never, "ERROR")
    assert "handlers.py" in worker_log.read_text()  # the error says where it was raised
    assert (
        error["message"]
        == f"task {never} ('Never') failed on attempt 2 of 2: RuntimeError: no luck"
    )
    assert error["workflow_id"] == flaky and error["attempt"] == 2
    everything = worker_log.read_text() + "".join(
        p.read_text() for p in cluster.log_dir.glob("controller-*.log")
    )
    assert "stale" not in everything  # an expected race is DEBUG, not shown by default
