"""Issue 12, defect 4: secrets are stored intact (workers need them) but every response, page,
CLI output and log line shows them as ``***``: context config, operations' request_data,
pipeline configuration, workflow task params, and credentials inside URLs."""

from __future__ import annotations

import io
import json
import logging

import pytest
from rich.console import Console

import tests.handlers  # noqa: F401 - registers the handlers the definitions name
from kiln.app.logs import HANDLER_NAME, setup_logging
from kiln.cli.display import as_json, run_table
from kiln.web.app import create_app

SECRETS = ("sk-ctx-1", "pw-ctx-2", "auth-3", "cred-4", "bearer-5", "urlkey-6", "sk-wf-7")


@pytest.fixture
def client(pg_kiln, monkeypatch):
    monkeypatch.delenv("KILN_API_TOKEN", raising=False)
    return create_app(pg_kiln).test_client()


def assert_no_secret(text: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"{leaked} shown in {text[:2000]}"


def test_a_context_config_is_shown_with_its_secrets_as_stars(client, pg_kiln):
    config = {"api_key": "sk-ctx-1", "password": "pw-ctx-2", "auth": {"user": "auth-3"},
              "db": "postgresql://kiln:urlkey-6@db/kiln", "lang": "en"}  # fmt: skip
    created = client.post("/contexts", json={"name": "c", "config": config, "shards": [[1]]})
    assert created.status_code == 201
    shown = client.get(f"/contexts/{created.get_json()['id']}")
    for r in (created, shown):
        assert_no_secret(r.get_data(as_text=True))
        assert r.get_json()["config"] == {
            "api_key": "***", "password": "***", "auth": "***",
            "db": "postgresql://kiln:***@db/kiln", "lang": "en",
        }  # fmt: skip
    assert pg_kiln.pipelines.context(created.get_json()["id"])["config"] == config


def test_operations_and_pipelines_hide_auth_credentials_bearer_headers_and_url_keys(client):
    ctx = client.post("/contexts", json={"name": "c", "shards": [["q"]]}).get_json()
    config = {
        "context_id": ctx["id"],
        "pipeline_name": "p",
        "pipeline_type": "openai",
        "model_config": {"model": "m", "max_tokens": 8},
        "client_config": {"base_url": "https://user:urlkey-6@llm.example.org/v1",
                          "auth": "auth-3", "credentials": {"id": "cred-4"},
                          "X-Api-Bearer": "bearer-5"},
    }  # fmt: skip
    pipeline = client.post("/pipelines", json=config)
    assert pipeline.status_code == 201, pipeline.get_json()
    clone = client.post("/dispatcher/clone-pipeline", json=config).get_json()
    answers = [
        pipeline,
        client.get(f"/pipelines/{pipeline.get_json()['id']}"),
        client.get("/pipelines"),
        client.get(f"/dispatcher/operation-status/{clone['ic_id']}"),
        client.get("/dispatcher/all-operations"),
        client.get("/ui/pipelines"),
        client.get("/ui/operations"),
    ]
    for r in answers:
        assert r.status_code == 200 or r.status_code == 201
        assert_no_secret(r.get_data(as_text=True))
    shown = answers[3].get_json()["request_data"]
    assert shown["client_config"]["base_url"] == "https://user:***@llm.example.org/v1"
    assert shown["model_config"] == {"model": "m", "max_tokens": 8}  # counts stay visible


def test_workflow_params_are_shown_as_stars_by_the_api_the_dashboard_and_the_cli(client, pg_kiln):
    params = {"api_key": "sk-wf-7", "endpoint": "https://u:urlkey-6@h.example.org", "n": 1}
    r = client.post("/workflows", json={"name": "w", "tasks": [
        {"name": "A", "handler": "echo", "params": params}]})  # fmt: skip
    assert r.status_code == 201, r.get_json()
    wf_id = r.get_json()["id"]
    api = client.get(f"/workflows/{wf_id}")
    assert api.get_json()["tasks"][0]["params"] == {
        "api_key": "***", "endpoint": "https://u:***@h.example.org", "n": 1
    }  # fmt: skip
    page = client.get(f"/ui/runs/{wf_id}")
    assert page.status_code == 200
    run = pg_kiln.workflow(wf_id)
    console = Console(file=io.StringIO(), width=200)
    console.print(run_table({**run, "tasks": [{**run["tasks"][0], "result": params}]}))
    for text in (api.get_data(as_text=True), page.get_data(as_text=True), as_json(run),
                 console.file.getvalue()):  # fmt: skip
        assert_no_secret(text)
    assert run["tasks"][0]["params"] == params  # stored intact for the worker


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_log_lines_show_no_secrets(monkeypatch, fmt):
    monkeypatch.setenv("KILN_LOG_FORMAT", fmt)
    monkeypatch.setenv("KILN_LOG_LEVEL", "INFO")
    buffer = io.StringIO()
    root = logging.getLogger()
    level = root.level
    setup_logging("test", stream=buffer)
    try:
        log = logging.getLogger("kiln.test")
        log.warning("calling %s with %s", "https://u:urlkey-6@h/v1", {"api_key": "sk-ctx-1"})
        log.info("sending Authorization: Bearer bearer-5", extra={"credentials": "cred-4"})
        log.info("%(what)s password=pw-ctx-2", {"what": "login with"})
        try:
            raise RuntimeError("connect to https://x:auth-3@db failed")
        except RuntimeError:
            log.exception("failed")
    finally:
        for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
            root.removeHandler(handler)
        root.setLevel(level)
    text = buffer.getvalue()
    assert_no_secret(text)
    assert "https://u:***@h/v1" in text and "login with password=***" in text
    if fmt == "json":
        lines = [json.loads(line) for line in text.splitlines()]
        assert lines[1]["credentials"] == "***"
        assert "RuntimeError" in lines[3]["exception"]


def test_an_error_message_quoting_a_request_shows_no_password(client):
    r = client.post("/contexts", json={"name": "c", "source": "ftp://u:urlkey-6@h/rows.json",
                                       "num_shards": 1})  # fmt: skip
    assert r.status_code == 422
    assert_no_secret(r.get_data(as_text=True))
    assert "ftp://u:***@h/rows.json" in r.get_json()["message"]
