"""The reference TaskInstance, run as a real subprocess, against seed 000's protocol."""

from __future__ import annotations

import signal
import threading
import time

import pytest
import requests
from flask import Flask, jsonify
from werkzeug.serving import make_server

from kiln.taskinstance import (
    InstanceRejected,
    InstanceUnavailable,
    TaskIdConflict,
    TaskInstanceClient,
    TaskNotFound,
)
from tests.taskinstance_helpers import InstanceProcess, KilnDouble, free_port, wait_until

FAST = ["--speed", "0.01"]
RESULT_FIELDS = {
    "task_id",
    "result",
    "status",
    "error",
    "enqueue_time",
    "completion_time",
    "wait_time",
    "execution_time",
    "total_time",
}


@pytest.fixture(scope="module")
def instance():
    with InstanceProcess([*FAST, "--max-concurrency", "2"]) as proc:
        yield proc


@pytest.fixture
def client(instance):
    with TaskInstanceClient(instance.url, timeout=5.0, retries=2, backoff=0.05) as c:
        yield c


def _finish(client: TaskInstanceClient, task_id: str, timeout: float = 10.0):
    return client.wait_for_result(task_id, timeout=timeout, poll_interval=0.01)


def test_every_protocol_endpoint_answers_with_the_seed_fields(instance, client):
    raw = requests.get(f"{instance.url}/status", timeout=5).json()
    assert {"instance_id", "model_type", "replicas_running", "queue_size", "status"} <= set(raw)
    assert raw["model_type"] == "m" and raw["replicas_running"] == 1
    assert raw["status"] == "running"

    prediction = client.predict({"input_tokens": 10, "output_tokens": 5})
    assert {"expected_ms", "error_ms", "queue_size"} <= set(prediction.raw)
    assert prediction.expected_ms == pytest.approx((1.8 + 0.994 + 150.5) * 0.01, rel=0.01)

    receipt = client.enqueue({"prompt": "hello"}, {"output_tokens": 5})
    assert {"task_id", "queue_size", "enqueue_time"} <= set(receipt.raw)
    assert receipt.created

    result = _finish(client, receipt.task_id)
    assert RESULT_FIELDS <= set(result.raw)
    assert result.status == "completed" and result.error is None
    assert result.result["output_tokens"] == 5
    assert result.total_time == pytest.approx(result.wait_time + result.execution_time, abs=0.01)
    assert result.completion_time == pytest.approx(result.enqueue_time + result.total_time, abs=1)

    queue = requests.get(f"{instance.url}/queue/status", timeout=5).json()
    assert {"queue_size", "active_tasks", "running", "queued"} <= set(queue)
    listed = client.results()
    assert receipt.task_id in {r.task_id for r in listed}
    assert all(RESULT_FIELDS <= set(r.raw) for r in listed)

    started = client.start_models("m", count=2)
    assert started["replicas_running"] == 3
    assert client.status().replicas_running == 3
    stopped = client.stop_models(2)
    assert stopped["replicas_running"] == 1 and stopped["stopped"] == 2


def test_no_more_than_max_concurrency_tasks_run_at_once(instance, client):
    # 30 s of model time at speed 0.01 = 300 ms each; 2 slots, 4 tasks → two rounds.
    ids = [client.enqueue({"n": i}, {"duration_ms": 30_000}).task_id for i in range(4)]
    peaks = []

    def all_done():
        peaks.append(client.queue_status().active_tasks)
        return all(client.result(i).finished for i in ids)

    wait_until(all_done, timeout=15, interval=0.01, what="all four tasks to finish")
    peak = max(peaks)
    results = [client.result(i) for i in ids]
    assert peak <= 2
    events = sorted(
        [(r.raw["start_time"], 1) for r in results] + [(r.completion_time, -1) for r in results]
    )
    running = max_running = 0
    for _, delta in events:
        running += delta
        max_running = max(max_running, running)
    assert max_running == 2
    waits = sorted(r.wait_time for r in results)
    assert waits[2] >= 250 and waits[3] >= 250, waits
    assert all(r.execution_time >= 280 for r in results)


def test_tasks_wait_queued_while_no_replica_runs_and_start_once_one_does(instance, client):
    client.stop_models(None)
    try:
        assert client.status().status == "stopped"
        receipt = client.enqueue({"x": 1}, {"output_tokens": 1})
        assert client.result(receipt.task_id).status == "queued"
        with pytest.raises(InstanceRejected) as err:
            client.predict({"output_tokens": 1})
        assert err.value.code == "instance_stopped"
    finally:
        client.start_models("m", count=1)
    assert _finish(client, receipt.task_id).status == "completed"


