"""A submitter that can send (``Kiln.sender``) leases a new run's first tasks itself when the
queue is idle (``kiln.store.submit``); on PostgreSQL that is one statement. The audit trail and the
guards are those of the controller's dispatch, on both databases."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from kiln.app.runtime import Kiln
from kiln.core.builder import Workflow
from tests.conftest import fast_settings


@pytest.fixture
def sending(database_url: str) -> Iterator[Kiln]:
    k = Kiln(fast_settings(database_url=database_url), pool_size=2, sender=lambda d: None)
    sent: list = []
    k.sender = sent.extend
    k.sent = sent  # type: ignore[attr-defined]
    yield k
    k.close()


def _events(k: Kiln, entity: str, entity_id: int) -> list[tuple]:
    q = sa.text(
        "SELECT from_status, to_status, attempt FROM events "
        "WHERE entity = :e AND entity_id = :id ORDER BY id"
    )
    return [tuple(r) for r in k.read(lambda c: c.execute(q, {"e": entity, "id": str(entity_id)}))]


def _two_step(name: str = "direct") -> Workflow:
    wf = Workflow(name)
    first = wf.add("echo", name="first", params={"value": 1}, priority=1)
    wf.add("echo", name="second", params={"value": 2}, priority=5)
    wf.add("echo", name="after", params={"value": 3}, depends_on=[first])
    return wf


def test_a_run_submitted_to_an_idle_queue_is_leased_at_once_with_the_events_a_dispatch_writes(
    sending,
):
    wf_id = sending.submit(_two_step(), check_handlers=False)
    run = sending.workflow(wf_id)
    by_name = {t["name"]: t for t in run["tasks"]}
    assert run["status"] == "running"
    assert {n: t["status"] for n, t in by_name.items()} == {
        "first": "queued",
        "second": "queued",
        "after": "pending",
    }
    # Sent highest priority first, as the controller would order them, each at attempt 1.
    assert [(d.task_id, d.attempt, d.workflow_id) for d in sending.sent] == [
        (by_name["second"]["id"], 1, wf_id),
        (by_name["first"]["id"], 1, wf_id),
    ]
    for name in ("first", "second"):
        assert _events(sending, "task", by_name[name]["id"]) == [("ready", "queued", 0)]
    assert _events(sending, "task", by_name["after"]["id"]) == []
    assert _events(sending, "workflow", wf_id) == [("pending", "running", None)]
    leased = sending.read(
        lambda c: c.execute(
            sa.text(
                "SELECT count(*) FROM tasks WHERE workflow_id = :w AND status = 'queued' "
                "AND lease_expires_at > queued_at AND dispatch_count = 1"
            ),
            {"w": wf_id},
        ).scalar()
    )
    assert leased == 2


def test_a_run_submitted_while_work_waits_for_the_controller_is_left_ready(sending):
    waiting = Workflow("waiting")
    waiting.add(name="t", model_type="no-such-model")  # needs placement: stays ready
    first = sending.submit(waiting, check_handlers=False)
    assert sending.sent == []
    assert sending.workflow(first)["tasks"][0]["status"] == "ready"

    second = sending.submit(_two_step(), check_handlers=False)
    run = sending.workflow(second)
    assert sending.sent == []
    assert run["status"] == "pending"
    assert sorted(t["status"] for t in run["tasks"]) == ["pending", "ready", "ready"]
    assert _events(sending, "workflow", second) == []


def test_resubmitting_with_a_used_idempotency_key_leases_nothing_more(sending):
    wf_id = sending.submit(_two_step(), idempotency_key="once", check_handlers=False)
    assert len(sending.sent) == 2
    again, created = sending.submit_with_status(
        _two_step(), idempotency_key="once", check_handlers=False
    )
    assert (again, created) == (wf_id, False)
    assert len(sending.sent) == 2
    total = sending.read(lambda c: c.execute(sa.text("SELECT count(*) FROM tasks")).scalar())
    assert total == 3
