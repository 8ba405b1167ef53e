"""Hostile sizes over HTTP, on real PostgreSQL: deep JSON, huge numbers, too many tasks or
shards get a 413 or 422 in the one error shape (never a 500), and a 10,000-shard pipeline
is created (and cloned by a controller) without quadratic memory."""

from __future__ import annotations

import dataclasses
import json
import tracemalloc

import pytest

from kiln.app.runtime import Kiln
from kiln.core.errors import LimitExceeded
from kiln.web.app import create_app

ERROR_KEYS = {"error", "message", "details"}
JSON = {"Content-Type": "application/json"}
VLLM = {"pipeline_type": "vllm", "model_config": {"model": "m"}}


@pytest.fixture
def client(pg_kiln, monkeypatch):
    monkeypatch.delenv("KILN_API_TOKEN", raising=False)
    return create_app(pg_kiln).test_client()


@pytest.fixture
def small_limits(pg_kiln):
    """A Kiln on the same database allowing 5 tasks, 3 shards and JSON 8 levels deep."""
    settings = dataclasses.replace(
        pg_kiln.settings, max_workflow_tasks=5, max_context_shards=3, max_json_depth=8
    )
    kiln = Kiln(settings, pool_size=2)
    yield kiln
    kiln.close()


def post_raw(client, path: str, text: str):
    return client.post(path, data=text, headers=JSON)


def error_of(response, status: int) -> str:
    payload = response.get_json()
    assert response.status_code == status, payload
    assert set(payload) == ERROR_KEYS
    return payload["error"]


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_json_nested_100000_deep_is_a_413_and_not_a_500(client):
    for path in ("/workflows", "/contexts", "/pipelines", "/dispatcher/stop-pipeline"):
        r = post_raw(client, path, "[" * 100_000 + "]" * 100_000)
        assert error_of(r, 413) == "limit_exceeded"
        assert "KILN_MAX_JSON_DEPTH" in r.get_json()["message"]


def test_task_params_nested_985_deep_are_a_413_and_not_a_500(client):
    params = '{"a": ' * 984 + "{}" + "}" * 984  # as text: encoding it would recurse here too
    text = f'{{"name": "deep", "tasks": [{{"name": "a", "handler": "h", "params": {params}}}]}}'
    assert error_of(post_raw(client, "/workflows", text), 413) == "limit_exceeded"


def test_a_5000_digit_integer_is_a_422_and_not_a_500(client):
    huge = "9" * 5000
    for path, text in [
        (
            "/workflows",
            f'{{"name": "n", "tasks": [{{"name": "a", "handler": "h", "params": {huge}}}]}}',
        ),
        ("/contexts", f'{{"name": "c", "rows": [1], "num_shards": {huge}}}'),
        ("/dispatcher/stop-pipeline", f'{{"pipeline_id": {huge}}}'),
    ]:
        r = post_raw(client, path, text)
        assert error_of(r, 422) == "invalid_value"
        assert "64-bit range" in r.get_json()["message"]


def test_infinite_and_not_a_number_values_are_a_422(client):
    for number in ("1e999", "NaN", "-Infinity"):
        text = f'{{"name": "n", "tasks": [{{"name": "a", "handler": "h", "params": [{number}]}}]}}'
        assert error_of(post_raw(client, "/workflows", text), 422) == "invalid_value"


def test_a_workflow_over_the_default_10000_tasks_is_a_413(client):
    tasks = [{"name": f"t{i}", "handler": "h"} for i in range(10_001)]
    r = client.post("/workflows", json={"name": "big", "tasks": tasks})
    assert error_of(r, 413) == "limit_exceeded"
    assert r.get_json()["message"] == (
        "at most 10000 tasks are allowed (KILN_MAX_WORKFLOW_TASKS); got 10001"
    )


def test_a_context_over_the_default_10000_shards_is_a_413(client):
    r = client.post("/contexts", json={"name": "amp", "rows": [1], "num_shards": 10_001})
    assert error_of(r, 413) == "limit_exceeded"
    assert "KILN_MAX_CONTEXT_SHARDS" in r.get_json()["message"]


def test_the_limits_are_settings(small_limits, monkeypatch):
    monkeypatch.delenv("KILN_API_TOKEN", raising=False)
    client = create_app(small_limits).test_client()
    six = [{"name": f"t{i}", "handler": "tests.handlers:noop"} for i in range(6)]
    assert error_of(client.post("/workflows", json={"name": "w", "tasks": six}), 413)
    shards = {"name": "c", "shards": [[1], [2], [3], [4]]}
    assert error_of(client.post("/contexts", json=shards), 413) == "limit_exceeded"
    deep = {"name": "w", "tasks": [{"name": "a", "handler": "h", "params": nested(8)}]}
    assert error_of(client.post("/workflows", json=deep), 413) == "limit_exceeded"
    # The Python API applies the same limits.
    with pytest.raises(LimitExceeded):
        small_limits.submit({"name": "w", "tasks": six}, check_handlers=False)
    with pytest.raises(LimitExceeded):
        small_limits.submit(
            {"name": "w", "tasks": [{"name": "a", "handler": "h", "params": nested(985)}]},
            check_handlers=False,
        )


def test_a_10000_shard_pipeline_and_its_clone_are_created_without_quadratic_memory(client, pg_kiln):
    # Each shard is a chained task; validating that chain once took 2.36 GB in the web
    # process, and the same again in the controller for a clone.
    r = client.post("/contexts", json={"name": "amp", "rows": [1], "num_shards": 10_000})
    assert r.status_code == 201, r.get_json()
    body = {"context_id": r.get_json()["id"], "pipeline_name": "p", **VLLM}
    tracemalloc.start()
    try:
        r = client.post("/pipelines", data=json.dumps(body), headers=JSON)
        created_peak = tracemalloc.get_traced_memory()[1]
        assert r.status_code == 201, r.get_json()
        parent = r.get_json()
        clone = client.post(
            "/dispatcher/clone-pipeline",
            json={"parent_pipeline_id": parent["id"], "pipeline_name": "child"},
        )
        assert clone.status_code == 200, clone.get_json()
        tracemalloc.reset_peak()
        applied = pg_kiln.operations.apply_next("test")
        cloned_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert applied is not None and applied["status"] == "completed", applied
    assert parent["num_shards"] == 10_000
    child = pg_kiln.pipelines.get(applied["result"]["pipeline_id"], shards=False)
    assert child["progress"] == "0/10000"
    assert created_peak < 100 * 2**20 and cloned_peak < 100 * 2**20, (created_peak, cloned_peak)
