"""Worker pools: ``kiln worker --queues gpu`` runs only tasks of queue ``gpu``; tasks of a
queue no live worker consumes wait, saying so, until a worker of their pool starts."""

from __future__ import annotations

import uuid

import pytest
import redis

from kiln.core.builder import Workflow
from kiln.transport import list_key
from tests.acceptance.test_crash_recovery import finished
from tests.conftest import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def pools(cluster, redis_url):
    """Two pool names of this test's own (Redis keys are shared between tests)."""
    suffix = uuid.uuid4().hex[:8]
    names = {"gpu": f"gpu-{suffix}", "cpu": f"cpu-{suffix}"}
    yield names
    client = redis.Redis.from_url(redis_url)
    for queue in names.values():
        for key in [*client.scan_iter(f"dramatiq:{queue}*"), list_key(queue)]:
            client.delete(key)
    client.close()


def _pool_worker(cluster, queue: str):
    return cluster.start("worker", "--threads", "2", "--queues", queue, name=f"worker-{queue}")


def _tasks(kiln, wf_id) -> dict[str, dict]:
    return {t["name"]: t for t in kiln.workflow(wf_id)["tasks"]}


def _worker_queues(kiln) -> dict[str, list[str]]:
    """Each live worker's id -> the queues it registered."""
    rows = kiln.monitor.live_processes("worker", stale_after_s=60)
    return {r.id: r.info["queues"] for r in rows}


def test_a_gpu_worker_never_runs_cpu_tasks_which_wait_for_a_cpu_worker(cluster, pools, pg_kiln):
    gpu, cpu = pools["gpu"], pools["cpu"]
    cluster.controller()
    _pool_worker(cluster, gpu)
    wait_for(lambda: len(_worker_queues(pg_kiln)) == 1, timeout=30, what="the gpu worker")

    wf = Workflow("pools")
    train = wf.add("echo", name="train", params={"step": "train"}, queue=gpu)
    wf.add("echo", name="embed", params={"step": "embed"}, queue=gpu)
    wf.add("echo", name="tokenize", params={"step": "tokenize"}, queue=cpu)
    wf.add("echo", name="report", params={"step": "report"}, queue=cpu, depends_on=[train])
    wf_id = pg_kiln.submit(wf, check_handlers=False)

    def gpu_done_cpu_waiting() -> bool:
        t = _tasks(pg_kiln, wf_id)
        return all(t[n]["status"] == "succeeded" for n in ("train", "embed")) and all(
            t[n]["status"] == "ready" and t[n]["waiting_reason"] for n in ("tokenize", "report")
        )

    wait_for(gpu_done_cpu_waiting, timeout=30, what="gpu tasks done, cpu tasks waiting")
    waiting = _tasks(pg_kiln, wf_id)
    for name in ("tokenize", "report"):
        assert waiting[name]["attempts"] == 0
        assert waiting[name]["waiting_reason"] == f"no live worker consumes queue {cpu}"

    _pool_worker(cluster, cpu)
    run = finished(pg_kiln, wf_id, timeout=30, cluster=cluster)
    assert run["status"] == "succeeded"

    queues_of = _worker_queues(pg_kiln)
    assert sorted(queues_of.values()) == sorted([[gpu], [cpu]])
    for task in run["tasks"]:
        assert task["waiting_reason"] is None
        (attempt,) = task["attempt_history"]
        assert queues_of[attempt["worker"]] == [task["queue"]], task["name"]


def test_a_default_worker_runs_tasks_without_a_queue_but_not_a_named_pools(cluster, pools, pg_kiln):
    cluster.controller()
    cluster.worker(threads=2)
    wait_for(lambda: len(_worker_queues(pg_kiln)) == 1, timeout=30, what="the default worker")
    wf = Workflow("default-and-pool")
    wf.add("echo", name="plain", params={"x": 1})
    wf.add("echo", name="pooled", params={"x": 2}, queue=pools["gpu"])
    wf_id = pg_kiln.submit(wf, check_handlers=False)

    def plain_done_pooled_waiting() -> bool:
        t = _tasks(pg_kiln, wf_id)
        return t["plain"]["status"] == "succeeded" and bool(t["pooled"]["waiting_reason"])

    wait_for(plain_done_pooled_waiting, timeout=30, what="the plain task done, the pooled waiting")
    assert _tasks(pg_kiln, wf_id)["pooled"]["attempts"] == 0
    (default_queues,) = _worker_queues(pg_kiln).values()
    assert default_queues == [cluster.env["KILN_QUEUE"]]
