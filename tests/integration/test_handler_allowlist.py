"""Issue 12, defect 3: a handler runs only if it is registered with ``@task`` or lives in a
module the deployment allows (``KILN_IMPORTS``, ``KILN_HANDLER_MODULES``); anything else is
422 at submission, nothing is written, and the web process imports nothing a request names.
Rows written before the check are refused by the worker, for good."""

from __future__ import annotations

import dataclasses
import sys
import textwrap

import pytest

import tests.handlers  # noqa: F401 - registers the handlers the definitions name
from kiln.core.builder import Workflow
from kiln.core.states import WORKFLOW_TERMINAL
from kiln.web.app import create_app
from tests.conftest import wait_for

RCE = {"name": "rce", "tasks": [{"name": "a", "handler": "subprocess:getoutput",
                                 "params": "id; hostname"}]}  # fmt: skip


@pytest.fixture
def client(kiln, monkeypatch):
    monkeypatch.delenv("KILN_API_TOKEN", raising=False)
    return create_app(kiln).test_client()


@pytest.fixture
def probe(tmp_path, monkeypatch):
    """A module on the path that leaves a marker file when anything imports it."""
    marker = tmp_path / "imported"
    (tmp_path / "kiln_probe_module.py").write_text(
        textwrap.dedent(f"""
            import pathlib
            pathlib.Path({str(marker)!r}).write_text("imported")

            def fn(**params):
                return "ran"
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "kiln_probe_module", raising=False)
    return marker


def test_a_workflow_naming_subprocess_getoutput_is_refused_with_422_and_nothing_written(client):
    r = client.post("/workflows", json=RCE)
    assert r.status_code == 422, r.get_json()
    body = r.get_json()
    assert body["error"] == "handler_not_allowed"
    assert "KILN_IMPORTS" in body["message"] and "'subprocess'" in body["message"]
    assert client.get("/workflows").get_json() == {"workflows": []}


def test_a_function_an_allowed_module_imported_from_elsewhere_is_not_a_handler(client):
    # tests.handlers is allowed, and holds `os` and `time` among its names.
    for handler in ("tests.handlers:os.system", "tests.handlers:time.sleep",
                    "tests.handlers:__builtins__"):  # fmt: skip
        definition = {"name": "x", "tasks": [{"name": "a", "handler": handler, "params": "id"}]}
        r = client.post("/workflows", json=definition)
        assert r.status_code == 422, (handler, r.get_json())
    assert client.get("/workflows").get_json() == {"workflows": []}


def test_the_web_process_never_imports_a_module_a_request_names(kiln, client, probe):
    named = {"name": "p", "tasks": [{"name": "a", "handler": "kiln_probe_module:fn"}]}
    assert client.post("/workflows", json=named).status_code == 422
    kiln.settings = dataclasses.replace(
        kiln.settings, handler_modules=(*kiln.settings.handler_modules, "kiln_probe_module")
    )
    # Allowed now: accepted by name, still not imported (the worker imports it).
    assert client.post("/workflows", json=named).status_code == 201
    assert not probe.exists() and "kiln_probe_module" not in sys.modules


def test_a_python_pipeline_outside_the_allowed_modules_is_refused(client):
    ctx = client.post("/contexts", json={"name": "c", "shards": [["x"]]}).get_json()
    body = {"context_id": ctx["id"], "pipeline_name": "p", "pipeline_type": "python",
            "model_config": {"handler": "subprocess:getoutput"}}  # fmt: skip
    r = client.post("/pipelines", json=body)
    assert r.status_code == 422 and r.get_json()["error"] == "handler_not_allowed"
    clone = client.post("/dispatcher/clone-pipeline", json=body)
    assert clone.status_code == 422, clone.get_json()
    assert client.get("/pipelines").get_json() == {"pipelines": []}


def test_the_worker_fails_a_stored_task_outside_the_allowlist_for_good(kiln, embedded, tmp_path):
    marker = tmp_path / "pwned"
    # As a row written before the check existed: stored without checking its handler.
    wf_id = kiln.submit(
        {"name": "old", "tasks": [{"name": "a", "handler": "subprocess:getoutput",
                                   "params": f"touch {marker}", "max_attempts": 3}]},
        check_handlers=False,
    )  # fmt: skip
    run = wait_for(lambda: (r := kiln.workflow(wf_id))["status"] in WORKFLOW_TERMINAL and r)
    (task,) = run["tasks"]
    assert (run["status"], task["status"], task["attempts"]) == ("failed", "failed", 1)
    assert "not allowed" in task["error"] and "KILN_IMPORTS" in task["error"]
    assert not marker.exists()


def test_registered_handlers_and_functions_in_allowed_modules_still_run(kiln, embedded):
    wf = Workflow("allowed")
    wf.add("add", name="Registered", params={"a": 1, "b": 2})
    wf.add("tests.handlers:add", name="Registered by path", params={"a": 2, "b": 2})
    wf.add("tests.handlers:not_registered", name="Allowed module", params={"x": 4})
    wf.add("kiln.workers.demo:generate", name="Built in", params={"count": 2})
    wf_id = kiln.submit(wf)
    run = wait_for(lambda: (r := kiln.workflow(wf_id))["status"] in WORKFLOW_TERMINAL and r)
    assert run["status"] == "succeeded", run
    assert [t["result"] for t in run["tasks"]] == [3, 4, 8, {"numbers": [1, 2], "chunks": [[1, 2]]}]
