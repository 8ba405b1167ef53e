"""POST /workflows checks a definition once (the engine's parse_definition) and still answers
each invalid body as the API's schema did: its errors for what it refuses, the engine's for
the rest, one error shape, never a 500 and nothing stored."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

import tests.handlers  # noqa: F401 - registers the handlers the definitions name
from kiln.web.app import create_app

TASK = {"name": "a", "handler": "noop"}


@pytest.fixture
def client(pg_kiln, monkeypatch):
    monkeypatch.delenv("KILN_API_TOKEN", raising=False)
    return create_app(pg_kiln).test_client()


def runs(pg_kiln) -> int:
    return pg_kiln.read(lambda c: c.execute(sa.text("SELECT count(*) FROM workflows")).scalar())


@pytest.mark.parametrize(
    ("body", "status", "answer"),
    [
        (
            {"name": "w", "tasks": [{"name": "a", "model_type": "m", "handler": None}]},
            422,
            {
                "error": "validation_error",
                "message": "tasks[0].handler: Field may not be null.",
                "details": {
                    "field": "tasks[0].handler",
                    "fields": {"tasks[0].handler": ["Field may not be null."]},
                },
            },
        ),
        (
            {},
            400,
            {
                "error": "missing_field",
                "message": "missing required field 'name'",
                "details": {
                    "field": "name",
                    "missing": ["name", "tasks"],
                    "fields": {
                        "name": ["Missing data for required field."],
                        "tasks": ["Missing data for required field."],
                    },
                },
            },
        ),
        (
            [TASK],
            422,
            {
                "error": "validation_error",
                "message": "body: Invalid input type.",
                "details": {"field": "body", "fields": {"body": ["Invalid input type."]}},
            },
        ),
        (
            {"name": "w", "tasks": [{**TASK, "timeout_s": "5"}, {"name": 7}]},
            422,
            {
                "error": "validation_error",
                "message": "tasks[1].name: Not a valid string.",
                "details": {
                    "field": "tasks[1].name",
                    "fields": {"tasks[1].name": ["Not a valid string."]},
                },
            },
        ),
        (
            {"name": "w", "tasks": [{**TASK, "depends_on": ["a"]}]},
            422,
            {
                "error": "invalid_definition",
                "message": "task 'a' depends on itself",
                "details": {"task": "a"},
            },
        ),
        (
            {"name": "w", "tasks": [{**TASK, "timeout_s": "5"}]},  # the schema takes "5"
            422,
            {
                "error": "invalid_definition",
                "message": "task 'a': timeout_s must be a number of seconds above 0 and at "
                "most 604800 (KILN_MAX_TIMEOUT_S)",
                "details": {"field": "tasks[0].timeout_s"},
            },
        ),
    ],
    ids=["null", "empty", "not-an-object", "schema-first", "graph", "engine-only"],
)
def test_an_invalid_definition_gets_the_answer_the_schema_then_the_engine_gave(
    client, pg_kiln, body, status, answer
):
    r = client.post("/workflows", json=body)
    assert (r.status_code, r.get_json()) == (status, answer)
    assert runs(pg_kiln) == 0


def test_a_body_that_is_not_json_is_400_invalid_json_and_one_without_a_body_names_the_fields(
    client, pg_kiln
):
    r = client.post("/workflows", data="{nope", content_type="application/json")
    assert (r.status_code, r.get_json()["error"]) == (400, "invalid_json")
    r = client.post("/workflows")
    assert (r.status_code, r.get_json()["details"]["missing"]) == (400, ["name", "tasks"])
    assert runs(pg_kiln) == 0


def test_a_valid_definition_is_stored_as_the_engine_reads_it(client, pg_kiln):
    body = {"name": " w ", "tasks": [{"name": "a", "sleep": "PT1H"}, {**TASK, "name": "b"}]}
    r = client.post("/workflows", json=body)
    assert r.status_code == 201, r.get_json()
    run = client.get(f"/workflows/{r.get_json()['id']}").get_json()
    assert run["name"] == "w"
    assert [(t["name"], t["handler"]) for t in run["tasks"]] == [
        ("a", "kiln.core.waits:sleep"),
        ("b", "noop"),
    ]


def test_the_openapi_document_still_describes_the_body_of_post_workflows(client):
    operation = client.get("/openapi.json").get_json()["paths"]["/workflows"]["post"]
    body = operation["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/WorkflowDefinition"
    }
    assert "422" in operation["responses"]
