"""A user's own module next to the command (``KILN_IMPORTS=salesflow``, started in its
folder, no ``PYTHONPATH``) is found by every process the same way: the worker, the
controller, the web (``kiln web`` and gunicorn as in the Procfile) and ``kiln run``. A module
that is not there is one line and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.acceptance.test_deploy import USER_MODULE
from tests.conftest import ROOT, wait_for
from tests.taskinstance_helpers import free_port

VENV_BIN = Path(sys.executable).parent
KILN = str(VENV_BIN / "kiln")


def user_env(base: dict[str, str], imports: str = "salesflow") -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in ("PYTHONPATH", "KILN_HANDLER_MODULES")}
    env["KILN_IMPORTS"] = imports
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"
    return env


@pytest.mark.slow
def test_every_process_finds_the_users_module_in_its_working_directory(cluster, tmp_path):
    (tmp_path / "salesflow.py").write_text(USER_MODULE)
    env = user_env(cluster.env)
    procs = []

    def start(*args: str) -> None:
        log = (tmp_path / f"{len(procs)}.log").open("wb")
        procs.append(
            subprocess.Popen(
                args,
                cwd=tmp_path,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        )

    dev_port, gunicorn_port = free_port(), free_port()
    try:
        start(KILN, "worker", "--threads", "2")
        start(KILN, "controller")
        start(KILN, "web", "--port", str(dev_port))
        start(
            str(VENV_BIN / "gunicorn"), "--workers", "1", "--bind",
            f"127.0.0.1:{gunicorn_port}", "kiln.web.app:create_app()",
        )  # fmt: skip
        for port in (dev_port, gunicorn_port):
            # "total" is a name only @task in salesflow registers: the web must have imported it.
            submitted = wait_for(
                lambda port=port: _submit(
                    port,
                    {
                        "name": "w",
                        "tasks": [{"name": "T", "handler": "total", "params": {"items": [1, 2]}}],
                    },
                ),  # fmt: skip
                timeout=60,
                what=f"the web on {port} to accept a run of salesflow's handler",
            )
            assert submitted.status_code == 201, submitted.text
        ran = subprocess.run(
            [KILN, "run", "salesflow:workflow", "--json"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        logs = "".join(p.read_text() for p in sorted(tmp_path.glob("*.log")))
        assert ran.returncode == 0, ran.stdout + ran.stderr + logs
        assert json.loads(ran.stdout)["tasks"][0]["result"] == 6
        assert all(p.poll() is None for p in procs), logs
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait(timeout=20)
    assert "ModuleNotFoundError" not in logs


def _submit(port: int, definition: dict) -> requests.Response | None:
    try:
        return requests.post(f"http://127.0.0.1:{port}/workflows", json=definition, timeout=5)
    except requests.ConnectionError:
        return None


MISSING = "error: KILN_IMPORTS names 'salesflow', but no module 'salesflow' is in the working "


@pytest.mark.parametrize(
    "args",
    [
        ["worker"],
        ["controller"],
        ["web"],
        ["run", "salesflow:workflow"],
        ["db", "upgrade"],
    ],
    ids=lambda args: " ".join(args),
)
def test_a_missing_user_module_is_one_line_and_a_nonzero_exit(tmp_path, args):
    env = user_env(os.environ)
    env["KILN_BROKER_URL"] = "redis://127.0.0.1:6379/0"  # `kiln worker` needs one to start
    done = subprocess.run(
        [KILN, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.startswith(MISSING) and f"({tmp_path})" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_module_that_imports_something_missing_names_both_in_one_line(tmp_path):
    (tmp_path / "salesflow.py").write_text("import salesflow_helpers\n")
    done = subprocess.run(
        [KILN, "worker"], cwd=tmp_path, env=user_env(os.environ), capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: KILN_IMPORTS names 'salesflow', which cannot be imported: "
        "No module named 'salesflow_helpers'"
    )


def test_honcho_with_a_missing_module_stops_with_one_line_per_process(tmp_path):
    shutil.copy(ROOT / "Procfile", tmp_path / "Procfile")
    env = user_env(os.environ)
    env["KILN_BROKER_URL"] = "redis://127.0.0.1:6379/0"
    done = subprocess.run(
        [str(VENV_BIN / "honcho"), "start"], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "Traceback" not in done.stdout
    assert MISSING.removeprefix("error: ") in done.stdout
