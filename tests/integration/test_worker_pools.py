"""Worker pools on both databases: a task's ``queue`` is validated, stored, and its task is
leased only while a live worker consumes that queue; until then it waits with a
``waiting_reason``. Tasks without a queue are dispatched as before."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import tests.handlers  # noqa: F401 - registers the handlers the definitions name
from kiln.app.runtime import Kiln
from kiln.core.builder import Workflow
from kiln.core.definitions import parse_definition
from kiln.core.errors import InvalidDefinition
from kiln.core.pools import worker_info
from kiln.web.app import create_app
from kiln.workers.controller import Controller
from tests.conftest import fast_settings


@pytest.fixture
def sending(database_url: str) -> Iterator[Kiln]:
    """A Kiln that leases at submit on an idle queue; what it sends is kept in ``sent``."""
    k = Kiln(fast_settings(database_url=database_url), pool_size=2)
    sent: list = []
    k.sender = sent.extend
    k.sent = sent  # type: ignore[attr-defined]
    yield k
    k.close()


def _pooled() -> Workflow:
    wf = Workflow("pooled")
    wf.add("echo", name="plain", params={"x": 1})
    wf.add("echo", name="train", params={"x": 2}, queue="gpu")
    return wf


def _tasks(k: Kiln, wf_id: int) -> dict[str, dict]:
    return {t["name"]: t for t in k.workflow(wf_id)["tasks"]}


def _controller(k: Kiln) -> tuple[Controller, list]:
    sent: list = []
    return Controller(k, send=lambda d, _b: sent.extend(d)), sent


@pytest.mark.parametrize("queue", ["GPU", "", "a b", "x" * 65, 7, "gpu:1"])
def test_a_queue_that_is_not_a_short_lowercase_name_is_rejected_naming_the_field(queue):
    definition = {"name": "w", "tasks": [{"name": "a", "handler": "echo", "queue": queue}]}
    with pytest.raises(InvalidDefinition) as err:
        parse_definition(definition)
    assert err.value.details["field"] == "tasks[0].queue"


def test_the_python_builder_and_the_json_form_carry_the_same_queue():
    spec = _pooled().spec()
    assert {t.name: t.queue for t in spec.tasks} == {"plain": None, "train": "gpu"}
    assert parse_definition(spec.to_dict()) == spec


def test_the_api_answers_422_for_a_bad_queue_and_shows_a_good_one_on_the_task(pg_kiln, monkeypatch):
    monkeypatch.delenv("KILN_API_TOKEN", raising=False)
    client = create_app(pg_kiln).test_client()
    bad = {"name": "w", "tasks": [{"name": "a", "handler": "echo", "queue": "GPU"}]}
    r = client.post("/workflows", json=bad)
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["details"]["field"] == "tasks[0].queue"
    good = {"name": "w", "tasks": [{"name": "a", "handler": "echo", "queue": "gpu-1"}]}
    r = client.post("/workflows", json=good)
    assert r.status_code == 201, r.get_json()
    wf_id = r.get_json()["id"]
    (task,) = client.get(f"/workflows/{wf_id}").get_json()["tasks"]
    assert task["queue"] == "gpu-1"


def test_a_submitter_leases_only_default_queue_tasks_and_leaves_a_pools_to_the_controller(
    sending,
):
    wf_id = sending.submit(_pooled(), check_handlers=False)
    tasks = _tasks(sending, wf_id)
    assert [d.task_id for d in sending.sent] == [tasks["plain"]["id"]]  # type: ignore[attr-defined]
    assert sending.sent[0].queue is None  # type: ignore[attr-defined]
    assert tasks["train"]["status"] == "ready"
    assert tasks["train"]["queue"] == "gpu"


def test_tasks_of_a_queue_no_live_worker_consumes_wait_saying_so_until_one_registers(kiln):
    wf_id = kiln.submit(_pooled(), check_handlers=False)
    controller, sent = _controller(kiln)
    controller.tick()
    tasks = _tasks(kiln, wf_id)
    assert [d.task_id for d in sent] == [tasks["plain"]["id"]]
    assert tasks["train"]["status"] == "ready"
    assert tasks["train"]["waiting_reason"] == "no live worker consumes queue gpu"

    # A worker of another pool changes nothing; one of the task's pool gets it leased.
    cpu = kiln.monitor.new_process_id("worker")
    kiln.monitor.register_process(cpu, "worker", info=worker_info(["cpu"]))
    controller, sent = _controller(kiln)
    controller.tick()
    assert sent == []
    gpu = kiln.monitor.new_process_id("worker")
    kiln.monitor.register_process(gpu, "worker", info=worker_info(["kiln", "gpu"]))
    controller, sent = _controller(kiln)
    controller.tick()
    assert [(d.task_id, d.queue) for d in sent] == [(tasks["train"]["id"], "gpu")]
    train = _tasks(kiln, wf_id)["train"]
    assert (train["status"], train["waiting_reason"]) == ("queued", None)


def test_a_worker_that_serves_every_queue_gets_every_task_leased(kiln):
    everything = kiln.monitor.new_process_id("worker")
    kiln.monitor.register_process(everything, "worker", info=worker_info(None))
    wf_id = kiln.submit(_pooled(), check_handlers=False)
    controller, sent = _controller(kiln)
    controller.tick()
    assert sorted(d.task_id for d in sent) == sorted(t["id"] for t in _tasks(kiln, wf_id).values())
