"""TaskInstances end to end: real reference instances registering with Kiln's API, a real
controller and worker, tasks routed by model type, progress, and instances dying."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from werkzeug.serving import make_server

from kiln.app.runtime import Kiln
from tests.conftest import wait_for
from tests.taskinstance_helpers import InstanceProcess

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


@contextlib.contextmanager
def serve_kiln(kiln: Kiln) -> Iterator[str]:
    """Kiln's HTTP API (with the instance, predictor and scheduler blueprints) in a thread."""
    from kiln.web.app import create_app

    app = create_app(kiln)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)
        server.server_close()


def start_instance(kiln_url: str, model_type: str, *extra: str) -> InstanceProcess:
    return InstanceProcess(
        ["--model-type", model_type, "--kiln-url", kiln_url, "--heartbeat-interval", "0.3"]
        + list(extra)
    ).start()


def live_instance(api: str, url: str) -> dict[str, Any] | None:
    for item in requests.get(f"{api}/instances", timeout=5).json()["instances"]:
        if item["url"] == url and item["live"]:
            return item
    return None


def model_task(name: str, model_type: str, duration_ms: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "model_type": model_type,
        "params": {"input_data": f"prompt for {name}", "metadata": {"duration_ms": duration_ms}},
        **extra,
    }


def finished(kiln: Kiln, workflow_id: int) -> dict[str, Any] | None:
    run = kiln.workflow(workflow_id)
    return run if run["status"] in ("succeeded", "failed", "cancelled") else None


def wait_run(cluster: Any, kiln: Kiln, workflow_id: int, timeout: float = 30) -> dict[str, Any]:
    """The finished run; on timeout the failure shows the tasks and the processes' logs."""
    try:
        return wait_for(lambda: finished(kiln, workflow_id), timeout=timeout, what="the run")
    except AssertionError:
        tasks = [
            {k: t[k] for k in ("name", "status", "attempts", "instance_id", "waiting_reason")}
            for t in kiln.workflow(workflow_id)["tasks"]
        ]
        raise AssertionError(f"run {workflow_id} unfinished: {tasks}\n{cluster.logs()}") from None


@pytest.fixture
def lost_after(cluster, monkeypatch) -> float:  # type: ignore[no-untyped-def]
    """Instances silent for 3 s (10 missed 0.3 s heartbeats) are lost, in the test process and
    the cluster's: short enough to see a killed instance lost quickly, long enough that a live
    one on a loaded CI machine is not (1.5 s once lost a live instance mid-test)."""
    monkeypatch.setenv("KILN_INSTANCE_LOST_AFTER_S", "3")
    cluster.env["KILN_INSTANCE_LOST_AFTER_S"] = "3"
    return 3.0


def test_tasks_reach_only_instances_of_their_model_type(cluster, pg_kiln, lost_after):
    with serve_kiln(pg_kiln) as api:
        alpha = start_instance(api, "alpha", "--max-concurrency", "2")
        beta = start_instance(api, "beta", "--max-concurrency", "2")
        try:
            a = wait_for(lambda: live_instance(api, alpha.url), what="alpha registered")
            b = wait_for(lambda: live_instance(api, beta.url), what="beta registered")
            cluster.controller()
            cluster.worker(threads=8)
            wf = pg_kiln.submit(
                {
                    "name": "routing",
                    "tasks": [model_task(f"a{i}", "alpha", 50) for i in range(5)]
                    + [model_task(f"b{i}", "beta", 50) for i in range(5)],
                }
            )
            run = wait_run(cluster, pg_kiln, wf, 30)
            assert run["status"] == "succeeded", cluster.logs()
            placed = {t["name"]: t["instance_id"] for t in run["tasks"]}
            assert {placed[f"a{i}"] for i in range(5)} == {a["id"]}
            assert {placed[f"b{i}"] for i in range(5)} == {b["id"]}
            ran_on_alpha = {
                r["task_id"]
                for r in requests.get(f"{alpha.url}/results", timeout=5).json()["results"]
            }
            ids = {t["name"]: t["id"] for t in run["tasks"]}
            assert ran_on_alpha == {f"kiln-{ids[f'a{i}']}-1" for i in range(5)}
            for t in run["tasks"]:
                assert t["result"]["model"] == t["model_type"]
                assert t["actual_s"] == pytest.approx(0.05, abs=0.05)
            # What ran was measured, and the predictor learns from it.
            learned = requests.post(
                f"{api}/predict", json={"model_type": "alpha", "metadata": {}}, timeout=5
            ).json()
            assert learned["prediction_method"] == "learned"
            assert learned["quantile_predictions"][2] == pytest.approx(50, abs=50)
        finally:
            alpha.stop()
            beta.stop()


