"""Pipelines and operations end to end inside one process: the real Flask app, the embedded
worker and a controller running Kiln's hooks, on PostgreSQL and SQLite."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

import tests.handlers  # noqa: F401 - registers the handlers the workflows name
from kiln.store.schema import events
from kiln.web.app import create_app
from kiln.workers.hooks import controller_hooks, process_operations
from tests.conftest import wait_for

HANDLER = "tests.integration.test_api_operations:shout"


def shout(rows, model_config, shard_index):
    time.sleep(model_config.get("delay_s", 0))
    return [f"{shard_index}:{str(r).upper()}" for r in rows]


@pytest.fixture
def client(kiln, monkeypatch):
    """The API with an embedded worker and controller (operations hook included)."""
    from kiln.workers.embedded import EmbeddedRuntime

    monkeypatch.delenv("KILN_API_TOKEN", raising=False)
    with EmbeddedRuntime(kiln, threads=4, hooks=controller_hooks()):
        yield create_app(kiln).test_client()


def new_pipeline(client, shards=(("a", "b"), ("c",), ("d", "e", "f")), delay_s=0.0, **extra):
    ctx = client.post("/contexts", json={"name": "ctx", "shards": [list(s) for s in shards]})
    body = {
        "context_id": ctx.get_json()["id"],
        "pipeline_name": "shout",
        "model_config": {"handler": HANDLER, "delay_s": delay_s},
        **extra,
    }
    r = client.post("/pipelines", json=body)
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def pipeline(client, pid):
    return client.get(f"/pipelines/{pid}").get_json()


def wait_pipeline(client, pid, cond, what, timeout=20.0):
    return wait_for(lambda: cond(p := pipeline(client, pid)) and p, timeout, what=what)


def operate(client, verb, pid):
    r = client.post(f"/dispatcher/{verb}-pipeline", json={"pipeline_id": pid})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["message"] == f"{verb.capitalize()} request created for pipeline {pid}"
    return r.get_json()["ic_id"]


def finished(client, ic_id, timeout=5.0):
    r = client.get(f"/dispatcher/operation-status/{ic_id}?wait={timeout}")
    body = r.get_json()
    assert body["status"] in ("completed", "failed"), body
    return body


def test_a_pipeline_runs_every_shard_in_order_and_counts_its_samples(client):
    p = new_pipeline(client)
    done = wait_pipeline(client, p["id"], lambda x: x["status"] == "completed", "completion")
    assert (done["shards_completed"], done["progress"], done["current_shard_id"]) == (
        3,
        "3/3",
        None,
    )
    assert done["total_samples_processed"] == 6
    outputs = [s["result"]["outputs"] for s in done["shards"]]
    assert outputs == [["0:A", "0:B"], ["1:C"], ["2:D", "2:E", "2:F"]]
    for before, after in zip(done["shards"], done["shards"][1:], strict=False):
        assert after["started_at"] >= before["finished_at"]


def test_stop_lets_the_running_shard_finish_and_resume_continues_at_the_next(client):
    p = new_pipeline(client, delay_s=0.4)
    wait_pipeline(client, p["id"], lambda x: x["shards"][0]["status"] == "running", "shard 0")
    stop = finished(client, operate(client, "stop", p["id"]))
    assert (stop["status"], stop["error"], stop["operation"]) == ("completed", "", "stop")
    assert stop["processed_at"] >= stop["created_at"]
    stopped = wait_pipeline(
        client, p["id"], lambda x: x["shards"][0]["status"] == "succeeded", "shard 0 to finish"
    )
    assert stopped["status"] == "stopped"
    assert (stopped["shards_completed"], stopped["current_shard_id"]) == (1, 1)
    assert [s["status"] for s in stopped["shards"]] == ["succeeded", "ready", "pending"]

    resume = finished(client, operate(client, "resume", p["id"]))
    assert resume["status"] == "completed"
    assert resume["result"]["message"] == f"pipeline {p['id']} resumed at shard 1"
    done = wait_pipeline(client, p["id"], lambda x: x["status"] == "completed", "completion")
    assert [s["attempts"] for s in done["shards"]] == [1, 1, 1]


def test_illegal_operations_fail_with_a_readable_error(client):
    p = new_pipeline(client, delay_s=0.3)
    ic = operate(client, "resume", p["id"])
    assert finished(client, ic)["error"].startswith(f"cannot resume pipeline {p['id']}: it is ")
    assert finished(client, operate(client, "stop", p["id"]))["status"] == "completed"
    again = finished(client, operate(client, "stop", p["id"]))
    assert (again["status"], again["error"]) == (
        "failed",
        f"cannot stop pipeline {p['id']}: it is stopped; stop needs a pipeline that is new "
        "or ongoing",
    )
    assert again["processed_at"] is not None
    assert finished(client, operate(client, "delete", p["id"]))["status"] == "completed"
    for verb in ("delete", "stop", "resume"):
        failed = finished(client, operate(client, verb, p["id"]))
        assert failed["status"] == "failed"
        assert f"cannot {verb} pipeline {p['id']}: it is deleted" in failed["error"]

    q = new_pipeline(client)
    wait_pipeline(client, q["id"], lambda x: x["status"] == "completed", "completion")
    for verb in ("stop", "delete", "resume"):
        failed = finished(client, operate(client, verb, q["id"]))
        assert failed["status"] == "failed"
        assert f"cannot {verb} pipeline {q['id']}: it is completed" in failed["error"]


def test_delete_cancels_the_remaining_shards_and_discards_outputs(client):
    p = new_pipeline(client, delay_s=0.3)
    wait_pipeline(client, p["id"], lambda x: x["shards"][0]["status"] == "succeeded", "shard 0")
    assert finished(client, operate(client, "delete", p["id"]))["status"] == "completed"
    gone = wait_pipeline(
        client, p["id"], lambda x: x["shards"][1]["status"] in ("cancelled", "succeeded"), "end"
    )
    assert gone["status"] == "deleted" and gone["deleted_at"] is not None
    assert gone["shards"][2]["status"] == "cancelled"
    assert all("outputs" not in (s["result"] or {}) for s in gone["shards"])
    assert gone["shards_completed"] == sum(s["status"] == "succeeded" for s in gone["shards"])
    assert gone["shards"][0]["result"]["samples"] == 2


def test_a_clone_inherits_the_parents_context_and_starts_at_shard_zero(client):
    parent = new_pipeline(client, delay_s=0.2)
    r = client.post(
        "/dispatcher/clone-pipeline",
        json={"parent_pipeline_id": parent["id"], "pipeline_name": "child",
              "model_config": {"delay_s": 0}},
    )  # fmt: skip
    op = finished(client, r.get_json()["ic_id"])
    assert op["status"] == "completed", op
    child = wait_pipeline(
        client, op["result"]["pipeline_id"], lambda x: x["status"] == "completed", "clone"
    )
    assert (child["cloned_from"], child["context_id"]) == (parent["id"], parent["context_id"])
    assert child["pipeline_name"] == "child"
    assert child["model_config"] == {"handler": HANDLER, "delay_s": 0}
    assert [s["attempts"] for s in child["shards"]] == [1, 1, 1]

    bad = client.post(
        "/dispatcher/clone-pipeline",
        json={"parent_pipeline_id": parent["id"], "pipeline_type": "openai"},
    )
    assert bad.status_code == 422
    assert bad.get_json()["message"] == "an openai pipeline needs model_config.model"
    assert (
        client.post("/dispatcher/clone-pipeline", json={"parent_pipeline_id": 9999}).status_code
        == 404
    )
    missing = client.post("/dispatcher/clone-pipeline", json={"pipeline_name": "x"})
    assert missing.status_code == 400 and missing.get_json()["details"]["field"] == "context_id"


def test_workflow_cancel_pause_and_resume_are_operations(client):
    wf = client.post(
        "/workflows",
        json={"name": "w", "tasks": [{"name": "s", "handler": "sleep", "params": {"seconds": 1.5}},
                                     {"name": "t", "handler": "noop", "depends_on": ["s"]}]},
    ).get_json()  # fmt: skip
    wid = wf["id"]

    def control(verb):
        r = client.post(f"/workflows/{wid}/{verb}")
        assert r.status_code == 200
        return finished(client, r.get_json()["ic_id"])

    assert control("pause")["status"] == "completed"
    assert client.get(f"/workflows/{wid}").get_json()["status"] == "paused"
    assert control("pause")["error"].startswith(f"workflow {wid} is paused")
    assert control("resume")["status"] == "completed"
    assert control("cancel")["status"] == "completed"
    assert client.get(f"/workflows/{wid}").get_json()["status"] == "cancelled"
    assert control("resume")["status"] == "failed"
    assert client.post("/workflows/99999/cancel").status_code == 404


def test_all_operations_lists_newest_first_with_filters_and_pages(client):
    p = new_pipeline(client, delay_s=0.2)
    q = new_pipeline(client, delay_s=0.2)
    ids = [operate(client, "stop", p["id"]), operate(client, "stop", q["id"]),
           operate(client, "resume", p["id"])]  # fmt: skip
    for ic in ids:
        finished(client, ic)
    listed = client.get("/dispatcher/all-operations").get_json()
    assert [o["ic_id"] for o in listed["operations"]] == ids[::-1]
    assert listed["total"] == 3
    page = client.get("/dispatcher/all-operations?limit=1&offset=1").get_json()
    assert [o["ic_id"] for o in page["operations"]] == [ids[1]]
    mine = client.get(f"/dispatcher/all-operations?pipeline_id={p['id']}").get_json()
    assert {o["ic_id"] for o in mine["operations"]} == {ids[0], ids[2]}
    for o in mine["operations"]:
        assert set(o) >= {"ic_id", "pipeline_id", "operation", "status", "error",
                          "created_at", "processed_at"}  # fmt: skip
        assert isinstance(o["created_at"], float)
    assert client.get("/dispatcher/all-operations?status=pending").get_json()["total"] == 0
    same = client.post(
        "/dispatcher/stop-pipeline", json={"pipeline_id": p["id"]}, headers={"Idempotency-Key": "x"}
    )
    again = client.post(
        "/dispatcher/stop-pipeline", json={"pipeline_id": p["id"]}, headers={"Idempotency-Key": "x"}
    )
    assert same.get_json()["ic_id"] == again.get_json()["ic_id"]


def test_concurrent_controllers_apply_each_operation_once_and_in_order(pg_kiln, monkeypatch):
    monkeypatch.delenv("KILN_API_TOKEN", raising=False)
    client = create_app(pg_kiln).test_client()
    verbs = ["stop", "resume", "stop", "resume", "delete"]
    pipelines = [new_pipeline(client) for _ in range(8)]
    ic_ids = [operate(client, v, p["id"]) for v in verbs for p in pipelines]
    stop_all = threading.Event()

    def controller(name):
        while not stop_all.is_set():
            if process_operations(pg_kiln, claimer=name) == 0:
                time.sleep(0.01)

    threads = [threading.Thread(target=controller, args=(f"c{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(
            lambda: (
                client.get("/dispatcher/all-operations?status=pending").get_json()["total"] == 0
            ),
            30,
            what="every operation processed",
        )
    finally:
        stop_all.set()
        for t in threads:
            t.join()
    ops = [client.get(f"/dispatcher/operation-status/{ic}").get_json() for ic in ic_ids]
    # In order: every stop found a running pipeline, every resume a stopped one.
    assert [o["status"] for o in ops] == ["completed"] * len(ops), [o["error"] for o in ops]
    claims = pg_kiln.read(
        lambda c: c.execute(
            sa.select(events.c.entity_key, sa.func.count())
            .where(events.c.entity == "operation", events.c.to_status == "processing")
            .group_by(events.c.entity_key)
        ).all()
    )
    assert sorted(claims) == sorted((ic, 1) for ic in ic_ids)
    claimers = pg_kiln.read(
        lambda c: c.execute(sa.text("SELECT DISTINCT claimed_by FROM operations")).scalars().all()
    )
    assert len(claimers) > 1
    assert all(pipeline(client, p["id"])["status"] == "deleted" for p in pipelines)


def test_pipelines_interleave_fairly_one_shard_each_per_generation(kiln, monkeypatch):
    from kiln.workers.embedded import EmbeddedRuntime

    monkeypatch.delenv("KILN_API_TOKEN", raising=False)
    client = create_app(kiln).test_client()
    pids = [new_pipeline(client, shards=(("x",), ("y",), ("z",)))["id"] for _ in range(3)]
    with EmbeddedRuntime(kiln, threads=1, hooks=controller_hooks()):
        for pid in pids:
            wait_pipeline(client, pid, lambda x: x["status"] == "completed", f"pipeline {pid}")
    runs = sorted(
        (s["started_at"], s["shard_index"], pid)
        for pid in pids
        for s in pipeline(client, pid)["shards"]
    )
    # No pipeline ran its next shard while another one still waited for its previous one.
    assert [shard for _, shard, _ in runs] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [pid for _, _, pid in runs] == pids * 3
