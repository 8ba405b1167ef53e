"""A task's retry policy and full tracebacks over HTTP: the API and the run page."""

from __future__ import annotations

import pytest

from kiln.core.states import WORKFLOW_TERMINAL
from kiln.web.app import create_app
from tests.conftest import wait_for

SECRET_URL = "https://bob:hunter2@db.example/x"


@pytest.fixture
def client(kiln, monkeypatch):
    monkeypatch.delenv("KILN_API_TOKEN", raising=False)
    return create_app(kiln).test_client()


def test_an_invalid_retry_policy_is_422_naming_the_field(client):
    task = {"name": "a", "handler": "noop", "retry": {"jitter": 2}}
    r = client.post("/workflows", json={"name": "w", "tasks": [task]})
    assert r.status_code == 422
    assert r.get_json()["details"]["field"] == "tasks[0].retry.jitter"


def test_the_api_and_run_page_show_each_attempts_whole_traceback_redacted(client, embedded):
    task = {
        "name": "Broken",
        "handler": "tests.retry_handlers:flaky",
        "params": {"error": "value", "secret_url": SECRET_URL},
        "retry": {"max_attempts": 2, "backoff_s": 0.01},
    }
    r = client.post("/workflows", json={"name": "w", "tasks": [task]})
    assert r.status_code == 201, r.get_json()
    wf_id = r.get_json()["id"]
    run = wait_for(
        lambda: (
            (b := client.get(f"/workflows/{wf_id}").get_json())["status"] in WORKFLOW_TERMINAL and b
        ),
        what="the run to fail",
    )
    (shown,) = run["tasks"]
    assert shown["retry"] == {"backoff_s": 0.01} and shown["max_attempts"] == 2
    errors = [a["error"] for a in shown["attempt_history"]]
    assert len(errors) == 2
    for error in errors:
        assert "Traceback (most recent call last):" in error and "in _deeper" in error
        assert "hunter2" not in error
    page = client.get(f"/ui/runs/{wf_id}").get_data(as_text=True)
    assert "Last errors" in page and "in _deeper" in page and "hunter2" not in page
