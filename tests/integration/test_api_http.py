"""The HTTP API's contract, through the real Flask app on real PostgreSQL: every documented
endpoint answers with its documented fields, one error shape, limits, auth, secrets."""

from __future__ import annotations

import json

import pytest

import tests.handlers  # noqa: F401 - registers the handlers the definitions name
from kiln.web.app import create_app

PYTHON_HANDLER = "tests.integration.test_api_http:shout"
ERROR_KEYS = {"error", "message", "details"}


def shout(rows, model_config):
    return [f"{model_config.get('prefix', '')}{str(r).upper()}" for r in rows]


@pytest.fixture
def client(pg_kiln, monkeypatch):
    monkeypatch.delenv("KILN_API_TOKEN", raising=False)
    return create_app(pg_kiln).test_client()


def make_context(client, shards=((1, 2), (3,), (4, 5, 6))):
    r = client.post("/contexts", json={"name": "ctx", "shards": [list(s) for s in shards]})
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def make_pipeline(client, context_id, **overrides):
    body = {
        "context_id": context_id,
        "pipeline_name": "p",
        "pipeline_type": "python",
        "model_config": {"handler": PYTHON_HANDLER},
        **overrides,
    }
    r = client.post("/pipelines", json=body)
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def test_the_openapi_document_lists_every_endpoint(client):
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    paths = set(spec["paths"])
    assert {
        "/workflows",
        "/workflows/{workflow_id}",
        "/workflows/{workflow_id}/cancel",
        "/workflows/{workflow_id}/pause",
        "/workflows/{workflow_id}/resume",
        "/contexts",
        "/contexts/{context_id}",
        "/pipelines",
        "/pipelines/{pipeline_id}",
        "/dispatcher/health-check",
        "/dispatcher/stop-pipeline",
        "/dispatcher/resume-pipeline",
        "/dispatcher/delete-pipeline",
        "/dispatcher/clone-pipeline",
        "/dispatcher/operation-status/{ic_id}",
        "/dispatcher/all-operations",
    } <= paths
    assert set(spec["components"]["schemas"]["Error"]["properties"]) == ERROR_KEYS


def test_a_missing_field_is_400_and_names_the_field(client):
    r = client.post("/dispatcher/stop-pipeline", json={})
    assert r.status_code == 400
    assert r.get_json()["error"] == "missing_field"
    assert r.get_json()["details"]["field"] == "pipeline_id"
    assert "pipeline_id" in r.get_json()["message"]


def test_an_unknown_field_is_422_and_names_the_field(client):
    r = client.post("/dispatcher/stop-pipeline", json={"pipeline_id": 1, "pipline": 2})
    assert r.status_code == 422
    assert r.get_json() == {
        "error": "validation_error",
        "message": "unknown field 'pipline'",
        "details": {"field": "pipline", "fields": {"pipline": ["Unknown field."]}},
    }
    r = client.post("/workflows", json={"name": "w", "tasks": [{"name": "a", "handlr": "x"}]})
    assert r.status_code == 422 and r.get_json()["details"]["field"] == "tasks[0].handlr"


def test_errors_share_one_shape_and_never_carry_a_traceback(client):
    answers = [
        client.post("/dispatcher/stop-pipeline", json={"pipeline_id": 404}),  # 404
        client.post("/dispatcher/stop-pipeline", data="{nope", content_type="application/json"),
        client.post("/dispatcher/stop-pipeline", json={"pipeline_id": "1"}),  # wrong type
        client.get("/no/such/url"),
        client.delete("/pipelines"),  # 405
        client.get("/dispatcher/operation-status/" + "f" * 32),
        client.get("/dispatcher/all-operations?limit=0"),
        client.post("/contexts", json={"name": "nul\u0000", "shards": [[1]]}),
        client.post("/contexts", json={"name": "x", "rows": [1], "shards": [[1]]}),
    ]
    statuses = [r.status_code for r in answers]
    assert statuses == [404, 400, 422, 404, 405, 404, 422, 422, 422]
    for r in answers:
        assert set(r.get_json()) == ERROR_KEYS, r.get_json()
        assert "Traceback" not in r.get_data(as_text=True)


