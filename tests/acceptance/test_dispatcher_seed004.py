"""The dispatcher as seed 004 documents it, driven over HTTP against the real processes
(``kiln web``, ``kiln worker``, ``kiln controller``) on PostgreSQL and Redis."""

from __future__ import annotations

import signal
import time

import pytest
import requests
import sqlalchemy as sa

from kiln.store.schema import events, operations
from tests.conftest import wait_for
from tests.taskinstance_helpers import InstanceProcess, free_port

HANDLER = "tests.acceptance.test_dispatcher_seed004:tag_rows"


def tag_rows(rows, model_config, shard_index):
    """The python pipeline these tests run: slow enough to stop in the middle."""
    time.sleep(model_config.get("delay_s", 0))
    return [f"{shard_index}:{r}" for r in rows]


class Api:
    def __init__(self, cluster):
        self.cluster = cluster
        self.proc = None
        self.base = ""

    def start(self):
        port = free_port()
        self.proc = self.cluster.start("web", "--port", str(port), name="web")
        self.base = f"http://127.0.0.1:{port}"
        wait_for(self._up, 20, what=f"kiln web on {self.base}\n{self.cluster.logs()}")
        return self

    def _up(self):
        try:
            return requests.get(self.base + "/health", timeout=1).ok
        except requests.ConnectionError:
            return False

    def get(self, path, **kw):
        r = requests.get(self.base + path, timeout=40, **kw)
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()

    def post(self, path, body, status=None):
        r = requests.post(self.base + path, json=body, timeout=10)
        assert r.status_code == (status or (201 if path in ("/contexts", "/pipelines") else 200)), (
            path,
            r.status_code,
            r.text,
        )
        return r.json()


def start_all(cluster, controllers=1):
    cluster.worker(threads=4)
    for _ in range(controllers):
        cluster.controller()
    return Api(cluster).start()


def new_pipeline(api, num_shards, delay_s):
    ctx = api.post(
        "/contexts",
        {
            "name": "words",
            "rows": [f"w{i}" for i in range(num_shards * 2)],
            "num_shards": num_shards,
        },
    )
    return api.post(
        "/pipelines",
        {
            "context_id": ctx["id"],
            "pipeline_name": "tagger",
            "pipeline_type": "python",
            "model_config": {"handler": HANDLER, "delay_s": delay_s},
        },
    )


def wait_pipeline(api, pid, cond, what, timeout=30):
    return wait_for(lambda: cond(p := api.get(f"/pipelines/{pid}")) and p, timeout, what=what)


def idle(p):
    """No shard of the pipeline is queued or running."""
    return not any(s["status"] in ("queued", "running") for s in p["shards"])


def test_the_seed_usage_example_stop_poll_and_clone_works_as_written(cluster):
    api = start_all(cluster)
    base = api.base + "/dispatcher"  # the seed's "http://127.0.0.1:8851/dispatcher"
    p = new_pipeline(api, num_shards=6, delay_s=0.3)
    pipeline_id = p["id"]
    wait_pipeline(api, pipeline_id, lambda x: x["shards_completed"] >= 1, "a first shard")

    # Stop a pipeline
    response = requests.post(f"{base}/stop-pipeline", json={"pipeline_id": pipeline_id})
    assert response.status_code == 200
    assert response.json()["message"] == f"Stop request created for pipeline {pipeline_id}"
    ic_id = response.json()["ic_id"]

    # Check status (polled until the controller has processed it)
    def status():
        s = requests.get(f"{base}/operation-status/{ic_id}").json()
        return s if s["status"] in ("completed", "failed") else None

    done = wait_for(status, 15, what="the stop operation")
    assert set(done) >= {"ic_id", "pipeline_id", "operation", "status", "error", "created_at",
                         "processed_at"}  # fmt: skip
    assert (done["ic_id"], done["pipeline_id"], done["operation"]) == (ic_id, pipeline_id, "stop")
    assert (done["status"], done["error"]) == ("completed", "")
    assert done["created_at"] <= done["processed_at"] <= time.time()
    stopped = wait_pipeline(api, pipeline_id, idle, "the running shard to finish")
    assert stopped["status"] == "stopped"
    assert 1 <= stopped["shards_completed"] < 6

    # Clone a pipeline (the seed's body: context, name, model_config, sampling_params)
    with InstanceProcess(["--model-type", "m", "--speed", "0.01"]) as instance:
        response = requests.post(
            f"{base}/clone-pipeline",
            json={
                "context_id": p["context_id"],
                "pipeline_name": "cloned_pipeline",
                "model_config": {"model": "Qwen/Qwen2.5-3B-Instruct", "instance_url": instance.url},
                "sampling_params": {"temperature": 0.8, "top_p": 0.95, "max_tokens": 16},
            },
        )
        assert response.status_code == 200
        clone_op = api.get(f"/dispatcher/operation-status/{response.json()['ic_id']}?wait=15")
        assert clone_op["status"] == "completed", clone_op
        assert clone_op["pipeline_id"] is None  # seed 004: no pipeline operated on
        clone = wait_pipeline(
            api, clone_op["result"]["pipeline_id"], lambda x: x["status"] == "completed", "clone"
        )
    assert (clone["pipeline_type"], clone["pipeline_name"]) == ("vllm", "cloned_pipeline")
    assert (clone["shards_completed"], clone["total_samples_processed"]) == (6, 12)
    assert all(len(s["result"]["outputs"]) == 2 for s in clone["shards"])

    # The stopped parent did not move meanwhile; illegal operations fail with a reason.
    assert api.get(f"/pipelines/{pipeline_id}")["shards_completed"] == stopped["shards_completed"]
    for verb, pid, reason in (
        ("stop", pipeline_id, "it is stopped"),
        ("resume", clone["id"], "it is completed"),
        ("delete", clone["id"], "it is completed"),
    ):
        ic = api.post(f"/dispatcher/{verb}-pipeline", {"pipeline_id": pid})["ic_id"]
        op = api.get(f"/dispatcher/operation-status/{ic}?wait=15")
        assert op["status"] == "failed" and reason in op["error"], op
    assert api.get("/dispatcher/health-check")["status"] == "ok"
    assert api.get("/dispatcher/all-operations?status=failed")["total"] == 3


