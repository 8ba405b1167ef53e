"""A worker or controller process imports only what it runs: not Flask, the web app or the
TaskInstance server (each costs start-up time, on every worker restart)."""

from __future__ import annotations

import json
import subprocess
import sys

# What `kiln worker` and `kiln controller` import before they take work.
PROCESS_IMPORTS = (
    "kiln.cli.main",
    "kiln.transport",
    "kiln.workers.actors",
    "kiln.workers.controller",
    "kiln.workers.hooks",
    "kiln.workers.scheduling_hooks",
)
NOT_WANTED = ("flask", "flask_smorest", "kiln.web", "kiln.taskinstance.server")


def test_a_worker_or_controller_process_does_not_import_flask_or_the_taskinstance_server():
    code = (
        "import importlib, json, sys\n"
        f"for m in {PROCESS_IMPORTS!r}: importlib.import_module(m)\n"
        f"print(json.dumps([m for m in {NOT_WANTED!r} if m in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout) == []


def test_kiln_instance_still_runs_the_taskinstance_server_command():
    out = subprocess.run(
        [sys.executable, "-m", "kiln.cli.main", "instance", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "--model-type" in out.stdout
