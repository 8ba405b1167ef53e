"""Batch submit: ``Kiln.submit_many`` and ``POST /workflows/batch`` store up to 1,000 runs in
one transaction, all or nothing, each with its own idempotency key; on both databases."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from kiln.app.runtime import SUBMIT_BATCH_MAX, Kiln
from kiln.core.clock import aware
from kiln.core.errors import IdempotencyKeyReused, InvalidDefinition, LimitExceeded
from kiln.core.states import WORKFLOW_TERMINAL
from kiln.web.app import create_app
from tests.conftest import wait_for

ECHO = "tests.handlers:echo"


def one_task(n: int) -> dict:
    return {"name": f"run-{n}", "tasks": [{"name": "only", "handler": ECHO, "params": {"n": n}}]}


def chain(n: int) -> dict:
    return {
        "name": f"chain-{n}",
        "tasks": [
            {"name": "A", "handler": ECHO, "params": {"n": n}},
            {"name": "B", "handler": ECHO, "params": {"n": n + 1}, "depends_on": ["A"]},
        ],
    }


def counts(k: Kiln) -> tuple[int, int, int]:
    q = sa.text(
        "SELECT (SELECT count(*) FROM workflows), (SELECT count(*) FROM tasks), "
        "(SELECT count(*) FROM task_dependencies)"
    )
    return tuple(k.read(lambda c: c.execute(q).one()))  # type: ignore[return-value]


@pytest.fixture
def client(kiln: Kiln, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    monkeypatch.delenv("KILN_API_TOKEN", raising=False)
    yield create_app(kiln).test_client()


def test_a_batch_stores_each_run_with_its_tasks_and_edges_in_order_and_they_all_run(kiln, embedded):
    definitions = [one_task(0), chain(1), one_task(2)]
    ids = kiln.submit_many(definitions)
    assert len(ids) == 3 and ids == sorted(ids) and len(set(ids)) == 3
    runs = [kiln.workflow(i) for i in ids]
    assert [r["name"] for r in runs] == ["run-0", "chain-1", "run-2"]
    assert {t["name"]: t["depends_on"] for t in runs[1]["tasks"]} == {"A": [], "B": ["A"]}
    done = [
        wait_for(
            lambda i=i: (r := kiln.workflow(i))["status"] in WORKFLOW_TERMINAL and r,
            what=f"run {i} to finish",
        )
        for i in ids
    ]
    assert [r["status"] for r in done] == ["succeeded"] * 3
    assert {t["name"]: t["result"] for t in done[1]["tasks"]} == {
        "A": {"n": 1},
        "B": {"n": 2},
    }


def test_an_invalid_definition_refuses_the_whole_batch_naming_its_index(kiln):
    bad = {"name": "bad", "tasks": [{"name": "A", "handler": ECHO, "depends_on": ["Nope"]}]}
    with pytest.raises(InvalidDefinition) as caught:
        kiln.submit_many([one_task(0), one_task(1), bad, one_task(3)])
    assert caught.value.details["index"] == 2
    assert caught.value.message.startswith("workflows[2]: ")
    assert counts(kiln) == (0, 0, 0)


def test_a_batch_larger_than_the_limit_is_refused(kiln):
    with pytest.raises(LimitExceeded):
        kiln.submit_many([one_task(i) for i in range(SUBMIT_BATCH_MAX + 1)])
    assert counts(kiln) == (0, 0, 0)


def test_each_key_replays_its_own_run_and_a_key_reused_on_another_definition_writes_nothing(
    kiln,
):
    first = kiln.submit_many([one_task(0), chain(1)], idempotency_keys=["k0", None])
    # The same key on the same definition is that run again, in a batch or alone.
    again = kiln.submit_many_with_status([one_task(0), one_task(2)], idempotency_keys=["k0", "k2"])
    assert again[0] == (first[0], False) and again[1][1] is True
    assert kiln.submit_with_status(one_task(2), idempotency_key="k2") == (again[1][0], False)
    before = counts(kiln)
    with pytest.raises(IdempotencyKeyReused) as caught:
        kiln.submit_many([one_task(3), one_task(99)], idempotency_keys=["k3", "k0"])
    assert caught.value.details["index"] == 1
    assert counts(kiln) == before  # run 3 was written and rolled back with the batch
    assert kiln.workflows(name_contains="run-3") == []


def test_one_key_twice_in_a_batch_makes_one_run(kiln):
    ids = kiln.submit_many([one_task(5), one_task(5)], idempotency_keys=["same", "same"])
    assert ids[0] == ids[1]
    assert counts(kiln)[0] == 1


def test_a_thousand_single_task_runs_are_stored_in_one_call(kiln):
    ids = kiln.submit_many([one_task(i) for i in range(SUBMIT_BATCH_MAX)])
    assert len(set(ids)) == SUBMIT_BATCH_MAX
    assert counts(kiln) == (SUBMIT_BATCH_MAX, SUBMIT_BATCH_MAX, 0)
    ready = kiln.read(
        lambda c: c.execute(
            sa.text("SELECT count(*) FROM tasks WHERE status = 'ready' AND ready_at IS NOT NULL")
        ).scalar()
    )
    assert ready == SUBMIT_BATCH_MAX


# --- over HTTP ------------------------------------------------------------------------


def test_post_workflows_batch_answers_each_run_and_replays_by_key(client, kiln):
    body = {
        "workflows": [
            {"definition": one_task(0), "idempotency_key": "h0"},
            {"definition": chain(1)},
        ]
    }
    r = client.post("/workflows/batch", json=body)
    assert r.status_code == 201, r.get_json()
    got = r.get_json()["workflows"]
    assert [w["created"] for w in got] == [True, True]
    assert kiln.run(got[1]["id"])["name"] == "chain-1"
    # The same key on POST /workflows names the same run.
    single = client.post("/workflows", json=one_task(0), headers={"Idempotency-Key": "h0"})
    assert single.status_code == 200 and single.get_json()["id"] == got[0]["id"]
    replay = client.post("/workflows/batch", json={"workflows": body["workflows"][:1]})
    assert replay.status_code == 200
    assert replay.get_json() == {"workflows": [{"id": got[0]["id"], "created": False}]}


def test_post_workflows_batch_refuses_a_bad_definition_by_index_and_stores_nothing(client, kiln):
    bad_graph = {"name": "x", "tasks": [{"name": "A", "handler": ECHO, "depends_on": ["A"]}]}
    r = client.post(
        "/workflows/batch",
        json={"workflows": [{"definition": one_task(0)}, {"definition": bad_graph}]},
    )
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["details"]["index"] == 1 and "workflows[1]" in r.get_json()["message"]
    # A definition the schema refuses: the field path names the index too.
    r = client.post(
        "/workflows/batch",
        json={"workflows": [{"definition": one_task(0)}, {"definition": {"name": "no tasks"}}]},
    )
    assert r.status_code in (400, 422), r.get_json()
    assert "workflows[1].definition.tasks" in r.get_json()["details"]["fields"]
    r = client.post("/workflows/batch", json={"workflows": [{"definition": one_task(0)}] * 1001})
    assert r.status_code == 422 and r.get_json()["error"] == "validation_error"
    reused = client.post(
        "/workflows/batch",
        json={"workflows": [{"definition": one_task(1), "idempotency_key": "z"}]},
    )
    assert reused.status_code == 201
    r = client.post(
        "/workflows/batch",
        json={
            "workflows": [
                {"definition": one_task(2)},
                {"definition": one_task(3), "idempotency_key": "z"},
            ]
        },
    )
    assert r.status_code == 422 and r.get_json()["error"] == "idempotency_key_reused"
    assert r.get_json()["details"]["index"] == 1
    assert counts(kiln)[0] == 1


SUMMARY_FIELDS = ("id", "name", "status", "error", "created_at", "started_at", "finished_at")


def _instants(run: dict) -> dict:
    """The run with its timestamps as instants (SQLite reads them back naive, meaning UTC)."""
    return {
        k: aware(dt.datetime.fromisoformat(v)) if k.endswith("_at") and v else v
        for k, v in run.items()
    }


@pytest.mark.parametrize("sends", [False, True], ids=["pending", "leased"])
def test_post_workflows_answers_the_run_exactly_as_it_is_stored(database_url, monkeypatch, sends):
    """The answer is built from the write (no read after the insert); it must match what a
    read of the run shows, for a run left to the controllers and one leased at once."""
    from tests.conftest import fast_settings

    monkeypatch.delenv("KILN_API_TOKEN", raising=False)
    sent: list = []
    k = Kiln(fast_settings(database_url=database_url), sender=sent.extend if sends else None)
    try:
        client = create_app(k).test_client()
        r = client.post("/workflows", json=one_task(7), headers={"Idempotency-Key": "s"})
        assert r.status_code == 201, r.get_json()
        answered = r.get_json()
        stored = client.get(f"/workflows/{answered['id']}").get_json()
        assert _instants(answered) == _instants({f: stored[f] for f in SUMMARY_FIELDS})
        assert answered["status"] == ("running" if sends else "pending")
        assert len(sent) == (1 if sends else 0)
        replay = client.post("/workflows", json=one_task(7), headers={"Idempotency-Key": "s"})
        assert replay.status_code == 200 and replay.get_json() == answered
    finally:
        k.close()


SELF_DEPENDENT = {"name": "x", "tasks": [{"name": "A", "handler": ECHO, "depends_on": ["A"]}]}
NULL_PRIORITY = {"name": "b", "tasks": [{"name": "t", "handler": ECHO, "priority": None}]}
# POST /workflows/batch validates each definition once, with the engine, and runs the full
# schema only when something is refused: each body is answered as validating it with the schema
# first, then the engine, answered it (these answers were recorded from that order).
REFUSED_BATCHES = [
    ("a list", [1], 422, "validation_error", "body"),
    ("workflows not a list", {"workflows": "x"}, 422, "validation_error", "workflows"),
    ("no workflows", {"workflows": []}, 422, "validation_error", "workflows"),
    ("an unknown field", {"workflows": [{"definition": one_task(0)}], "x": 1}, 422,
     "validation_error", "x"),
    ("an item without a definition", {"workflows": [{"idempotency_key": "k"}]}, 400,
     "missing_field", "workflows[0].definition"),
    ("an unknown item field", {"workflows": [{"definition": one_task(0), "x": 1}]}, 422,
     "validation_error", "workflows[0].x"),
    ("a definition not an object", {"workflows": [{"definition": "x"}]}, 422,
     "validation_error", "workflows[0].definition"),
    ("a null definition", {"workflows": [{"definition": None}]}, 422, "validation_error",
     "workflows[0].definition"),
    ("an empty key", {"workflows": [{"definition": one_task(0), "idempotency_key": ""}]}, 422,
     "validation_error", "workflows[0].idempotency_key"),
    ("a null key", {"workflows": [{"definition": one_task(0), "idempotency_key": None}]}, 422,
     "validation_error", "workflows[0].idempotency_key"),
    ("a null optional task field",
     {"workflows": [{"definition": one_task(0)}, {"definition": NULL_PRIORITY}]}, 422,
     "validation_error", "workflows[1].definition.tasks[0].priority"),
    ("the schema's refusal before the engine's",
     {"workflows": [{"definition": SELF_DEPENDENT}, {"definition": {"name": "no tasks"}}]}, 400,
     "missing_field", "workflows[1].definition.tasks"),
    ("a definition only the engine refuses",
     {"workflows": [{"definition": one_task(0)}, {"definition": SELF_DEPENDENT}]}, 422,
     "invalid_definition", 1),
    ("a handler not allowed",
     {"workflows": [{"definition": one_task(0)},
                    {"definition": {"name": "b", "tasks": [{"name": "t", "handler": "os:system"}]}}]},
     422, "handler_not_allowed", 1),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "status", "error", "where"),
    [case[1:] for case in REFUSED_BATCHES],
    ids=[case[0] for case in REFUSED_BATCHES],
)
def test_post_workflows_batch_answers_a_refused_body_as_the_schema_then_the_engine_would(
    client, kiln, body, status, error, where
):
    r = client.post("/workflows/batch", json=body)
    assert r.status_code == status, r.get_json()
    answer = r.get_json()
    assert answer["error"] == error
    if isinstance(where, int):
        assert answer["details"]["index"] == where
        assert answer["message"].startswith(f"workflows[{where}]: ")
    else:
        assert answer["details"]["field"] == where
    assert counts(kiln)[0] == 0


def test_post_workflows_batch_answers_a_body_that_is_not_json_with_invalid_json(client, kiln):
    r = client.post("/workflows/batch", data="{nope", content_type="application/json")
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_json"
    assert counts(kiln)[0] == 0
