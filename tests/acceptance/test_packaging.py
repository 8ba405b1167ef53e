"""Kiln installs one import name, ``kiln``: a user's own ``engine``, ``web`` or ``workers``
module next to their workflows is theirs, and Kiln's processes never import it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

KILN = Path(sys.executable).parent / "kiln"

USER_WORKFLOW = """
from kiln import Workflow, task


@task
def total(items):
    return sum(items)


def workflow():
    wf = Workflow("salesflow")
    wf.add(total, name="Total", params={"items": [1, 2, 3]})
    return wf
"""


def test_user_modules_named_engine_web_and_workers_break_nothing(tmp_path: Path):
    for shadow in ("engine", "web", "workers", "migrations"):
        (tmp_path / f"{shadow}.py").write_text(
            f"raise RuntimeError('the user\\'s own {shadow}.py was imported by Kiln')\n"
        )
    (tmp_path / "salesflow.py").write_text(textwrap.dedent(USER_WORKFLOW))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    env = {**clean, "PYTHONPATH": str(tmp_path), "KILN_IMPORTS": "salesflow"}

    def kiln(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(KILN), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    ran = kiln("run", "salesflow:workflow", "--json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    run = json.loads(ran.stdout)
    assert run["status"] == "succeeded"
    assert run["tasks"][0]["result"] == 6

    shown = kiln("status", str(run["id"]), "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert json.loads(shown.stdout)["status"] == "succeeded"