def test_enqueue_with_a_known_task_id_returns_the_existing_entry_and_runs_it_once(client):
    before = client.queue_status().raw["counters"]["enqueued"]
    first = client.enqueue({"prompt": "once"}, {"output_tokens": 3}, task_id="kiln-task-42")
    again = client.enqueue({"prompt": "once"}, {"output_tokens": 3}, task_id="kiln-task-42")
    assert first.created and not again.created
    assert again.task_id == "kiln-task-42"
    assert again.enqueue_time == first.enqueue_time
    _finish(client, "kiln-task-42")
    after_finish = client.enqueue({"prompt": "once"}, {"output_tokens": 3}, task_id="kiln-task-42")
    assert not after_finish.created
    assert client.queue_status().raw["counters"]["enqueued"] == before + 1
    with pytest.raises(TaskIdConflict):
        client.enqueue({"prompt": "different"}, {}, task_id="kiln-task-42")


def test_a_task_whose_metadata_asks_to_fail_reports_failed_with_an_error(client):
    receipt = client.enqueue({"prompt": "boom"}, {"output_tokens": 4, "fail": "GPU fell off"})
    result = _finish(client, receipt.task_id)
    assert result.status == "failed" and not result.succeeded
    assert result.error == "GPU fell off"
    assert result.result is None
    plain = _finish(client, client.enqueue({}, {"output_tokens": 1, "fail": True}).task_id)
    assert plain.status == "failed" and plain.error


def test_progress_of_a_running_task_is_visible_in_results_and_queue_status(client):
    receipt = client.enqueue({"prompt": "long"}, {"output_tokens": 3000})  # ≈ 0.9 s
    midway = wait_until(
        lambda: (
            (p := client.progress(receipt.task_id)).status == "running"
            and 0.05 < p.fraction < 0.9
            and p
        ),
        what="progress between 5 % and 90 %",
    )
    assert midway.message.startswith("generated ") and midway.message.endswith("/3000 tokens")
    running = {p.task_id: p for p in client.queue_status().running}
    assert 0 < running[receipt.task_id].fraction < 1

    seen = []
    final = client.wait_for_result(receipt.task_id, timeout=15, on_progress=seen.append)
    assert final.status == "completed" and final.progress.fraction == 1.0
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_unknown_ids_and_bad_requests_raise_typed_errors(instance, client):
    with pytest.raises(TaskNotFound):
        client.result("no-such-task")
    with pytest.raises(InstanceRejected) as err:
        client.enqueue({"prompt": "x"}, {"input_tokens": -3})
    assert err.value.status_code == 422 and err.value.code == "invalid_metadata"
    response = requests.post(f"{instance.url}/queue/enqueue", data="nope", timeout=5)
    assert response.status_code == 400
    assert set(response.json()) == {"error", "message", "details"}


def test_the_client_retries_connection_errors_until_the_instance_comes_up():
    port = free_port()
    outcome: dict = {}
    client = TaskInstanceClient(
        f"http://127.0.0.1:{port}", timeout=2.0, retries=100, backoff=0.05, backoff_max=0.1
    )

    def call():
        try:
            outcome["status"] = client.status()
        except Exception as exc:  # reported by the assertion below
            outcome["error"] = exc

    caller = threading.Thread(target=call)
    caller.start()
    try:
        with InstanceProcess(["--port", str(port), *FAST]):
            caller.join(timeout=20)
    finally:
        caller.join(timeout=20)
        client.close()
    assert "error" not in outcome, outcome
    assert outcome["status"].model_type == "m"


def test_the_client_raises_instance_unavailable_when_nobody_answers():
    with TaskInstanceClient(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.01) as c:
        with pytest.raises(InstanceUnavailable):
            c.status()
        with pytest.raises(InstanceUnavailable):
            c.start_models("m")


def test_the_client_retries_5xx_for_idempotent_calls_only():
    calls = {"status": 0, "start": 0}
    app = Flask("flaky")

    @app.get("/status")
    def status():
        calls["status"] += 1
        if calls["status"] < 3:
            return jsonify({"error": "overloaded", "message": "try later", "details": {}}), 503
        return jsonify(
            {
                "instance_id": "x",
                "model_type": "m",
                "replicas_running": 1,
                "queue_size": 0,
                "status": "running",
            }
        )

    @app.post("/models/start")
    def start():
        calls["start"] += 1
        return jsonify({"error": "overloaded", "message": "try later", "details": {}}), 503

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        with TaskInstanceClient(f"http://127.0.0.1:{server.server_port}", backoff=0.01) as c:
            assert c.status().instance_id == "x"
            with pytest.raises(InstanceUnavailable) as err:
                c.start_models("m")
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
    assert calls == {"status": 3, "start": 1}
    assert err.value.status_code == 503 and err.value.code == "overloaded"


# ---------------------------------------------------------------- registration

REGISTRATION_FIELDS = {
    "name",
    "url",
    "model_type",
    "hardware",
    "software_version",
    "capabilities",
    "max_concurrency",
}
HEARTBEAT_FIELDS = {"status", "active_tasks", "queue_size", "max_concurrency", "counters", "tasks"}


