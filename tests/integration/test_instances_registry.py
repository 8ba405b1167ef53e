"""The instance registry and routing in the engine, on PostgreSQL and on the embedded SQLite:
which tasks are dispatched, and what happens to running tasks when their instance goes."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from kiln.app.runtime import Kiln
from kiln.store.db import utcnow
from kiln.workers.scheduling_hooks import note_unroutable, scheduler_order


def register(kiln: Kiln, model_type: str, port: int, *capabilities: str) -> int:
    return kiln.instances.register(
        {
            "name": f"{model_type}-{port}",
            "url": f"http://127.0.0.1:{port}",
            "model_type": model_type,
            "capabilities": list(capabilities),
            "max_concurrency": 2,
        }
    )["id"]


def submit(kiln: Kiln, *model_types: str) -> int:
    return kiln.submit(
        {
            "name": "w",
            "tasks": [
                {"name": f"t{i}-{m}", "model_type": m, "params": {"input_data": i}}
                for i, m in enumerate(model_types)
            ],
        }
    )


def tasks_by_name(kiln: Kiln, wf: int) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in kiln.workflow(wf)["tasks"]}


def claim_and_place(kiln: Kiln, wf: int) -> list[Any]:
    dispatched = kiln.dispatch(10)
    claimed = kiln.claim([(d.task_id, d.attempt) for d in dispatched], "worker-1")
    for c in claimed:
        assert c.model_type is not None
        assert kiln.instances.place(c)
    return claimed


def test_only_tasks_a_live_instance_serves_are_dispatched_and_the_others_say_why(kiln):
    register(kiln, "alpha", 1, "summarise")
    wf = submit(kiln, "alpha", "summarise", "beta")
    dispatched = {d.task_id for d in kiln.dispatch(10)}
    note_unroutable(kiln)  # what the controller's pass runs after dispatching
    by_name = tasks_by_name(kiln, wf)
    assert dispatched == {by_name["t0-alpha"]["id"], by_name["t1-summarise"]["id"]}
    assert by_name["t2-beta"]["status"] == "ready"
    assert by_name["t2-beta"]["waiting_reason"] == "no live instance serves model_type beta"
    register(kiln, "beta", 2)
    assert [d.task_id for d in kiln.dispatch(10)] == [by_name["t2-beta"]["id"]]
    assert tasks_by_name(kiln, wf)["t2-beta"]["waiting_reason"] is None


def test_a_lost_instance_gets_no_work_its_running_tasks_retry_and_a_heartbeat_revives_it(
    kiln,
):
    inst = register(kiln, "m", 1)
    wf = submit(kiln, "m", "m")
    claim_and_place(kiln, wf)
    later = utcnow() + dt.timedelta(seconds=kiln.instances.lost_after_s() + 1)
    lost = kiln.instances.detect_lost(now=later)
    assert sorted(lost[inst]) == sorted(t["id"] for t in tasks_by_name(kiln, wf).values())
    for t in tasks_by_name(kiln, wf).values():
        assert t["status"] == "retrying"
        assert t["attempt_history"][0]["outcome"] == "lost"
        assert f"instance {inst} lost" in t["error"]
    listed = kiln.instances.all()
    assert (listed[0]["status"], listed[0]["live"]) == ("lost", False)
    assert kiln.instances.free_slots() == {}
    kiln.instances.heartbeat(inst, {"status": "running", "max_concurrency": 3})
    listed = kiln.instances.all()
    assert (listed[0]["status"], listed[0]["live"], listed[0]["slots"]) == ("running", True, 3)


@pytest.mark.parametrize("how", ["offline", "deregistered"])
def test_an_instance_leaving_requeues_the_tasks_running_on_it(kiln, how):
    inst = register(kiln, "m", 1)
    wf = submit(kiln, "m")
    claim_and_place(kiln, wf)
    if how == "offline":
        kiln.instances.heartbeat(inst, {"status": "offline"})
    else:
        kiln.instances.deregister(inst)
        assert kiln.instances.all() == []
    (task,) = tasks_by_name(kiln, wf).values()
    assert task["status"] == "retrying"
    assert task["attempt_history"][0]["outcome"] == "lost"


def test_heartbeat_progress_reaches_only_the_attempt_running_there(kiln):
    inst = register(kiln, "m", 1)
    wf = submit(kiln, "m")
    (claimed,) = claim_and_place(kiln, wf)
    body = {
        "status": "running",
        "tasks": [
            {"task_id": f"kiln-{claimed.id}-{claimed.attempt}", "status": "running",
             "progress": 0.4, "message": "decoding"},
            {"task_id": f"kiln-{claimed.id}-{claimed.attempt + 1}", "status": "running",
             "progress": 0.9, "message": "not this attempt"},
            {"task_id": "someone-else", "status": "running", "progress": 0.1},
        ],
    }  # fmt: skip
    out = kiln.instances.heartbeat(inst, body)
    assert out["progress_updates"] == 1
    (task,) = tasks_by_name(kiln, wf).values()
    assert (task["progress"], task["progress_message"]) == (0.4, "decoding")


def test_a_backlog_behind_busy_instances_keeps_saying_so_while_one_slot_frees(kiln):
    from kiln.core.execution import Outcome

    register(kiln, "m", 1)  # two slots
    running = claim_and_place(kiln, submit(kiln, "m", "m"))
    backlog = submit(kiln, *["m"] * 5)
    busy = "every live instance serving model_type m is busy; waiting for a free slot"
    kiln.instances.note_busy()
    assert {t["waiting_reason"] for t in tasks_by_name(kiln, backlog).values()} == {busy}
    now = utcnow()
    kiln.record([Outcome(running[0], ok=True, started_at=now, finished_at=now, result=1)])
    # One free slot for five tasks: four of them still wait, whichever the next dispatch
    # sends. Their reasons stay as they are (they were all cleared, and written back once
    # the slot was taken: the whole backlog rewritten twice per finished task).
    kiln.instances.note_busy()
    assert {t["waiting_reason"] for t in tasks_by_name(kiln, backlog).values()} == {busy}
    (sent,) = kiln.dispatch(10, order=scheduler_order(kiln))
    reasons = {t["id"]: t["waiting_reason"] for t in tasks_by_name(kiln, backlog).values()}
    assert reasons.pop(sent.task_id) is None
    assert set(reasons.values()) == {busy}
    # Room for every waiting task (two more instances): none says it waits for one any more.
    register(kiln, "m", 2)
    register(kiln, "m", 3)
    now = utcnow()
    kiln.record([Outcome(running[1], ok=True, started_at=now, finished_at=now, result=1)])
    kiln.instances.note_busy()
    assert {t["waiting_reason"] for t in tasks_by_name(kiln, backlog).values()} == {None}