def test_a_body_over_the_limit_is_refused_with_413(pg_kiln, monkeypatch):
    monkeypatch.setenv("KILN_MAX_BODY_BYTES", "1000")
    client = create_app(pg_kiln).test_client()
    r = client.post("/contexts", json={"name": "big", "rows": ["x" * 2000], "num_shards": 1})
    assert r.status_code == 413
    assert r.get_json()["error"] == "request_entity_too_large"


def test_every_endpoint_but_the_open_ones_needs_the_bearer_token_when_it_is_set(
    pg_kiln, monkeypatch
):
    monkeypatch.setenv("KILN_API_TOKEN", "s3cret")
    client = create_app(pg_kiln).test_client()
    body = {"name": "c", "shards": [[1]]}
    r = client.post("/contexts", json=body)
    assert r.status_code == 401 and r.get_json()["error"] == "unauthorized"
    assert (
        client.post("/contexts", json=body, headers={"Authorization": "Bearer nope"}).status_code
        == 401
    )
    ok = client.post("/contexts", json=body, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 201
    url = f"/contexts/{ok.get_json()['id']}"
    assert client.get(url).status_code == 401  # reads too (docs/security.md)
    assert client.get(url, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/dispatcher/health-check").status_code == 200


def test_a_workflow_submitted_twice_with_one_idempotency_key_is_one_run(client):
    definition = {"name": "w", "tasks": [{"name": "a", "handler": "noop"}]}
    first = client.post("/workflows", json=definition, headers={"Idempotency-Key": "k1"})
    again = client.post("/workflows", json=definition, headers={"Idempotency-Key": "k1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.get_json()["id"] == again.get_json()["id"]
    assert len(client.get("/workflows").get_json()["workflows"]) == 1


def test_an_invalid_definition_is_422_with_the_engines_message_and_writes_nothing(client):
    r = client.post(
        "/workflows",
        json={"name": "w", "tasks": [{"name": "a", "handler": "noop", "depends_on": ["b"]}]},
    )
    assert r.status_code == 422
    assert r.get_json()["error"] == "invalid_definition"
    assert r.get_json()["message"] == "task 'a' depends on unknown task 'b'"
    assert client.get("/workflows").get_json() == {"workflows": []}


def test_a_workflow_run_shows_every_task_with_its_state_and_history(client):
    definition = {
        "name": "pair",
        "tasks": [
            {"name": "a", "handler": "echo", "params": {"v": 1}},
            {"name": "b", "handler": "echo", "depends_on": ["a"], "max_attempts": 2},
        ],
    }
    wf = client.post("/workflows", json=definition).get_json()
    assert set(wf) >= {"id", "name", "status", "created_at", "started_at", "finished_at"}
    run = client.get(f"/workflows/{wf['id']}").get_json()
    assert run["status"] == "pending"
    a, b = run["tasks"]
    assert (a["name"], a["status"], b["status"], b["depends_on"]) == (
        "a",
        "ready",
        "pending",
        ["a"],
    )
    for key in ("attempts", "max_attempts", "params", "result", "error", "attempt_history",
                "started_at", "finished_at", "progress"):  # fmt: skip
        assert key in a
    listed = client.get("/workflows?status=pending&limit=5").get_json()["workflows"]
    assert [w["id"] for w in listed] == [wf["id"]]


def test_contexts_accept_shards_rows_or_a_source(client):
    explicit = make_context(client, shards=[[1, 2], [3]])
    assert (explicit["num_shards"], explicit["num_rows"]) == (2, 3)
    assert [s["num_rows"] for s in explicit["shards"]] == [2, 1]
    split = client.post("/contexts", json={"name": "s", "rows": list(range(7)), "num_shards": 3})
    assert [s["num_rows"] for s in split.get_json()["shards"]] == [3, 2, 2]
    url = "https://data.example.org/rows.jsonl"
    source = client.post("/contexts", json={"name": "f", "source": url, "num_shards": 4}).get_json()
    assert (source["source"], source["num_shards"], source["num_rows"]) == (
        url,
        4,
        None,
    )
    again = client.get(f"/contexts/{split.get_json()['id']}").get_json()
    assert again == split.get_json()
    r = client.post("/contexts", json={"name": "x", "rows": [1]})
    assert r.status_code == 422 and r.get_json()["details"]["field"] == "num_shards"


def test_a_pipeline_shows_its_documented_fields_and_progress(client):
    ctx = make_context(client)
    p = make_pipeline(client, ctx["id"])
    for key in ("id", "pipeline_name", "context_id", "pipeline_type", "status", "workflow_id",
                "model_config", "shards_completed", "current_shard_id", "total_samples_processed",
                "cloned_from", "num_shards", "progress", "shards"):  # fmt: skip
        assert key in p
    assert (p["status"], p["progress"], p["current_shard_id"]) == ("new", "0/3", 0)
    assert [s["shard_index"] for s in p["shards"]] == [0, 1, 2]
    assert [s["status"] for s in p["shards"]] == ["ready", "pending", "pending"]
    listed = client.get(f"/pipelines?context_id={ctx['id']}&status=new").get_json()["pipelines"]
    assert [x["id"] for x in listed] == [p["id"]]
    assert client.get("/pipelines?status=completed").get_json() == {"pipelines": []}


def test_pipeline_configurations_are_checked_per_type(client):
    ctx = make_context(client)
    cases = [
        ({"pipeline_type": "python", "model_config": {}}, "model_config.handler"),
        ({"pipeline_type": "python", "model_config": {"handler": "no.such:fn"}}, "handler"),
        ({"pipeline_type": "vllm", "model_config": {}}, "model_config.model"),
        ({"pipeline_type": "openai", "model_config": {"model": "m"}}, "client_config.base_url"),
        ({"pipeline_type": "tpu", "model_config": {}}, "pipeline_type"),
        ({"model_config": {"handler": PYTHON_HANDLER}, "rpm_limit": 0}, "rpm_limit"),
    ]
    for overrides, field in cases:
        r = client.post(
            "/pipelines", json={"context_id": ctx["id"], "pipeline_name": "p", **overrides}
        )
        assert r.status_code == 422, (overrides, r.get_json())
        assert field in json.dumps(r.get_json()), (field, r.get_json())
    r = client.post("/pipelines", json={"context_id": 999, "pipeline_name": "p",
                                        "model_config": {"handler": PYTHON_HANDLER}})  # fmt: skip
    assert r.status_code == 404 and r.get_json()["error"] == "context_not_found"


def test_secrets_are_stored_but_never_returned(client, pg_kiln):
    ctx = make_context(client)
    secret = "sk-very-secret-123"
    config = {
        "pipeline_type": "openai",
        "model_config": {"model": "gpt-4", "temperature": 0.7},
        "client_config": {"api_key": secret, "base_url": "http://127.0.0.1:1/v1"},
        "rpm_limit": 500,
        "tpm_limit": 90000,
    }
    p = make_pipeline(client, ctx["id"], **config)
    assert p["client_config"] == {"api_key": "***", "base_url": "http://127.0.0.1:1/v1"}
    clone = client.post(
        "/dispatcher/clone-pipeline",
        json={"context_id": ctx["id"], "pipeline_name": "c", **config},
    ).get_json()
    client.post("/dispatcher/clone-pipeline", json={"parent_pipeline_id": p["id"]})
    answers = [
        client.get(f"/pipelines/{p['id']}"),
        client.get("/pipelines"),
        client.get(f"/dispatcher/operation-status/{clone['ic_id']}"),
        client.get("/dispatcher/all-operations"),
    ]
    for r in answers:
        assert r.status_code == 200
        assert secret not in r.get_data(as_text=True)
    stored = pg_kiln.read(
        lambda c: __import__("kiln.store.pipelines").store.pipelines.config_of(c, p["id"])
    )
    assert stored["client_config"]["api_key"] == secret


def test_the_health_checks_answer(client):
    assert client.get("/health").get_json()["status"] == "ok"
    assert client.get("/dispatcher/health-check").get_json() == {"status": "ok", "database": "ok"}