def _registration(port: int) -> dict:
    return requests.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["registration"]


def test_registration_is_retried_while_kiln_is_down_and_succeeds_once_it_comes_up():
    kiln_port = free_port()
    args = [
        *FAST,
        "--kiln-url",
        f"http://127.0.0.1:{kiln_port}",
        "--heartbeat-interval",
        "0.1",
        "--registration-backoff-max",
        "0.2",
        "--name",
        "gpu-box-1",
        "--hardware",
        "A100",
        "--capability",
        "chat",
        "--capability",
        "m",
        "--max-concurrency",
        "3",
    ]
    with InstanceProcess(args, env={"KILN_API_TOKEN": "s3cret"}) as proc:
        wait_until(lambda: _registration(proc.port)["registration_attempts"] >= 3, what="retries")
        assert not _registration(proc.port)["registered"]
        # The instance serves tasks while Kiln is away.
        with TaskInstanceClient(proc.url) as c:
            assert c.wait_for_result(c.enqueue({}, {"output_tokens": 1}).task_id).succeeded
        with KilnDouble(kiln_port) as kiln:
            wait_until(lambda: kiln.heartbeats_for("inst-1"), what="first heartbeat")
            body = kiln.registrations[0]
            assert set(body) == REGISTRATION_FIELDS
            assert body == {
                "name": "gpu-box-1",
                "url": proc.url,
                "model_type": "m",
                "hardware": "A100",
                "software_version": "kiln-taskinstance/0.1.0",
                "capabilities": ["chat", "m"],
                "max_concurrency": 3,
            }
            assert set(kiln.authorizations) == {"Bearer s3cret"}
            state = _registration(proc.port)
            assert state["registered"] and state["kiln_instance_id"] == "inst-1"
            assert proc.stop() == 0


def test_heartbeats_carry_status_counters_and_task_progress():
    with KilnDouble() as kiln:
        args = [*FAST, "--kiln-url", kiln.url, "--heartbeat-interval", "0.05"]
        with InstanceProcess(args) as proc, TaskInstanceClient(proc.url) as c:
            task_id = c.enqueue({"prompt": "hb"}, {"output_tokens": 2000}).task_id  # ≈ 0.6 s

            def running_report():
                for body in kiln.heartbeats_for("inst-1"):
                    for task in body["tasks"]:
                        if task["task_id"] == task_id and task["status"] == "running":
                            if task["progress"] > 0:
                                return body, task
                return None

            body, task = wait_until(running_report, what="a heartbeat showing the task running")
            assert set(body) == HEARTBEAT_FIELDS
            assert set(body["counters"]) == {"completed", "failed", "enqueued"}
            assert set(task) == {"task_id", "status", "progress", "message"}
            assert body["status"] == "running" and body["active_tasks"] == 1
            assert body["max_concurrency"] == 4 and body["counters"]["enqueued"] == 1
            assert 0 < task["progress"] < 1 and "tokens" in task["message"]

            c.wait_for_result(task_id, timeout=15)
            wait_until(
                lambda: any(
                    t
                    == {
                        "task_id": task_id,
                        "status": "completed",
                        "progress": 1.0,
                        "message": "completed",
                    }
                    for b in kiln.heartbeats_for("inst-1")
                    for t in b["tasks"]
                ),
                what="the completion reported in a heartbeat",
            )
            last = kiln.heartbeats_for("inst-1")[-1]
            assert last["counters"]["completed"] == 1 and last["active_tasks"] == 0
            assert proc.stop(signal.SIGTERM) == 0
        assert kiln.heartbeats_for("inst-1")[-1]["status"] == "offline"


def test_a_404_heartbeat_makes_the_instance_register_again():
    with KilnDouble() as kiln:
        args = [*FAST, "--kiln-url", kiln.url, "--heartbeat-interval", "0.05"]
        with InstanceProcess(args) as proc:
            wait_until(lambda: kiln.heartbeats_for("inst-1"), what="first heartbeat")
            kiln.forget()
            wait_until(lambda: kiln.heartbeats_for("inst-2"), what="heartbeat under the new id")
            assert len(kiln.registrations) == 2
            assert kiln.registrations[1] == kiln.registrations[0]
            assert _registration(proc.port)["kiln_instance_id"] == "inst-2"


def test_sigterm_lets_the_running_task_finish_before_exiting():
    with InstanceProcess([*FAST]) as proc, TaskInstanceClient(proc.url) as c:
        task_id = c.enqueue({}, {"duration_ms": 50_000}).task_id  # 500 ms
        wait_until(lambda: c.result(task_id).status == "running", what="task running")
        began = time.monotonic()
        assert proc.stop(signal.SIGTERM) == 0
        assert time.monotonic() - began >= 0.3
        assert "drain timeout" not in proc.log()
