"""Issue 12, defect 3, on the embedded default: ``kiln run file.json`` naming a function in the
user's own module runs it only when ``KILN_IMPORTS`` names that module, and says so."""

from __future__ import annotations

import json
import textwrap

from tests.acceptance.test_cli import kiln


def test_kiln_run_says_kiln_imports_must_name_the_module_of_a_handler(tmp_path):
    (tmp_path / "myflow.py").write_text(
        textwrap.dedent("""
            def double(x):
                return 2 * x
        """)
    )
    path = tmp_path / "wf.json"
    path.write_text(
        json.dumps(
            {"name": "w", "tasks": [{"name": "A", "handler": "myflow:double", "params": {"x": 21}}]}
        )  # fmt: skip
    )
    refused = kiln("run", str(path), cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert refused.returncode == 2, refused.stdout + refused.stderr
    message = " ".join(refused.stderr.split())  # rich wraps long lines
    assert "add 'myflow' to KILN_IMPORTS" in message
    assert "Traceback" not in refused.stderr
    env = {"PYTHONPATH": str(tmp_path), "KILN_IMPORTS": "myflow"}
    ran = kiln("run", str(path), "--json", cwd=tmp_path, env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert json.loads(ran.stdout)["tasks"][0]["result"] == 42