def test_a_task_no_live_instance_serves_waits_visibly_and_runs_once_one_registers(
    cluster, pg_kiln, lost_after
):
    with serve_kiln(pg_kiln) as api:
        cluster.controller()
        cluster.worker(threads=2)
        wf = pg_kiln.submit({"name": "waiting", "tasks": [model_task("g", "gamma", 20)]})

        def reason() -> str | None:
            task = pg_kiln.workflow(wf)["tasks"][0]
            return task["status"] == "ready" and task["waiting_reason"]

        assert wait_for(reason, what="a waiting reason") == (
            "no live instance serves model_type gamma"
        )
        gamma = start_instance(api, "gamma")
        try:
            run = wait_run(cluster, pg_kiln, wf, 30)
            assert run["status"] == "succeeded", cluster.logs()
            assert run["tasks"][0]["waiting_reason"] is None
        finally:
            gamma.stop()


def test_instance_progress_is_stored_on_the_running_task(cluster, pg_kiln, lost_after):
    with serve_kiln(pg_kiln) as api:
        inst = start_instance(api, "slow")
        try:
            wait_for(lambda: live_instance(api, inst.url), what="registered")
            cluster.controller()
            cluster.worker(threads=2)
            wf = pg_kiln.submit({"name": "progress", "tasks": [model_task("p", "slow", 2500)]})

            def midway() -> float | None:
                task = pg_kiln.workflow(wf)["tasks"][0]
                fraction = task["progress"]
                return task["status"] == "running" and fraction and 0 < fraction < 1 and fraction

            wait_for(midway, timeout=10, what="progress between 0 and 1 while running")
            run = wait_run(cluster, pg_kiln, wf, 30)
            assert run["status"] == "succeeded", cluster.logs()
            assert run["tasks"][0]["progress"] == 1.0
            # A long, silent stretch while the instance is alive is not a lost task.
            assert run["tasks"][0]["attempts"] == 1
        finally:
            inst.stop()


def test_killing_an_instance_requeues_its_tasks_and_the_workflow_still_succeeds(
    cluster, pg_kiln, lost_after
):
    with serve_kiln(pg_kiln) as api:
        doomed = start_instance(api, "m", "--max-concurrency", "4")
        try:
            victim = wait_for(lambda: live_instance(api, doomed.url), what="first instance")
            cluster.controller()
            cluster.worker(threads=8)
            # Long enough that all three overlap on the victim even when a loaded machine
            # spreads their dispatch over seconds (at 1.5 s the first could end first).
            wf = pg_kiln.submit(
                {"name": "survive", "tasks": [model_task(f"t{i}", "m", 8000) for i in range(3)]}
            )

            def running_on_victim() -> list[dict[str, Any]]:
                tasks = pg_kiln.workflow(wf)["tasks"]
                return [
                    t
                    for t in tasks
                    if t["status"] == "running" and t["instance_id"] == victim["id"]
                ]

            wait_for(lambda: len(running_on_victim()) == 3, what="all three running on it")
            survivor = start_instance(api, "m", "--max-concurrency", "4")
            wait_for(lambda: live_instance(api, survivor.url), what="second instance")
            doomed.stop(sig=signal.SIGKILL)
            run = wait_run(cluster, pg_kiln, wf, 40)
            assert run["status"] == "succeeded", cluster.logs()
            assert all(t["attempts"] == 2 for t in run["tasks"])
            assert {t["instance_id"] for t in run["tasks"]} != {victim["id"]}
            for t in run["tasks"]:
                assert t["attempt_history"][0]["outcome"] in ("failed", "lost")
                assert str(victim["id"]) in t["attempt_history"][0]["error"]
            listed = requests.get(f"{api}/instances", timeout=5).json()["instances"]
            assert {i["url"]: i["status"] for i in listed}[doomed.url] == "lost"
            survivor.stop()
        finally:
            doomed.stop(sig=signal.SIGKILL)


