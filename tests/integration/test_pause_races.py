"""Pausing a run (a pipeline's stop) while a controller is leasing its tasks: a lease that
commits after the pause must not start. The claim is the guard, since it is the one statement
every start goes through: it refuses a task of a paused run and puts it back to ``ready``."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

import tests.handlers  # noqa: F401 - registers "echo"
from kiln.app.runtime import Kiln
from kiln.core.builder import Workflow
from kiln.store.dispatch import dispatch_ready_txn
from tests.conftest import fast_settings


@pytest.fixture
def k(database_url: str) -> Iterator[Kiln]:
    kiln = Kiln(fast_settings(database_url=database_url), pool_size=4)
    yield kiln
    kiln.close()


def _two_independent(k: Kiln) -> tuple[int, dict[str, int]]:
    wf = Workflow("pausable")
    wf.add("echo", name="a", params={"value": 1}, priority=5)
    wf.add("echo", name="b", params={"value": 2})
    wf_id = k.submit(wf)
    return wf_id, {t["name"]: t["id"] for t in k.workflow(wf_id)["tasks"]}


def _status(k: Kiln, wf_id: int) -> tuple[str, dict[str, str]]:
    run = k.workflow(wf_id)
    return run["status"], {t["name"]: t["status"] for t in run["tasks"]}


def _events(k: Kiln, task_id: int) -> list[tuple]:
    q = sa.text(
        "SELECT from_status, to_status FROM events "
        "WHERE entity = 'task' AND entity_id = :id ORDER BY id"
    )
    return [tuple(r) for r in k.read(lambda c: c.execute(q, {"id": str(task_id)}))]


def _start_a(k: Kiln, ids: dict[str, int]) -> None:
    """``a`` leased and claimed, so the run is ``running`` and ``b`` still ``ready``."""
    (leased,) = k.dispatch(1)
    assert leased.task_id == ids["a"]
    assert [c.id for c in k.claim([(leased.task_id, leased.attempt)], "w1")] == [ids["a"]]


def test_a_task_leased_after_its_run_was_paused_is_not_claimed_but_put_back_to_ready(k):
    wf_id, ids = _two_independent(k)
    _start_a(k, ids)
    (leased,) = k.dispatch(1)
    # The lease committed, then the pause: as if the two had raced and the lease had won
    # the commit but not the pause's look at the queued tasks.
    k.txn(lambda c: c.execute(sa.text("UPDATE workflows SET status = 'paused' WHERE id = :w"),
                              {"w": wf_id}))  # fmt: skip
    assert _status(k, wf_id) == ("paused", {"a": "running", "b": "queued"})

    assert k.claim([(leased.task_id, leased.attempt)], "w2") == []
    assert _status(k, wf_id) == ("paused", {"a": "running", "b": "ready"})
    assert _events(k, ids["b"])[-2:] == [("ready", "queued"), ("queued", "ready")]
    assert k.workflow(wf_id)["tasks"][1]["attempt_history"] == []

    k.resume(wf_id)
    (again,) = k.dispatch(5)
    assert (again.task_id, again.attempt) == (ids["b"], 1)
    assert [c.id for c in k.claim([(again.task_id, again.attempt)], "w2")] == [ids["b"]]


@pytest.mark.postgres
def test_a_controller_lease_racing_a_pause_never_starts_the_task(pg_url):
    """The real interleaving on PostgreSQL: the controller has locked and leased ``b`` but not
    committed when the pause runs; the pause sees ``b`` as ready (nothing to take back) and
    commits first; the lease commits after it."""
    k = Kiln(fast_settings(database_url=pg_url), pool_size=4)
    try:
        wf_id, ids = _two_independent(k)
        _start_a(k, ids)
        with k.engine.connect() as controller:
            leased = dispatch_ready_txn(controller, limit=5, lease_s=30)
            assert [d.task_id for d in leased] == [ids["b"]]
            pause = threading.Thread(target=k.pause, args=(wf_id,))
            pause.start()
            pause.join(timeout=10)
            blocked = pause.is_alive()
            controller.commit()
            pause.join(timeout=10)
        assert not blocked, "the pause waited for the controller's lease"
        assert _status(k, wf_id) == ("paused", {"a": "running", "b": "queued"})

        assert k.claim([(ids["b"], leased[0].attempt)], "w2") == []
        assert _status(k, wf_id) == ("paused", {"a": "running", "b": "ready"})
    finally:
        k.close()