def test_resume_continues_at_the_right_shard_after_every_process_was_killed(cluster, pg_kiln):
    api = start_all(cluster)
    p = new_pipeline(api, num_shards=6, delay_s=0.4)
    pid = p["id"]
    wait_pipeline(api, pid, lambda x: x["shards_completed"] >= 2, "two shards")
    ic = api.post("/dispatcher/stop-pipeline", {"pipeline_id": pid})["ic_id"]
    assert api.get(f"/dispatcher/operation-status/{ic}?wait=15")["status"] == "completed"
    stopped = wait_pipeline(api, pid, idle, "the running shard to finish")
    k = stopped["shards_completed"]
    assert stopped["status"] == "stopped" and 2 <= k < 6

    for proc in cluster.procs:  # every process, without a chance to clean up
        proc.send_signal(signal.SIGKILL)
    for proc in cluster.procs:
        proc.wait()
    api = start_all(cluster)

    after = api.get(f"/pipelines/{pid}")
    assert (after["status"], after["shards_completed"], after["current_shard_id"]) == (
        "stopped",
        k,
        k,
    )
    ic = api.post("/dispatcher/resume-pipeline", {"pipeline_id": pid})["ic_id"]
    resumed = api.get(f"/dispatcher/operation-status/{ic}?wait=15")
    assert resumed["status"] == "completed", resumed
    assert resumed["result"]["message"] == f"pipeline {pid} resumed at shard {k}"
    done = wait_pipeline(api, pid, lambda x: x["status"] == "completed", "completion", 60)
    shards = done["shards"]
    assert [s["attempts"] for s in shards] == [1] * 6  # no shard ran twice
    assert [s["result"]["outputs"] for s in shards] == [
        [f"{i}:w{2 * i}", f"{i}:w{2 * i + 1}"] for i in range(6)
    ]
    resumed_at = resumed["processed_at"]
    assert all(_unix(s["finished_at"]) < resumed_at for s in shards[:k])
    assert all(_unix(s["started_at"]) >= resumed_at for s in shards[k:])
    assert (done["shards_completed"], done["total_samples_processed"]) == (6, 12)


def _unix(iso):
    import datetime as dt

    return dt.datetime.fromisoformat(iso).timestamp()


@pytest.mark.parametrize("n_pipelines", [12])
def test_two_controllers_never_process_one_operation_twice(cluster, pg_kiln, n_pipelines):
    api = Api(cluster).start()  # no worker: pipelines only change through operations
    pids = [new_pipeline(api, num_shards=2, delay_s=0)["id"] for _ in range(n_pipelines)]
    verbs = ["stop", "resume", "stop", "resume", "delete"]
    ic_ids = [
        api.post(f"/dispatcher/{verb}-pipeline", {"pipeline_id": pid})["ic_id"]
        for verb in verbs
        for pid in pids
    ]
    # Both controllers start on the same backlog (and keep taking what arrives next).
    cluster.controller()
    cluster.controller()
    more = [api.post("/dispatcher/stop-pipeline", {"pipeline_id": pid})["ic_id"] for pid in pids]
    wait_for(
        lambda: api.get("/dispatcher/all-operations?status=pending")["total"] == 0,
        30,
        what="every operation processed",
    )
    ops = {o["ic_id"]: o for o in api.get("/dispatcher/all-operations?limit=500")["operations"]}
    # Applied once each, in order per pipeline: every stop found it running, every resume
    # found it stopped, every delete found it stopped.
    assert [ops[i]["status"] for i in ic_ids] == ["completed"] * len(ic_ids), [
        ops[i]["error"] for i in ic_ids if ops[i]["error"]
    ]
    claims = pg_kiln.read(
        lambda c: dict(
            c.execute(
                sa.select(events.c.entity_key, sa.func.count())
                .where(events.c.entity == "operation", events.c.to_status == "processing")
                .group_by(events.c.entity_key)
            ).all()
        )
    )
    assert claims == dict.fromkeys(ic_ids + more, 1)
    claimers = pg_kiln.read(
        lambda c: c.execute(sa.select(operations.c.claimed_by).distinct()).scalars().all()
    )
    assert len(claimers) <= 2 and None not in claimers
    assert all(api.get(f"/pipelines/{pid}")["status"] == "deleted" for pid in pids)
    # Stop after delete is illegal: failed, with the reason, once each.
    late = [api.get(f"/dispatcher/operation-status/{ic}?wait=15") for ic in more]
    assert all(o["status"] == "failed" and "it is deleted" in o["error"] for o in late), late
