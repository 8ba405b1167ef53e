"""A worker or controller process imports only what it runs: not Flask, the web app, the
TaskInstance server, Alembic (its schema check reads the revision without it), requests, or
what only other commands print or parse with (Rich, croniter); each costs start-up time, on
every worker restart."""

from __future__ import annotations

import json
import subprocess
import sys

# What `kiln worker` and `kiln controller` import before they take work.
PROCESS_IMPORTS = (
    "kiln.cli.main",
    "kiln.app.preload",
    "kiln.transport",
    "kiln.workers.actors",
    "kiln.workers.controller",
    "kiln.workers.hooks",
    "kiln.workers.scheduling_hooks",
)
NOT_WANTED = (
    "flask", "flask_smorest", "kiln.web", "kiln.taskinstance.server", "alembic", "requests",
    "rich", "croniter",
)  # fmt: skip


def imported(code: str, names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` a fresh interpreter has imported after running ``code``."""
    script = (
        code + f"\nimport json, sys\nprint(json.dumps([m for m in {names!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(out.stdout.splitlines()[-1])


def test_a_worker_or_controller_process_does_not_import_flask_or_the_taskinstance_server():
    code = f"import importlib\nfor m in {PROCESS_IMPORTS!r}: importlib.import_module(m)"
    assert imported(code, NOT_WANTED) == []


def test_the_start_up_schema_check_does_not_import_alembic(tmp_path):
    # What `kiln worker` and `kiln controller` wait on before they start: the database is at
    # the newest revision (here an empty SQLite file, which is not).
    code = (
        "from kiln.app.runtime import Kiln\nfrom kiln.core.config import Settings\n"
        f"kiln = Kiln(Settings(database_url='sqlite:///{tmp_path / 'kiln.db'}'))\n"
        "assert kiln.control.schema_is_current() is False\n"
    )
    assert imported(code, ("alembic",)) == []


def test_importing_kiln_for_a_handler_module_does_not_load_the_runtime_or_requests():
    assert imported("import kiln", ("kiln.app.runtime", "sqlalchemy", "requests")) == []
    # ...and the names stay importable from the package.
    code = "from kiln import Client, Kiln, task\nassert Kiln.__name__ == 'Kiln' and Client"
    assert imported(code, ("kiln.app.runtime", "requests")) == ["kiln.app.runtime", "requests"]


def test_kiln_instance_still_runs_the_taskinstance_server_command():
    out = subprocess.run(
        [sys.executable, "-m", "kiln.cli.main", "instance", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "--model-type" in out.stdout