def test_a_silent_instance_is_declared_lost_and_its_tasks_are_retried_elsewhere(
    cluster, pg_kiln, lost_after
):
    """The controller's heartbeat check, not a worker's failed poll, re-queues the task:
    the instance is frozen (SIGSTOP), so connections hang instead of being refused."""
    with serve_kiln(pg_kiln) as api:
        frozen = start_instance(api, "m")
        spare = None
        try:
            victim = wait_for(lambda: live_instance(api, frozen.url), what="registered")
            cluster.controller()
            cluster.worker(threads=4)
            wf = pg_kiln.submit({"name": "frozen", "tasks": [model_task("t", "m", 3000)]})
            wait_for(
                lambda: pg_kiln.workflow(wf)["tasks"][0]["instance_id"] == victim["id"],
                what="placed on the first instance",
            )
            spare = start_instance(api, "m")
            wait_for(lambda: live_instance(api, spare.url), what="spare registered")
            assert frozen.proc is not None
            frozen.proc.send_signal(signal.SIGSTOP)
            run = wait_run(cluster, pg_kiln, wf, 40)
            assert run["status"] == "succeeded", cluster.logs()
            first = run["tasks"][0]["attempt_history"][0]
            assert first["outcome"] == "lost"
            assert "lost" in first["error"]
        finally:
            if frozen.proc is not None and frozen.proc.poll() is None:
                frozen.proc.send_signal(signal.SIGCONT)
            frozen.stop(sig=signal.SIGKILL)
            if spare is not None:
                spare.stop()


def test_registration_is_idempotent_by_url_and_heartbeats_of_unknown_ids_get_404(pg_kiln):
    with serve_kiln(pg_kiln) as api:
        body = {
            "name": "x",
            "url": "http://127.0.0.1:1",
            "model_type": "m",
            "hardware": "cpu",
            "software_version": "1",
            "capabilities": ["m", "summarise"],
            "max_concurrency": 2,
        }
        first = requests.post(f"{api}/instances", json=body, timeout=5)
        again = requests.post(f"{api}/instances", json=body, timeout=5)
        assert (first.status_code, again.status_code) == (201, 200)
        assert first.json()["id"] == again.json()["id"]
        beat = requests.post(
            f"{api}/instances/{first.json()['id']}/heartbeat",
            json={"status": "running", "active_tasks": 1, "queue_size": 0, "max_concurrency": 4},
            timeout=5,
        )
        assert beat.status_code == 200
        listed = requests.get(f"{api}/instances", timeout=5).json()["instances"]
        assert listed[0]["slots"] == 4 and listed[0]["capabilities"] == ["m", "summarise"]
        missing = requests.post(f"{api}/instances/999/heartbeat", json={}, timeout=5)
        assert missing.status_code == 404
        assert missing.json()["error"] == "instance_not_found"
        bad = requests.post(f"{api}/instances", json={"url": "nope"}, timeout=5)
        assert bad.status_code == 422 and set(bad.json()) == {"error", "message", "details"}
        gone = requests.delete(f"{api}/instances/{first.json()['id']}", timeout=5)
        assert gone.status_code == 200
        assert requests.get(f"{api}/instances", timeout=5).json()["count"] == 0
