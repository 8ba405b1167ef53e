"""Every number a client sends is bounded: a timeout, attempts, priorities, rate limits, ids.
Out of range is a 422 naming the field, never a 500, and never a value that fails later (issue
12, defect 6: ``"timeout_s": 1e10`` was accepted and every attempt failed with OverflowError)."""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import Any

import pytest

import tests.handlers  # noqa: F401 - registers the handlers the definitions name
from kiln.app.runtime import Kiln
from kiln.core.definitions import DEFAULT_MAX_TIMEOUT_S
from kiln.core.errors import InvalidDefinition, InvalidInstanceRequest
from kiln.store.schema import tasks
from kiln.web.app import create_app
from kiln.workers.timeouts import call_with_timeout
from tests.conftest import wait_for


@pytest.fixture
def client(kiln: Kiln, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("KILN_API_TOKEN", raising=False)
    return create_app(kiln).test_client()


def one_task(**fields: Any) -> dict[str, Any]:
    return {"name": "wf", "tasks": [{"name": "a", "handler": "noop", **fields}]}


def assert_refused(answer: Any, field: str) -> None:
    assert answer.status_code == 422, answer.get_json()
    body = answer.get_json()
    assert set(body) == {"error", "message", "details"}
    assert body["details"]["field"] == field, body


def test_a_timeout_of_1e10_seconds_is_refused_with_a_422_naming_the_field(client):
    assert_refused(client.post("/workflows", json=one_task(timeout_s=1e10)), "tasks[0].timeout_s")


@pytest.mark.parametrize("timeout", [0, -1, DEFAULT_MAX_TIMEOUT_S + 1, 1e308])
def test_a_timeout_outside_zero_to_the_maximum_is_refused(client, timeout):
    assert_refused(
        client.post("/workflows", json=one_task(timeout_s=timeout)), "tasks[0].timeout_s"
    )


def test_the_longest_timeout_is_configurable_and_checked_by_the_engine_too(kiln):
    assert kiln.settings.max_timeout_s == DEFAULT_MAX_TIMEOUT_S  # 7 days
    kiln.submit(one_task(timeout_s=DEFAULT_MAX_TIMEOUT_S))
    short = Kiln(dataclasses.replace(kiln.settings, max_timeout_s=60.0), pool_size=1)
    try:
        short.submit(one_task(timeout_s=60))
        for bad in (60.5, 10**18, True, "60"):
            with pytest.raises(InvalidDefinition) as refused:
                short.submit(one_task(timeout_s=bad))
            assert refused.value.details["field"] == "tasks[0].timeout_s"
    finally:
        short.close()


@pytest.mark.parametrize(
    ("definition", "field"),
    [
        (one_task(max_attempts=0), "tasks[0].max_attempts"),
        (one_task(max_attempts=101), "tasks[0].max_attempts"),
        (one_task(max_attempts=2**62), "tasks[0].max_attempts"),
        (one_task(priority=1001), "tasks[0].priority"),
        (one_task(priority=-(2**62)), "tasks[0].priority"),
        ({**one_task(), "priority": 10**6}, "priority"),
    ],
)
def test_attempts_and_priorities_out_of_range_are_refused_by_the_api_and_the_engine(
    kiln, client, definition, field
):
    assert_refused(client.post("/workflows", json=definition), field)
    with pytest.raises(InvalidDefinition) as refused:
        kiln.submit(definition)
    assert refused.value.details["field"] == field


@pytest.mark.parametrize("key", ["rpm_limit", "tpm_limit"])
def test_a_rate_limit_beyond_its_integer_column_is_refused_with_a_422(kiln, client, key):
    context = client.post("/contexts", json={"name": "c", "rows": [1], "num_shards": 1})
    assert context.status_code == 201, context.get_json()
    body = {
        "context_id": context.get_json()["id"],
        "pipeline_name": "p",
        "pipeline_type": "openai",
        "model_config": {"model": "m"},
        "client_config": {"base_url": "http://127.0.0.1:9/v1"},
        key: 2**31,
    }
    assert_refused(client.post("/pipelines", json=body), key)
    with pytest.raises(InvalidDefinition) as refused:
        kiln.pipelines.create(body, context_id=body["context_id"])
    assert refused.value.details["field"] == key
    assert client.post("/pipelines", json={**body, key: 2**31 - 1}).status_code == 201


def test_an_instance_count_beyond_its_integer_column_is_refused_not_a_500(kiln, client):
    body = {"url": "http://127.0.0.1:9", "model_type": "m", "max_concurrency": 2**31}
    assert_refused(client.post("/instances", json=body), "max_concurrency")
    with pytest.raises(InvalidInstanceRequest) as refused:
        kiln.instances.register(body)
    assert refused.value.details["field"] == "max_concurrency"


def test_a_heartbeat_naming_a_task_id_beyond_bigint_is_ignored_not_a_500(client):
    registered = client.post("/instances", json={"url": "http://127.0.0.1:9", "model_type": "m"})
    instance_id = registered.get_json()["id"]
    beat = client.post(
        f"/instances/{instance_id}/heartbeat",
        json={"tasks": [{"task_id": f"kiln-{10**25}-1", "status": "running", "progress": 0.5}]},
    )
    assert beat.status_code == 200, beat.get_json()
    assert beat.get_json()["progress_updates"] == 0


def test_a_dashboard_run_id_beyond_bigint_is_a_404_not_a_500(client):
    assert client.get(f"/ui/runs/{10**25}").status_code == 404


@pytest.mark.parametrize("seconds", [1e10, math.inf, math.nan])
def test_the_worker_timer_clamps_a_limit_it_cannot_wait_instead_of_overflowing(seconds):
    # threading's timers raise OverflowError past threading.TIMEOUT_MAX (about 292 years).
    assert seconds != seconds or seconds > threading.TIMEOUT_MAX
    assert call_with_timeout(lambda: "done", seconds) == "done"


@pytest.mark.parametrize("stored", [1e10, math.inf])
def test_a_huge_timeout_stored_before_the_bound_still_runs_the_task(kiln, stored):
    from kiln.workers.embedded import EmbeddedRuntime

    workflow_id = kiln.submit(one_task(timeout_s=5))
    kiln.txn(
        lambda c: c.execute(
            tasks.update().where(tasks.c.workflow_id == workflow_id).values(timeout_s=stored)
        )
    )
    with EmbeddedRuntime(kiln, threads=2):
        run = wait_for(
            lambda: (r := kiln.workflow(workflow_id))["status"] in ("succeeded", "failed") and r,
            what="the run to finish",
        )
    assert run["status"] == "succeeded", run["tasks"][0]["error"]
    assert run["tasks"][0]["attempts"] == 1
