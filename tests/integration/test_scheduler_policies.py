"""The scheduler service with real processes: policy switches at run time re-order the queue,
stats report them, and aging keeps low-priority and long work from starving."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import requests

from kiln.app.runtime import Kiln
from kiln.store.db import aware
from tests.conftest import wait_for
from tests.integration.test_instances_routing import (
    live_instance,
    model_task,
    serve_kiln,
    start_instance,
    wait_run,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


def started_at(kiln: Kiln, workflow_id: int) -> dict[str, dt.datetime]:
    return {
        t["name"]: aware(t["started_at"])
        for t in kiln.workflow(workflow_id)["tasks"]
        if t["started_at"] is not None
    }


def put_policy(api: str, policy: str, **params: Any) -> requests.Response:
    body: dict[str, Any] = {"policy": policy}
    if params:
        body["params"] = params
    return requests.put(f"{api}/scheduler/policy", json=body, timeout=5)


def test_policy_names_are_exact_and_a_bad_one_is_a_400(pg_kiln):
    with serve_kiln(pg_kiln) as api:
        for bad in ("priority", "SJF", "", None, 3):
            answer = requests.put(f"{api}/scheduler/policy", json={"policy": bad}, timeout=5)
            assert answer.status_code == 400, bad
            assert answer.json()["error"] == "invalid_policy"
            assert set(answer.json()) == {"error", "message", "details"}
        not_json = requests.put(
            f"{api}/scheduler/policy",
            data="x",
            headers={"Content-Type": "application/json"},
            timeout=5,
        )
        assert not_json.status_code == 400
        # A body not declared as JSON is refused before it is read (no cross-site forms).
        assert requests.put(f"{api}/scheduler/policy", data="x", timeout=5).status_code == 415
        assert put_policy(api, "Fair", bogus=1).status_code == 400
        ok = put_policy(api, "RoundRobin")
        assert ok.status_code == 200
        assert ok.json()["previous_policy"] == "FIFO"
        stats = requests.get(f"{api}/scheduler/stats", timeout=5).json()
        assert stats["policy"] == "RoundRobin"
        for key in ("total_scheduled", "context_switches", "preemptions", "active"):
            assert stats[key] == 0
        assert stats["quantum_micros"] > 0
        empty = requests.post(f"{api}/scheduler/schedule-next", timeout=5).json()
        assert empty["next_task_id"] is None and empty["message"]


def test_switching_policy_at_run_time_reorders_queued_work_and_is_reported_in_stats(
    cluster, pg_kiln
):
    # The blocker must hold the instance's one slot until the switch is checked. With the
    # suite's 3 s lease, a worker renewing late on a loaded machine lost it to recovery, the
    # slot freed and the controller sent p0 (seen once in CI); the lease is not under test.
    cluster.env["KILN_LEASE_S"] = "30"
    with serve_kiln(pg_kiln) as api:
        inst = start_instance(api, "m", "--max-concurrency", "1")
        try:
            wait_for(lambda: live_instance(api, inst.url), what="registered")
            cluster.controller()
            cluster.worker(threads=4)
            blocker = pg_kiln.submit({"name": "blocker", "tasks": [model_task("b", "m", 2500)]})
            wait_for(
                lambda: pg_kiln.workflow(blocker)["tasks"][0]["status"] == "running",
                what="the blocker running",
            )
            wf = pg_kiln.submit(
                {
                    "name": "queued",
                    "tasks": [model_task(f"p{p}", "m", 50, priority=p) for p in range(5)],
                }
            )
            fifo = requests.post(f"{api}/scheduler/schedule-next", timeout=5).json()
            assert fifo["policy"] == "FIFO"
            assert [q["name"] for q in fifo["queue"]] == ["p0", "p1", "p2", "p3", "p4"]
            assert put_policy(api, "Priority").status_code == 200
            prio = requests.post(f"{api}/scheduler/schedule-next", timeout=5).json()
            assert [q["name"] for q in prio["queue"]] == ["p4", "p3", "p2", "p1", "p0"], (
                pg_kiln.workflow(blocker)["tasks"],
                cluster.logs(),
            )
            assert prio["next"]["reason"].startswith("Priority: priority 4")
            assert pg_kiln.workflow(blocker)["tasks"][0]["status"] == "running", (
                "the blocker finished before the switch; the test proves nothing"
            )
            assert wait_run(cluster, pg_kiln, wf)["status"] == "succeeded"
            starts = started_at(pg_kiln, wf)
            assert sorted(starts, key=starts.__getitem__) == ["p4", "p3", "p2", "p1", "p0"]

            def reported() -> dict[str, Any] | None:
                stats = requests.get(f"{api}/scheduler/stats", timeout=5).json()
                return stats if stats["total_scheduled"] >= 6 else None

            stats = wait_for(reported, what="stats counting the dispatches")
            assert stats["policy"] == "Priority"
            assert stats["context_switches"] >= 1  # blocker's run, then the other workflow
            assert stats["active"] == 0
        finally:
            inst.stop()


class Feeder:
    """Submits a one-task workflow at once, then one every ``interval`` seconds until stopped.

    The first one is submitted before ``with`` returns, so at least one favoured task is queued
    right behind the victim however slowly the thread gets going on a loaded machine."""

    def __init__(self, kiln: Kiln, make: Any, interval: float = 0.1) -> None:
        self.kiln, self.make, self.interval = kiln, make, interval
        self.submitted: list[tuple[int, dt.datetime]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _submit(self) -> None:
        i = len(self.submitted)
        wf = self.kiln.submit({"name": f"feed-{i}", "tasks": [self.make(i)]})
        self.submitted.append((wf, dt.datetime.now(dt.UTC)))

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            self._submit()

    def __enter__(self) -> Feeder:
        self._submit()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def occupy(kiln: Kiln, model_type: str, duration_ms: int = 800) -> int:
    """Fill the single slot so the tasks submitted next have to queue in Kiln."""
    wf = kiln.submit({"name": "occupy", "tasks": [model_task("b", model_type, duration_ms)]})
    # Occupied once the task runs *on the instance* (placed), not merely claimed by a worker.
    wait_for(
        lambda: (t := kiln.workflow(wf)["tasks"][0])["status"] == "running" and t["instance_id"],
        what="the slot occupied",
    )
    return wf


# How much later than the aging window a task's created_at may be and still overtake: the
# policy measures waits from when a task became ready, a moment after its created_at.
CLOCK_MARGIN_S = 0.5


def assert_not_starved(
    kiln: Kiln,
    victim: int,
    feeder: Feeder,
    window_s: float,
    blocker: int | None = None,
    cluster: Any = None,
) -> None:
    """Aging bounds the victim's wait by its rule, not by the clock: newer favoured work
    overtook it (the policy was in effect), but none submitted more than ``window_s`` after
    it did (aging had made the victim first by then), while the stream still ran. Counting
    by submit times keeps this true however slowly a loaded machine runs the tasks."""
    try:
        task = wait_for(
            lambda: (t := kiln.workflow(victim)["tasks"][0])["started_at"] and t,
            timeout=90,
            what="the victim to start",
        )
    except AssertionError as exc:
        row = kiln.workflow(victim)["tasks"][0]
        raise AssertionError(
            f"{exc}; the victim {row}; blocker {kiln.workflow(blocker)['tasks'] if blocker else None}"
            f"; {len(feeder.submitted)} favoured submitted"
            + (f"\n{cluster.logs()}" if cluster else "")
        ) from None
    created, started = aware(task["created_at"]), aware(task["started_at"])
    later = []
    for wf, _ in feeder.submitted:
        t = kiln.workflow(wf)["tasks"][0]
        if aware(t["created_at"]) > created:
            later.append((aware(t["created_at"]) - created, t))
    overtook = [
        (after, t) for after, t in later if t["started_at"] and aware(t["started_at"]) < started
    ]
    seen = [
        (t["name"], str(t["created_at"])[11:23], str(t["started_at"])[11:23], t["predicted_s"])
        for _, t in later[:8]
    ]
    assert overtook, (
        f"no newer favoured task ran first: the policy was not in effect; victim "
        f"{str(task['created_at'])[11:23]} -> {str(task['started_at'])[11:23]}; others {seen}"
        f" blocker {kiln.workflow(blocker)['tasks'] if blocker else None}"
    )
    too_late = [
        (t["name"], round(after.total_seconds(), 2))
        for after, t in overtook
        if after.total_seconds() > window_s + CLOCK_MARGIN_S
    ]
    assert not too_late, (
        f"submitted after aging made the victim first, yet ran before it: {too_late}; "
        f"the victim's attempts {task['attempt_history']}"
        + (f"\n{cluster.logs()}" if cluster else "")
    )
    assert feeder.thread.is_alive(), "the stream ended first: starvation was not tested"


def test_priority_aging_lets_a_low_priority_task_run_before_work_submitted_past_its_window(
    cluster, pg_kiln
):
    # Aging counts from when the victim became ready: a lease lost to recovery on a loaded
    # machine (the suite's is 3 s) would make it ready again, later. The lease is not under test.
    cluster.env["KILN_LEASE_S"] = "30"
    with serve_kiln(pg_kiln) as api:
        inst = start_instance(api, "m", "--max-concurrency", "1")
        try:
            wait_for(lambda: live_instance(api, inst.url), what="registered")
            # 10 priority levels per second of waiting: the low task overtakes every
            # priority-5 task submitted more than 0.5 s after it, so it waits for the blocker
            # and the ~5 submitted in that half second, and no longer.
            assert put_policy(api, "Priority", aging_per_minute=600).status_code == 200
            cluster.controller()
            cluster.worker(threads=4)
            b = occupy(pg_kiln, "m")
            low = pg_kiln.submit({"name": "low", "tasks": [model_task("low", "m", 100)]})
            with Feeder(pg_kiln, lambda i: model_task(f"high{i}", "m", 150, priority=5)) as f:
                assert_not_starved(pg_kiln, low, f, window_s=0.5, blocker=b, cluster=cluster)
        finally:
            inst.stop()


def test_shortest_predicted_aging_lets_a_long_task_run_before_work_submitted_past_its_window(
    cluster, pg_kiln, tmp_path: Path
):
    predictions = tmp_path / "predictions.json"
    predictions.write_text(
        json.dumps(
            [
                {
                    "status": "success",
                    "model_type": model_type,
                    "model_info": {"hardware": "simulated"},
                    "quantiles": [0.1, 0.25, 0.5, 0.75, 0.9],
                    "quantile_predictions": values,
                }
                for model_type, values in (
                    ("long", [1500, 1800, 2000, 2200, 2500]),
                    ("short", [80, 90, 100, 110, 120]),
                )
            ]
        )
    )
    cluster.env["KILN_PREDICTIONS_FILE"] = str(predictions)
    cluster.env["KILN_PREDICTOR_MIN_SAMPLES"] = "1000"  # keep the lookup's sizes
    cluster.env["KILN_LEASE_S"] = "30"  # as for Priority aging above
    with serve_kiln(pg_kiln) as api:
        inst = start_instance(
            api, "m", "--capability", "long", "--capability", "short", "--max-concurrency", "1"
        )
        try:
            wait_for(lambda: live_instance(api, inst.url), what="registered")
            # Every second of waiting forgives 2 s of predicted size: the long task (2 s)
            # overtakes every short one (0.1 s) submitted more than 0.95 s after it. The
            # window covers the wait for its prediction below, so the first short task
            # (submitted as the feeder starts) is still favoured over it.
            assert put_policy(api, "ShortestPredicted", aging=2.0).status_code == 200
            cluster.controller()
            cluster.worker(threads=4)
            b = occupy(pg_kiln, "short")
            long = pg_kiln.submit({"name": "long", "tasks": [model_task("long", "long", 100)]})
            wait_for(
                lambda: pg_kiln.workflow(long)["tasks"][0]["predicted_s"],
                what="the long task's prediction",
            )
            with Feeder(pg_kiln, lambda i: model_task(f"short{i}", "short", 150)) as f:
                assert_not_starved(pg_kiln, long, f, window_s=0.95, blocker=b, cluster=cluster)
            task = pg_kiln.workflow(long)["tasks"][0]
            assert task["predicted"]["method"] == "lookup"
            assert task["predicted_s"] == pytest.approx(2.0, rel=0.05)
        finally:
            inst.stop()
