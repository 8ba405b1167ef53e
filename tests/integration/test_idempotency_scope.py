"""Idempotency keys are scoped per route and bound to the request they were first used with
(issue 12, defect 5): the same key with the same request replays, with another request on the
same route it is refused with 422 ``idempotency_key_reused``, on another route it is another
key. On PostgreSQL and SQLite, through the real Flask app."""

from __future__ import annotations

import threading

import pytest

import tests.handlers  # noqa: F401 - registers the handlers the definitions name
from kiln.core.errors import IdempotencyKeyReused
from kiln.web.app import create_app

HANDLER = "tests.integration.test_api_http:shout"
DEFINITION = {"name": "w", "tasks": [{"name": "a", "handler": "noop"}]}


@pytest.fixture
def client(kiln, monkeypatch):
    for name in ("KILN_API_TOKEN", "KILN_API_TOKENS", "KILN_METRICS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return create_app(kiln).test_client()


def new_pipeline(client) -> int:
    ctx = client.post("/contexts", json={"name": "ctx", "shards": [[1], [2]]}).get_json()
    r = client.post(
        "/pipelines",
        json={"context_id": ctx["id"], "pipeline_name": "p", "model_config": {"handler": HANDLER}},
    )
    assert r.status_code == 201, r.get_json()
    return r.get_json()["id"]


def post(client, url, key, body=None):
    return client.post(url, json=body, headers={"Idempotency-Key": key})


def operations(client, **query):
    return client.get("/dispatcher/all-operations", query_string=query).get_json()["operations"]


def test_a_delete_with_the_key_of_an_earlier_stop_is_recorded_not_answered_with_the_stop(client):
    two, three = new_pipeline(client), new_pipeline(client)
    stop = post(client, "/dispatcher/stop-pipeline", "K", {"pipeline_id": two})
    assert stop.status_code == 200
    delete = post(client, "/dispatcher/delete-pipeline", "K", {"pipeline_id": three})
    assert delete.status_code == 200, delete.get_json()
    assert delete.get_json()["ic_id"] != stop.get_json()["ic_id"]
    recorded = operations(client, operation="delete")
    assert [(o["ic_id"], o["pipeline_id"]) for o in recorded] == [
        (delete.get_json()["ic_id"], three)
    ]
    # A retry of either request still gets its own original answer.
    assert post(client, "/dispatcher/stop-pipeline", "K", {"pipeline_id": two}).get_json() == (
        stop.get_json()
    )
    again = post(client, "/dispatcher/delete-pipeline", "K", {"pipeline_id": three})
    assert again.get_json()["ic_id"] == delete.get_json()["ic_id"]
    assert len(operations(client)) == 2


def test_a_key_reused_with_another_body_on_the_same_route_is_refused_with_422(client):
    two, three = new_pipeline(client), new_pipeline(client)
    first = post(client, "/dispatcher/delete-pipeline", "K", {"pipeline_id": two})
    assert first.status_code == 200
    reused = post(client, "/dispatcher/delete-pipeline", "K", {"pipeline_id": three})
    assert reused.status_code == 422
    assert reused.get_json()["error"] == "idempotency_key_reused"
    assert reused.get_json()["details"]["route"] == "POST /dispatcher/delete-pipeline"
    assert [o["pipeline_id"] for o in operations(client)] == [two]


def test_a_workflow_posted_again_with_its_key_replays_and_with_another_body_is_refused(client):
    first = post(client, "/workflows", "W", DEFINITION)
    assert first.status_code == 201
    # Key order and whitespace are not part of the request.
    replay = client.post(
        "/workflows",
        data='{"tasks": [{"handler": "noop", "name": "a"}],   "name": "w"}',
        content_type="application/json",
        headers={"Idempotency-Key": "W"},
    )
    assert replay.status_code == 200 and replay.get_json()["id"] == first.get_json()["id"]
    other = post(client, "/workflows", "W", {**DEFINITION, "name": "other"})
    assert other.status_code == 422 and other.get_json()["error"] == "idempotency_key_reused"
    listed = client.get("/workflows").get_json()["workflows"]
    assert [w["id"] for w in listed] == [first.get_json()["id"]]


def test_a_cancel_key_is_bound_to_its_workflow_and_independent_of_other_routes(client):
    one = post(client, "/workflows", "K", DEFINITION).get_json()["id"]
    two = client.post("/workflows", json=DEFINITION).get_json()["id"]
    cancel = post(client, f"/workflows/{one}/cancel", "K")
    assert cancel.status_code == 200
    assert post(client, f"/workflows/{one}/cancel", "K").get_json() == cancel.get_json()
    refused = post(client, f"/workflows/{two}/cancel", "K")
    assert refused.status_code == 422 and refused.get_json()["error"] == "idempotency_key_reused"
    pause = post(client, f"/workflows/{one}/pause", "K")
    assert pause.status_code == 200 and pause.get_json()["ic_id"] != cancel.get_json()["ic_id"]
    kinds = sorted((o["operation"], o["workflow_id"]) for o in operations(client))
    assert kinds == [("cancel", one), ("pause", one)]


def test_the_python_api_scopes_a_plain_key_and_checks_the_definition(kiln):
    first = kiln.submit(DEFINITION, idempotency_key="py")
    assert kiln.submit(dict(DEFINITION), idempotency_key="py") == first
    with pytest.raises(IdempotencyKeyReused):
        kiln.submit({**DEFINITION, "name": "changed"}, idempotency_key="py")


def test_concurrent_identical_requests_with_one_key_make_one_run(client):
    results: list[tuple[int, int]] = []
    start = threading.Barrier(6)

    def submit() -> None:
        start.wait()
        r = post(client, "/workflows", "race", DEFINITION)
        results.append((r.status_code, r.get_json()["id"]))

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(code for code, _ in results) == [200] * 5 + [201]
    assert len({run for _, run in results}) == 1
    assert len(client.get("/workflows").get_json()["workflows"]) == 1


def test_a_key_stored_before_migration_0008_still_replays_on_its_route(database_url):
    import sqlalchemy as sa
    from alembic import command

    from kiln.app.runtime import Kiln
    from kiln.core.config import Settings
    from tests.integration.test_migrations import alembic_config

    kiln = Kiln(Settings(database_url=database_url), pool_size=1)
    try:
        with kiln.engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0007")
            old = conn.execute(
                sa.text(
                    "INSERT INTO workflows (name, status, on_error, priority, definition, "
                    "idempotency_key, created_at) VALUES ('w', 'pending', 'stop', 0, '{}', "
                    "'old', CURRENT_TIMESTAMP) RETURNING id"
                )
            ).scalar_one()
        kiln.upgrade()
        assert kiln.submit(DEFINITION, idempotency_key="old") == old
    finally:
        kiln.close()
