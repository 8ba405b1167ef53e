"""Signals over HTTP against the real app on PostgreSQL: sending, the replay of a key, and
the errors a client mistake gets (one JSON shape, never a 500)."""

from __future__ import annotations

import pytest

from kiln.core.builder import Workflow
from kiln.web.app import create_app

ERROR_KEYS = {"error", "message", "details"}


@pytest.fixture
def client(pg_kiln, monkeypatch):
    monkeypatch.delenv("KILN_API_TOKEN", raising=False)
    return create_app(pg_kiln).test_client()


def _waiting_run(pg_kiln) -> int:
    wf = Workflow("approval")
    wf.add_signal("Approve", signal="approve")
    return pg_kiln.submit(wf)


def test_a_signal_is_sent_once_per_idempotency_key_and_listed(client, pg_kiln):
    run_id = _waiting_run(pg_kiln)
    headers = {"Idempotency-Key": "approval-1"}
    r = client.post(
        f"/workflows/{run_id}/signals/approve", json={"approved": True}, headers=headers
    )
    assert r.status_code == 201, r.get_json()
    sent = r.get_json()
    assert sent["name"] == "approve" and sent["key"] == "approval-1" and not sent["duplicate"]
    again = client.post(
        f"/workflows/{run_id}/signals/approve", json={"approved": False}, headers=headers
    )
    assert again.status_code == 200 and again.get_json()["duplicate"] is True
    listed = client.get(f"/workflows/{run_id}/signals").get_json()["signals"]
    assert [(s["key"], s["payload"]) for s in listed] == [("approval-1", {"approved": True})]


def test_a_signal_to_an_unknown_run_is_404_and_a_bad_name_is_422(client, pg_kiln):
    r = client.post("/workflows/424242/signals/approve", json={})
    assert r.status_code == 404 and set(r.get_json()) == ERROR_KEYS
    run_id = _waiting_run(pg_kiln)
    r = client.post(f"/workflows/{run_id}/signals/not%20ok", json={})
    assert r.status_code == 422 and r.get_json()["details"]["field"] == "name"


def test_a_signal_to_a_finished_run_is_409(client, pg_kiln):
    run_id = _waiting_run(pg_kiln)
    pg_kiln.cancel(run_id)
    r = client.post(f"/workflows/{run_id}/signals/approve", json={"approved": True})
    assert r.status_code == 409 and set(r.get_json()) == ERROR_KEYS
    assert "takes no signals" in r.get_json()["message"]


def test_kiln_signal_sends_a_signal_from_the_command_line(pg_kiln, pg_url):
    import os
    import subprocess
    import sys

    run_id = _waiting_run(pg_kiln)
    env = {**os.environ, "KILN_DATABASE_URL": pg_url, "KILN_HANDLER_MODULES": "tests"}
    cmd = [sys.executable, "-m", "kiln.cli.main", "signal", str(run_id), "approve"]
    ok = subprocess.run([*cmd, "--json", '{"approved": true}', "--key", "k"], env=env,
                        capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "kept for run" in ok.stdout
    bad = subprocess.run([*cmd, "--json", "{nope"], env=env, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert bad.returncode != 0 and "--json is not valid JSON" in bad.stderr
    assert "Traceback" not in bad.stderr
    (signal,) = pg_kiln.signals(run_id)
    assert signal["payload"] == {"approved": True} and signal["key"] == "k"


def test_a_signal_with_a_body_that_is_not_json_is_400_and_keeps_nothing(client, pg_kiln):
    run_id = _waiting_run(pg_kiln)
    r = client.post(
        f"/workflows/{run_id}/signals/approve", data="{nope", content_type="application/json"
    )
    assert r.status_code == 400 and set(r.get_json()) == ERROR_KEYS
    assert pg_kiln.signals(run_id) == []


def test_sleep_and_signal_tasks_are_accepted_over_http(client, pg_kiln):
    body = {
        "name": "approval",
        "tasks": [
            {"name": "Cool", "sleep": "PT1S"},
            {"name": "Approve", "signal": "approve", "timeout": 60,
             "on_timeout": {"continue": {"approved": False}}, "depends_on": ["Cool"]},
        ],
    }  # fmt: skip
    r = client.post("/workflows", json=body)
    assert r.status_code == 201, r.get_json()
    bad = client.post("/workflows", json={"name": "x", "tasks": [{"name": "C", "sleep": "P1M"}]})
    assert bad.status_code == 422 and bad.get_json()["details"]["field"] == "tasks[0].sleep"
