"""The CLI acts, as a user runs it (``kiln`` subprocesses): ``submit`` without following,
``list``, ``cancel``, ``pause``, ``resume`` and ``pipeline stop|resume|clone|delete``, against
a real worker and controller on PostgreSQL and Redis (the controller applies what the CLI
records, as for the HTTP API), and on the embedded default, where the CLI applies it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_for

pytestmark = [pytest.mark.slow]


def kiln(env: dict[str, str], *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kiln.cli.main", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def kiln_json(env: dict[str, str], *args: str, cwd: Path = ROOT) -> dict:
    done = kiln(env, *args, "--json", cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def one_line_error(done: subprocess.CompletedProcess, code: int, text: str) -> None:
    assert done.returncode == code, done.stdout + done.stderr
    assert done.stderr.startswith("error: ") and text in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


@pytest.mark.postgres
@pytest.mark.redis
def test_submit_list_pause_resume_and_cancel_a_run_from_the_command_line(
    cluster, pg_kiln, tmp_path
):
    env = cluster.env
    cluster.worker(threads=2)
    cluster.controller()
    definition = tmp_path / "chain.json"
    # A runs until the run is cancelled, so each step finds the run as it left it however
    # slowly the commands start.
    definition.write_text(json.dumps({"name": "chain", "tasks": [
        {"name": "A", "handler": "poll_cancelled", "params": {"key": "cli-actions"}},
        {"name": "B", "handler": "noop", "depends_on": ["A"]},
    ]}))  # fmt: skip

    submitted = kiln_json(env, "submit", str(definition))
    run_id = submitted["id"]
    assert submitted["created"] is True
    assert pg_kiln.run(run_id)["status"] in ("pending", "running")  # it returned at once
    human = kiln(env, "submit", str(definition))
    assert human.returncode == 0 and "kiln watch" in human.stdout

    listed = kiln_json(env, "list", "--name", "chain")["workflows"]
    assert [w["id"] for w in listed] == [run_id + 1, run_id]

    paused = kiln_json(env, "pause", str(run_id))
    assert (paused["operation"], paused["status"]) == ("pause", "completed"), paused
    assert pg_kiln.run(run_id)["status"] == "paused"
    assert [w["id"] for w in kiln_json(env, "list", "--status", "paused")["workflows"]] == [run_id]

    resumed = kiln(env, "resume", str(run_id))
    assert resumed.returncode == 0 and f"resume workflow {run_id}: completed" in resumed.stdout
    assert pg_kiln.run(run_id)["status"] in ("pending", "running")

    cancelled = kiln(env, "cancel", str(run_id))
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    assert f"cancel workflow {run_id}: completed" in cancelled.stdout
    assert pg_kiln.run(run_id)["status"] == "cancelled"

    one_line_error(kiln(env, "cancel", str(run_id)), 1, f"cancel workflow {run_id} failed")
    one_line_error(kiln(env, "pause", "999"), 2, "workflow 999 does not exist")
    one_line_error(kiln(env, "submit", "nope.json"), 2, "no such file")
    ops = kiln_json(env, "ops", "--workflow", str(run_id))["operations"]
    assert sorted(op["operation"] for op in ops) == ["cancel", "cancel", "pause", "resume"]


def test_pipeline_stop_resume_clone_and_delete_from_the_command_line(cluster, pg_kiln):
    env = cluster.env
    cluster.worker(threads=2)
    cluster.controller()
    ctx = pg_kiln.pipelines.create_context(
        name="rows", config={}, rows=[f"r{i}" for i in range(20)], num_shards=10
    )
    p = pg_kiln.pipelines.create(
        {"pipeline_name": "tagging", "pipeline_type": "python",
         "model_config": {"handler": "tests.handlers:tag_rows", "delay_s": 1.5}},
        context_id=ctx["id"],
    )  # fmt: skip
    pid = p["id"]
    wait_for(lambda: str(pg_kiln.pipelines.get(pid, shards=False)["status"]) == "ongoing")

    stopped = kiln_json(env, "pipeline", "stop", str(pid))
    assert stopped["status"] == "completed", stopped
    wait_for(
        lambda: str(pg_kiln.pipelines.get(pid, shards=False)["status"]) == "stopped",
        what=f"pipeline {pid} to stop: {pg_kiln.pipelines.get(pid, shards=False)}",
    )
    at = pg_kiln.pipelines.get(pid, shards=False)["shards_completed"]
    assert at < 10

    resumed = kiln(env, "pipeline", "resume", str(pid))
    assert resumed.returncode == 0 and f"resume pipeline {pid}: completed" in resumed.stdout

    cloned = kiln(env, "pipeline", "clone", str(pid), "--name", "tagging-2")
    assert cloned.returncode == 0, cloned.stderr
    assert f"clone pipeline {pid}: completed → pipeline " in cloned.stdout
    clone_id = int(cloned.stdout.rsplit("pipeline ", 1)[1])
    clone = pg_kiln.pipelines.get(clone_id, shards=False)
    assert clone["name"] == "tagging-2" and clone["cloned_from"] == pid

    deleted = kiln_json(env, "pipeline", "delete", str(clone_id))
    assert deleted["status"] == "completed", deleted
    assert str(pg_kiln.pipelines.get(clone_id, shards=False)["status"]) == "deleted"

    wait_for(
        lambda: str(pg_kiln.pipelines.get(pid, shards=False)["status"]) == "completed", timeout=120
    )
    one_line_error(kiln(env, "pipeline", "stop", str(pid)), 1, f"stop pipeline {pid} failed")
    one_line_error(kiln(env, "pipeline", "stop", "999"), 2, "pipeline 999")
    one_line_error(
        kiln(env, "pipeline", "clone", str(pid), "--config", '{"nope": 1}'), 2, "unknown field"
    )


def test_on_the_embedded_default_the_command_applies_the_operation_itself(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    env |= {"PYTHONPATH": str(ROOT), "KILN_IMPORTS": "tests.handlers"}
    definition = tmp_path / "w.json"
    definition.write_text(json.dumps({"name": "w", "tasks": [{"name": "A", "handler": "noop"}]}))
    submitted = kiln(env, "submit", str(definition), cwd=tmp_path)
    assert submitted.returncode == 0 and "no process runs it" in submitted.stderr
    paused = kiln_json(env, "pause", "1", cwd=tmp_path)
    assert paused["status"] == "completed", paused
    cancelled = kiln_json(env, "cancel", "1", cwd=tmp_path)
    assert cancelled["status"] == "completed", cancelled
    (run,) = kiln_json(env, "list", cwd=tmp_path)["workflows"]
    assert run["status"] == "cancelled"
