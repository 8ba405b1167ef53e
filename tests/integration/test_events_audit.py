"""The events audit log as an operator queries it (migration 0013): numeric entity ids, and
who made each change and why."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

import tests.handlers  # noqa: F401 - registers the test handlers
from kiln.app.runtime import Kiln
from kiln.core import audit
from kiln.core.access import hash_token
from kiln.web.app import create_app
from tests.conftest import fast_settings


def events(kiln: Kiln, where: str) -> list[dict]:
    query = sa.text(
        "SELECT entity, entity_id, entity_key, from_status, to_status, actor, reason "
        f"FROM events WHERE {where} ORDER BY id"
    )
    return kiln.read(lambda c: [dict(r) for r in c.execute(query).mappings()])


@pytest.fixture
def process_actor():
    """Restore the process's actor after a test that names one."""
    before = audit.process_actor()
    yield audit.set_process_actor
    audit.set_process_actor(before)


def test_entity_ids_are_numbers_so_a_list_of_ids_finds_them(kiln):
    runs = [kiln.submit({"name": f"r{i}", "tasks": [{"name": "A", "handler": "noop"}]})
            for i in range(3)]  # fmt: skip
    task_ids = [d.task_id for d in kiln.dispatch(10)]
    assert len(task_ids) == 3
    wanted = task_ids[0], task_ids[2]
    found = events(kiln, f"entity = 'task' AND entity_id IN ({wanted[0]}, {wanted[1]})")
    assert [(e["entity_id"], e["to_status"]) for e in found] == [(i, "queued") for i in wanted]
    assert all(isinstance(e["entity_id"], int) for e in found)
    runs_found = events(kiln, f"entity = 'workflow' AND entity_id IN ({runs[1]})")
    assert [(e["from_status"], e["to_status"]) for e in runs_found] == [("pending", "running")]


def test_an_operation_is_keyed_by_its_ic_id_and_its_cancel_says_why(kiln):
    run = kiln.submit({"name": "slow", "tasks": [{"name": "S", "handler": "noop"}]})
    client = create_app(kiln).test_client()
    ic_id = client.post(f"/workflows/{run}/cancel").get_json()["ic_id"]
    assert kiln.operations.apply_next("controller:host:2:def")["status"] == "completed"
    found = events(kiln, f"entity = 'operation' AND entity_key = '{ic_id}'")
    assert [e["to_status"] for e in found] == ["processing", "completed"]
    assert {e["entity_id"] for e in found} == {None}
    (cancelled,) = events(kiln, f"entity = 'workflow' AND entity_id = {run}")
    assert cancelled["to_status"] == "cancelled"
    if kiln.dialect == "postgresql":  # SQLite records no reason (see the last test)
        assert cancelled["reason"] == "cancel requested"


@pytest.mark.postgres
def test_each_change_names_who_made_it_and_why(pg_url, process_actor):
    sent: list = []
    kiln = Kiln(fast_settings(database_url=pg_url, api_token="s3cret"), sender=sent.extend)
    try:
        client = create_app(kiln).test_client()
        # The API submits to an idle queue: its tasks are leased in the same statement.
        got = client.post(
            "/workflows",
            json={"name": "audited", "tasks": [{"name": "A", "handler": "noop"},
                                               {"name": "B", "handler": "noop"}]},
            headers={"Authorization": "Bearer s3cret"},
        )  # fmt: skip
        assert got.status_code in (200, 201), got.get_json()
        run = got.get_json()["id"]
        by_api = events(kiln, f"workflow_id = {run}")
        api_actor = f"api token {hash_token('s3cret')[:12]}"
        assert {e["actor"] for e in by_api} == {api_actor}
        assert "s3cret" not in api_actor

        # A worker's claims name the worker (set once per pooled connection).
        process_actor("worker:host:1:abc")
        a, b = sorted(sent, key=lambda d: d.task_id)
        kiln.claim([(a.task_id, a.attempt), (b.task_id, b.attempt)], "worker:host:1:abc")
        claims = events(kiln, f"workflow_id = {run} AND to_status = 'running' AND entity = 'task'")
        assert [(e["entity"], e["actor"]) for e in claims] == [("task", "worker:host:1:abc")] * 2

        # Recovery names itself, and why.
        kiln.txn(
            lambda c: c.execute(
                sa.text(
                    "UPDATE tasks SET lease_expires_at = now() - interval '1 minute' "
                    f"WHERE id = {a.task_id}"
                )
            )
        )
        process_actor("controller:host:2:def")
        assert kiln.recover().lost == [a.task_id]
        (lost,) = events(kiln, f"entity_id = {a.task_id} AND from_status = 'running'")
        assert (lost["to_status"], lost["actor"], lost["reason"]) == (
            "retrying",
            "recovery",
            "lease expired",
        )

        # A cancel says so; the actor is whoever ran it (here the CLI).
        with audit.acting(actor="cli"):
            kiln.cancel(run)
        cancelled = events(kiln, f"workflow_id = {run} AND to_status = 'cancelled'")
        assert cancelled and {(e["actor"], e["reason"]) for e in cancelled} == {
            ("cli", "cancel requested")
        }
        process_actor(None)
        kiln.submit({"name": "later", "tasks": [{"name": "C", "handler": "noop"}]})
        (later,) = [e for e in events(kiln, "entity = 'task'") if e["to_status"] == "queued"][-1:]
        assert later["reason"] is None and later["actor"] is None
    finally:
        kiln.close()


def test_sqlite_records_no_actor_as_documented(sqlite_url):
    kiln = Kiln(fast_settings(database_url=sqlite_url))
    try:
        run = kiln.submit({"name": "r", "tasks": [{"name": "A", "handler": "noop"}]})
        with audit.acting(actor="cli"):
            kiln.cancel(run)
        found = events(kiln, f"workflow_id = {run}")
        assert [e["to_status"] for e in found if e["entity"] == "workflow"] == ["cancelled"]
        assert {(e["actor"], e["reason"]) for e in found} == {(None, None)}
    finally:
        kiln.close()
