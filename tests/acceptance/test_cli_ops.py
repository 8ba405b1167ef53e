"""The operator commands as a user runs them: ``kiln`` subprocesses with ``--json``, on the
embedded SQLite database (one file shared with the test, which plays the other processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.app.runtime import Kiln
from kiln.store.instances import Registration, register_txn
from kiln.store.operations import create_operation_txn
from tests.conftest import fast_settings

ROOT = Path(__file__).resolve().parents[2]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}


def kiln(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kiln.cli.main", *args],
        cwd=cwd,
        env={
            **clean_env(),
            "PYTHONPATH": str(ROOT),
            "COLUMNS": "160",
            "KILN_IMPORTS": "tests.handlers",
        },
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def kiln_json(*args: str, cwd: Path) -> object:
    done = kiln(*args, "--json", cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from kiln.app.runtime import MIGRATIONS_DIR

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(cfg).get_current_head()


@pytest.fixture
def home(tmp_path):
    """A directory whose kiln.db is migrated, with a Kiln handle on it for the test."""
    done = kiln("db", "upgrade", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["revision"] == head_revision()
    handle = Kiln(fast_settings(database_url=f"sqlite:///{tmp_path / 'kiln.db'}"))
    yield tmp_path, handle
    handle.close()


def test_kiln_watch_follows_a_running_workflow_to_the_end(home):
    import tests.handlers  # noqa: F401
    from kiln.workers.embedded import EmbeddedRuntime

    cwd, handle = home
    run_id = handle.submit(
        {"name": "steps", "tasks": [
            {"name": "A", "handler": "progress", "params": {"steps": 3, "delay": 0.2}},
            {"name": "B", "handler": "sleep", "params": {"seconds": 0.3}, "depends_on": ["A"]},
            {"name": "C", "handler": "sleep", "params": {"seconds": 0.3}, "depends_on": ["B"]},
        ]}
    )  # fmt: skip
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kiln.cli.main",
            "watch",
            str(run_id),
            "--json",
            "--interval",
            "0.05",
        ],
        cwd=cwd,
        env={**clean_env(), "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # The run starts only once the watcher has shown it waiting, so a slow interpreter start
    # cannot make the watcher miss the run's progress.
    first = watcher.stdout.readline()
    with EmbeddedRuntime(handle, threads=2):
        out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, err
    snapshots = [json.loads(line) for line in [first, *out.splitlines()]]
    assert snapshots[0]["status"] == "pending" and snapshots[0]["finished"] == 0
    assert len(snapshots) >= 3  # it saw the run move, not only its end
    finished = [s["finished"] for s in snapshots]
    assert finished == sorted(finished) and finished[-1] == 3
    assert snapshots[-1]["status"] == "succeeded" and snapshots[-1]["fraction"] == 1.0
    assert any(s["running"] for s in snapshots)


def test_kiln_watch_shows_progress_bars_and_exits_nonzero_for_a_failed_run(home):
    cwd, _ = home
    wf = cwd / "bad.json"
    wf.write_text(json.dumps({"name": "bad", "tasks": [
        {"name": "A", "handler": "fail_always", "max_attempts": 1}]}))  # fmt: skip
    assert kiln("run", str(wf), cwd=cwd).returncode == 1
    done = kiln("watch", "1", cwd=cwd)
    assert done.returncode == 1
    assert "workflow 1" in done.stdout and "0/1 tasks" not in done.stdout
    assert "━" in done.stdout  # the bar
    assert "failed" in done.stdout


def test_kiln_ops_lists_operations_with_secrets_redacted(home):
    cwd, handle = home
    run_id = handle.submit(
        {"name": "w", "tasks": [{"name": "A", "handler": "noop"}]}, check_handlers=False
    )
    op, _ = handle.txn(
        lambda c: create_operation_txn(
            c,
            "pause",
            request_data={"api_key": "sk-secret", "workflow_id": run_id},
            workflow_id=run_id,
        )
    )
    body = kiln_json("ops", cwd=cwd)
    assert body["total"] == 1
    (listed,) = body["operations"]
    assert listed["ic_id"] == op["ic_id"] and listed["status"] == "pending"
    assert listed["request_data"]["api_key"] == "***"
    assert kiln_json("ops", "--status", "completed", cwd=cwd)["total"] == 0
    table = kiln("ops", cwd=cwd)
    assert op["ic_id"] in table.stdout and "sk-secret" not in table.stdout


def test_kiln_instances_lists_registered_instances(home):
    cwd, handle = home
    handle.txn(
        lambda c: register_txn(
            c,
            Registration.parse(
                {"name": "gpu-1", "url": "http://127.0.0.1:9/a", "model_type": "llama"}
            ),
        )
    )
    body = kiln_json("instances", cwd=cwd)
    assert body["count"] == 1
    assert body["instances"][0]["name"] == "gpu-1" and body["instances"][0]["live"] is True
    assert "gpu-1" in kiln("instances", cwd=cwd).stdout


def test_kiln_scheduler_policy_switches_and_stats_report_it(home):
    cwd, _ = home
    switched = kiln_json("scheduler", "policy", "Fair", cwd=cwd)
    assert (switched["policy"], switched["previous_policy"]) == ("Fair", "FIFO")
    stats = kiln_json("scheduler", "stats", cwd=cwd)
    assert stats["policy"] == "Fair" and "total_scheduled" in stats
    assert kiln_json("scheduler", "next", cwd=cwd)["policy"] == "Fair"
    bad = kiln("scheduler", "policy", "fair", cwd=cwd)
    assert bad.returncode == 2 and "Invalid policy" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_kiln_pipelines_lists_pipelines_with_their_progress(home):
    from kiln.web.app import create_app

    cwd, handle = home
    client = create_app(handle).test_client()
    ctx = client.post("/contexts", json={"name": "q", "rows": ["a", "b", "c"], "num_shards": 3})
    assert ctx.status_code in (200, 201), ctx.get_json()
    created = client.post(
        "/pipelines",
        json={"context_id": ctx.get_json()["id"], "pipeline_name": "eval", "pipeline_type": "openai",
              "client_config": {"api_key": "sk-secret", "base_url": "http://127.0.0.1:9/v1"},
              "model_config": {"model": "m"}},
    )  # fmt: skip
    assert created.status_code in (200, 201), created.get_json()
    body = kiln_json("pipelines", cwd=cwd)
    (p,) = body["pipelines"]
    assert p["name"] == "eval" and p["progress"] == "0/3" and p["num_shards"] == 3
    assert p["client_config"]["api_key"] == "***"
    table = kiln("pipelines", cwd=cwd).stdout
    assert "eval" in table and "0/3" in table and "sk-secret" not in table


def test_every_operator_command_has_json_and_help(home):
    cwd, _ = home
    for command in (["watch"], ["ops"], ["instances"], ["pipelines"], ["scheduler", "stats"],
                    ["scheduler", "policy"], ["scheduler", "next"], ["db", "upgrade"],
                    ["status"], ["run"], ["demo"]):  # fmt: skip
        done = kiln(*command, "--help", cwd=cwd)
        assert done.returncode == 0 and "--json" in done.stdout, command
