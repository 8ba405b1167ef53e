"""The `kiln` command as a user runs it: a subprocess, on the embedded default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def kiln(
    *args: str, cwd: Path, env: dict | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    return subprocess.run(
        [sys.executable, "-m", "kiln.cli.main", *args],
        cwd=cwd,
        env={**clean, "PYTHONPATH": str(ROOT), "COLUMNS": "160", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_demo_runs_to_completion_on_sqlite_with_no_servers(tmp_path):
    done = kiln("demo", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "kiln.db").exists()
    for name in ("Generate", "Chunk sum", "Audit", "Cool down", "Approve", "Sum", "Report"):
        assert name in done.stdout
    assert "succeeded" in done.stdout
    as_json = kiln("demo", "--json", cwd=tmp_path)
    run = json.loads(as_json.stdout)
    tasks = {t["name"]: t for t in run["tasks"]}
    assert run["status"] == "succeeded"
    assert tasks["Flaky fetch"]["attempts"] == 2
    assert tasks["Sum"]["result"] == 364 + 286 + 1000
    # A map whose width the Generate result decided, and a child run its parent waited for.
    assert [tasks[f"Chunk sum[{i}]"]["result"]["sum"] for i in range(3)] == [10, 26, 42]
    assert tasks["Chunk sum"]["result"] == [tasks[f"Chunk sum[{i}]"]["result"] for i in range(3)]
    audit = tasks["Audit"]
    assert audit["result"]["ok"] is True and audit["result"]["total"] == 78
    assert [a["outcome"] for a in audit["attempt_history"]] == ["waiting", "succeeded"]
    assert [c["id"] for c in run["children"]] == [audit["result"]["child_run"]]
    # A short durable sleep, and the signal the demo sent before Approve was reached.
    assert tasks["Cool down"]["result"]["slept_until"]
    assert tasks["Approve"]["result"] == {"approved": True, "by": "kiln demo"}
    assert tasks["Report"]["result"]["approved_by"] == "kiln demo"


def test_kiln_run_exits_zero_only_when_the_workflow_succeeded(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(
        json.dumps(
            {
                "name": "good",
                "tasks": [
                    {"name": "A", "handler": "tests.handlers:add", "params": {"a": 1, "b": 2}}
                ],
            }
        )
    )
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "name": "bad",
                "tasks": [
                    {"name": "A", "handler": "tests.handlers:fail_always", "max_attempts": 1}
                ],
            }
        )
    )
    env = {"KILN_IMPORTS": "tests.handlers"}  # the deployment allows the handlers' module
    ok = kiln("run", str(good), "--json", cwd=tmp_path, env=env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["tasks"][0]["result"] == 3
    failed = kiln("run", str(bad), cwd=tmp_path, env=env)
    assert failed.returncode == 1
    assert "failed" in failed.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        (
            json.dumps({"name": "x", "tasks": [{"name": "A", "handler": "nope_not_registered"}]}),
            "is not registered",
        ),
        (
            json.dumps(
                {"name": "x", "tasks": [{"name": "A", "handler": "echo", "depends_on": ["A"]}]}
            ),
            "depends on itself",
        ),
    ],
)
def test_kiln_run_rejects_bad_input_with_a_readable_message_and_no_traceback(
    tmp_path, content, message
):
    path = tmp_path / "wf.json"
    path.write_text(content)
    done = kiln("run", str(path), cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_kiln_status_of_an_unknown_run_is_a_clear_error(tmp_path):
    kiln("db", "upgrade", cwd=tmp_path)
    done = kiln("status", "12345", cwd=tmp_path)
    assert done.returncode == 2
    assert "workflow 12345 does not exist" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("command", "variable", "value"),
    [
        (["list"], "KILN_DB_POOL_MODE", "bogus"),
        (["worker"], "KILN_RETRY_BASE_S", "abc"),
        (["controller"], "KILN_DB_POOL_SIZE", "0"),
    ],
)
def test_a_bad_setting_is_one_readable_line_and_exit_2_not_a_traceback(
    tmp_path, command, variable, value
):
    done = kiln(*command, cwd=tmp_path, env={variable: value})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith(f"error: {variable} ") and repr(value) in done.stderr


def test_kiln_worker_explains_that_it_needs_a_shared_broker(tmp_path):
    done = kiln("worker", cwd=tmp_path)
    assert done.returncode == 2
    assert "KILN_BROKER_URL" in done.stderr


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["db"],
        ["db", "upgrade"],
        ["worker"],
        ["controller"],
        ["web"],
        ["run"],
        ["status"],
        ["demo"],
        ["instance"],
    ],
)
def test_every_command_has_help(tmp_path, command):
    done = kiln(*command, "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout
