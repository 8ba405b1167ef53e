"""`kiln status --traceback` shows a failed task's whole traceback, as a user runs it."""

from __future__ import annotations

import json

from tests.acceptance.test_cli import kiln


def test_kiln_status_with_traceback_prints_the_failed_handlers_frames_redacted(tmp_path):
    path = tmp_path / "wf.json"
    secret = "https://bob:hunter2@db.example/x"
    task = {
        "name": "Broken",
        "handler": "tests.retry_handlers:flaky",
        "params": {"error": "value", "secret_url": secret},
        "retry": {"max_attempts": 1},
    }
    path.write_text(json.dumps({"name": "broken", "tasks": [task]}))
    env = {"KILN_IMPORTS": "tests.retry_handlers"}
    failed = kiln("run", str(path), "--json", cwd=tmp_path, env=env)
    assert failed.returncode == 1, failed.stderr
    run_id = json.loads(failed.stdout)["id"]
    plain = kiln("status", str(run_id), cwd=tmp_path, env=env)
    assert plain.returncode == 0 and "Traceback" not in plain.stdout
    shown = kiln("status", str(run_id), "--traceback", cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "Traceback (most recent call last):" in shown.stdout
    assert "in _deeper" in shown.stdout and "ValueError: attempt 1 failed" in shown.stdout
    assert "hunter2" not in shown.stdout
