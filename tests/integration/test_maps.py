"""Map tasks (one task per item of an upstream result), on PostgreSQL and SQLite."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from kiln import item
from kiln.app.runtime import Kiln
from kiln.core.builder import Workflow
from kiln.core.clock import utcnow
from kiln.core.execution import Outcome
from kiln.core.task_context import current_task
from kiln.store.maps import expand_map_txn
from tests.conftest import fast_settings, wait_for
from tests.integration.test_workflows import run_to_end, tasks_by_name

HERE = "tests.integration.test_maps"


def split(n: int) -> dict:
    return {"chunks": [{"rows": list(range(i, i + 3))} for i in range(n)]}


def total(chunk: dict, index: int) -> dict:
    return {"index": index, "sum": sum(chunk["rows"])}


def template_lookalikes() -> dict:
    return {"xs": ["{{Split.result.secret}}", "{{item}}"], "secret": "leaked"}


def merge(parts: list) -> list:
    return [p["sum"] for p in parts]


def fail_on(chunk: dict, bad: int) -> int:
    if chunk["rows"][0] == bad:
        raise ValueError(f"chunk starting at {bad} is bad")
    return chunk["rows"][0]


def flaky_first_try(chunk: dict, index: int) -> dict:
    if current_task().attempt == 1 and index % 2:
        raise ConnectionError("transient")
    return {"sum": index}


def csv_workflow(n: int, handler: str = f"{HERE}:total", **map_options) -> Workflow:
    wf = Workflow("csv")
    s = wf.add(f"{HERE}:split", name="Split", params={"n": n})
    agg = wf.map(
        handler,
        name="Agg",
        over=s.result["chunks"],
        params={"chunk": item, "index": "{{index}}"},
        **map_options,
    )
    wf.add(f"{HERE}:merge", name="Merge", params={"parts": agg.result}, depends_on=[agg])
    return wf


def item_rows(kiln: Kiln, wf_id: int) -> list[dict]:
    run = kiln.workflow(wf_id)
    return [t for t in run["tasks"] if t["mapped_from"] is not None]


def test_split_map_merge_gives_the_items_results_in_item_order(kiln, embedded):
    run = run_to_end(kiln, csv_workflow(12))
    assert run["status"] == "succeeded", run["error"]
    t = tasks_by_name(run)
    expected = [sum(range(i, i + 3)) for i in range(12)]
    assert t["Merge"]["result"] == expected
    assert t["Agg"]["result"] == [{"index": i, "sum": s} for i, s in enumerate(expected)]
    items = [x for x in run["tasks"] if x["mapped_from"] == t["Agg"]["id"]]
    assert sorted((x["map_index"], x["name"]) for x in items) == [
        (i, f"Agg[{i}]") for i in range(12)
    ]
    assert all(x["status"] == "succeeded" and x["attempts"] == 1 for x in items)
    assert t["Agg"]["attempts"] == 0 and t["Agg"]["map_over"] == "{{Split.result.chunks}}"


def test_a_map_over_an_empty_list_succeeds_and_its_downstream_gets_an_empty_list(kiln, embedded):
    run = run_to_end(kiln, csv_workflow(0))
    assert run["status"] == "succeeded", run["error"]
    t = tasks_by_name(run)
    assert t["Agg"]["status"] == "succeeded" and t["Agg"]["result"] == []
    assert t["Merge"]["result"] == []
    assert [x["name"] for x in run["tasks"]] == ["Split", "Agg", "Merge"]


def test_a_map_over_a_maps_results_with_references_resolved_when_each_item_runs(kiln, embedded):
    wf = Workflow("chained")
    s = wf.add("echo", name="Split", params={"xs": [1, 2, 3], "unit": "kg"})
    double = wf.map(
        "echo", name="Double", over=s.result["xs"], params={"x": item, "i": "{{index}}"}
    )
    wf.map(
        "echo",
        name="Label",
        over=double.result,
        params={"text": "#{{index}} in {{Split.result.unit}}", "value": "{{item}}"},
    )
    run = run_to_end(kiln, wf)
    assert run["status"] == "succeeded", run["error"]
    t = tasks_by_name(run)
    assert t["Double"]["result"] == [{"x": 1, "i": 0}, {"x": 2, "i": 1}, {"x": 3, "i": 2}]
    assert t["Label"]["result"] == [
        {"text": f"#{i} in kg", "value": {"x": i + 1, "i": i}} for i in range(3)
    ]


def test_an_item_whose_text_looks_like_a_reference_reaches_its_handler_as_that_text(kiln, embedded):
    wf = Workflow("literal")
    s = wf.add(f"{HERE}:template_lookalikes", name="Split")
    wf.map("echo", name="Show", over=s.result["xs"], params={"text": "got {{item}}", "v": item})
    run = run_to_end(kiln, wf)
    assert run["status"] == "succeeded", run["error"]
    assert tasks_by_name(run)["Show"]["result"] == [
        {"text": "got {{Split.result.secret}}", "v": "{{Split.result.secret}}"},
        {"text": "got {{item}}", "v": "{{item}}"},
    ]


def test_a_list_over_the_bound_fails_the_map_task_and_its_downstream(database_url):
    import tests.handlers  # noqa: F401
    from kiln.workers.embedded import EmbeddedRuntime

    kiln = Kiln(fast_settings(database_url=database_url, max_map_items=5), pool_size=8)
    try:
        with EmbeddedRuntime(kiln, threads=2):
            run = run_to_end(kiln, csv_workflow(6))
    finally:
        kiln.close()
    t = tasks_by_name(run)
    assert run["status"] == "failed"
    assert t["Agg"]["status"] == "failed"
    assert t["Agg"]["error"] == (
        "Split.result.chunks has 6 items; a map runs at most 5 (KILN_MAX_MAP_ITEMS)"
    )
    assert t["Merge"]["status"] == "upstream_failed"
    assert "KILN_MAX_MAP_ITEMS" in run["error"]
    assert not [x for x in run["tasks"] if x["mapped_from"] is not None]


def test_a_map_over_something_that_is_not_a_list_fails_saying_so(kiln, embedded):
    wf = Workflow("not-a-list")
    s = wf.add("echo", name="Split", params={"chunks": "abc"})
    wf.map("echo", name="Agg", over=s.result["chunks"], params={"x": item})
    run = run_to_end(kiln, wf)
    agg = tasks_by_name(run)["Agg"]
    assert run["status"] == "failed"
    assert agg["status"] == "failed"
    assert agg["error"] == "Split.result.chunks is a string, not a list: a map needs a list"


def test_an_item_failing_for_good_fails_its_map_task_and_the_run(kiln, embedded):
    run = run_to_end(kiln, _fail_wf())
    t = tasks_by_name(run)
    assert run["status"] == "failed"
    assert t["Agg[2]"]["status"] == "failed"
    assert t["Agg"]["status"] == "failed"
    assert t["Agg"]["error"].startswith(
        "item Agg[2] failed: ValueError: chunk starting at 2 is bad"
    )
    assert t["Merge"]["status"] in ("upstream_failed", "cancelled")
    assert run["error"].startswith("task 'Agg' failed: item Agg[2] failed")
    # Items already running finish and are recorded; nothing else is left to run.
    wait_for(
        lambda: (
            {x["status"] for x in kiln.workflow(run["id"])["tasks"]}
            <= {"succeeded", "failed", "cancelled", "upstream_failed"}
        ),
        what="the items already running to finish",
    )


def _fail_wf() -> Workflow:
    wf = Workflow("bad-item")
    s = wf.add(f"{HERE}:split", name="Split", params={"n": 4})
    agg = wf.map(
        f"{HERE}:fail_on",
        name="Agg",
        over=s.result["chunks"],
        params={"chunk": item, "bad": 2},
        max_attempts=1,
    )
    wf.add(f"{HERE}:merge", name="Merge", params={"parts": agg.result}, depends_on=[agg])
    return wf


def test_with_on_error_continue_an_item_failure_fails_only_what_follows_the_map(kiln, embedded):
    wf = Workflow("continue", on_error="continue")
    s = wf.add(f"{HERE}:split", name="Split", params={"n": 3})
    agg = wf.map(
        f"{HERE}:fail_on", name="Agg", over=s.result["chunks"], params={"chunk": item, "bad": 1},
        max_attempts=1,
    )  # fmt: skip
    wf.add(f"{HERE}:merge", name="Merge", params={"parts": agg.result}, depends_on=[agg])
    wf.add("echo", name="Other", params={"ok": True}, depends_on=[s])
    run = run_to_end(kiln, wf)
    t = tasks_by_name(run)
    assert run["status"] == "failed"
    assert (t["Agg"]["status"], t["Merge"]["status"]) == ("failed", "upstream_failed")
    assert t["Merge"]["error"].startswith("upstream failed: task 'Agg' failed: item Agg[1]")
    assert t["Other"]["status"] == "succeeded"


def test_mapped_items_are_retried_like_any_task(kiln, embedded):
    run = run_to_end(kiln, csv_workflow(4, f"{HERE}:flaky_first_try", max_attempts=2))
    t = tasks_by_name(run)
    assert run["status"] == "succeeded", run["error"]
    assert t["Merge"]["result"] == [0, 1, 2, 3]
    for i in range(4):
        outcomes = [a["outcome"] for a in t[f"Agg[{i}]"]["attempt_history"]]
        assert outcomes == (["failed", "succeeded"] if i % 2 else ["succeeded"]), i


def test_cancelling_a_run_cancels_its_waiting_map_task_and_the_items(kiln, embedded):
    wf = Workflow("cancel-map")
    s = wf.add("echo", name="Split", params={"xs": [5, 5, 5, 5, 5, 5]})
    wf.map("sleep", name="Nap", over=s.result["xs"], params={"seconds": item})
    wf_id = kiln.submit(wf)
    wait_for(
        lambda: tasks_by_name(kiln.workflow(wf_id)).get("Nap", {}).get("status") == "waiting",
        what="the map task to wait on its items",
    )
    assert tasks_by_name(kiln.workflow(wf_id))["Nap"]["waiting_reason"] == (
        "running 6 mapped items"
    )
    kiln.cancel(wf_id)
    run = kiln.workflow(wf_id)
    assert run["status"] == "cancelled"
    assert {x["status"] for x in run["tasks"] if x["name"] != "Split"} == {"cancelled"}


# --- expansion is one guarded transition ---------------------------------------------------


def _run_split_by_hand(kiln: Kiln, n: int) -> tuple[int, int]:
    """Submit the csv workflow and finish its Split task as a worker would; return the run's
    id and its map task's id (ready, not expanded: no controller runs)."""
    wf_id = kiln.submit(csv_workflow(n))
    leased = kiln.dispatch(10)
    claimed = kiln.claim([(d.task_id, d.attempt) for d in leased], "test-worker")
    assert [c.name for c in claimed] == ["Split"]
    now = utcnow()
    kiln.record([Outcome(claimed[0], ok=True, started_at=now, finished_at=now, result=split(n))])
    agg = tasks_by_name(kiln.workflow(wf_id))["Agg"]
    assert agg["status"] == "ready"
    return wf_id, agg["id"]


def test_a_map_task_is_never_dispatched_and_expanding_it_twice_writes_its_items_once(kiln):
    wf_id, agg_id = _run_split_by_hand(kiln, 5)
    assert kiln.dispatch(100) == []  # a map task is expanded, never sent
    assert kiln.expand_maps() == 1
    assert kiln.expand_maps() == 0
    assert kiln.txn(lambda c: expand_map_txn(c, agg_id, max_items=100)) is None
    items = item_rows(kiln, wf_id)
    assert sorted(x["map_index"] for x in items) == [0, 1, 2, 3, 4]
    assert {x["status"] for x in items} == {"ready"}
    assert items[3]["params"] == {"chunk": {"rows": [3, 4, 5]}, "index": 3}
    assert tasks_by_name(kiln.workflow(wf_id))["Agg"]["status"] == "waiting"
    assert len(kiln.dispatch(100)) == 5


def test_a_paused_runs_map_task_waits_for_the_resume_to_be_expanded(kiln):
    wf_id, _ = _run_split_by_hand(kiln, 3)
    kiln.pause(wf_id)
    assert kiln.expand_maps() == 0
    kiln.resume(wf_id)
    assert kiln.expand_maps() == 1
    assert len(item_rows(kiln, wf_id)) == 3


def test_two_controllers_expanding_one_map_task_at_once_write_its_items_once(pg_url):
    kiln = Kiln(fast_settings(database_url=pg_url), pool_size=4)
    try:
        wf_id, agg_id = _run_split_by_hand(kiln, 50)
        first = kiln.engine.connect()
        tx = first.begin()
        assert expand_map_txn(first, agg_id, max_items=100) == "waiting"  # not committed
        second: list = []
        other = threading.Thread(
            target=lambda: second.append(
                kiln.txn(lambda c: expand_map_txn(c, agg_id, max_items=100))
            )
        )
        other.start()
        # The second expansion waits on the first one's lock on the map task's row.
        wait_for(
            lambda: kiln.read(
                lambda c: c.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                    )
                ).scalar()
            ),
            what="the second expansion to wait for the first one's lock",
        )
        tx.commit()
        first.close()
        other.join(timeout=20)
        assert second == [None]
        items = item_rows(kiln, wf_id)
        assert sorted(x["map_index"] for x in items) == list(range(50))
    finally:
        kiln.close()


@pytest.mark.parametrize("n", [1, 3])
def test_the_last_item_to_finish_settles_the_map_and_readies_what_follows(kiln, n):
    wf_id, agg_id = _run_split_by_hand(kiln, n)
    kiln.expand_maps()
    leased = kiln.dispatch(100)
    claimed = kiln.claim([(d.task_id, d.attempt) for d in leased], "test-worker")
    now = utcnow()
    for c in sorted(claimed, key=lambda c: -c.id):  # last item first
        status = tasks_by_name(kiln.workflow(wf_id))["Agg"]["status"]
        assert status == "waiting"
        kiln.record([Outcome(c, ok=True, started_at=now, finished_at=now, result=c.name)])
    t = tasks_by_name(kiln.workflow(wf_id))
    assert t["Agg"]["status"] == "succeeded"
    assert t["Agg"]["result"] == [f"Agg[{i}]" for i in range(n)]
    assert t["Merge"]["status"] in ("ready", "queued")


# --- over HTTP ------------------------------------------------------------------------------


def test_the_api_takes_a_map_in_json_and_shows_its_items_as_tasks(pg_kiln, monkeypatch):
    from kiln.web.app import create_app

    monkeypatch.delenv("KILN_API_TOKEN", raising=False)
    client = create_app(pg_kiln).test_client()
    definition = {
        "name": "csv",
        "tasks": [
            {"name": "Split", "handler": f"{HERE}:split", "params": {"n": 2}},
            {"name": "Agg", "handler": f"{HERE}:total", "map": "{{Split.result.chunks}}",
             "params": {"chunk": "{{item}}", "index": "{{index}}"}},
        ],
    }  # fmt: skip
    created = client.post("/workflows", json=definition)
    assert created.status_code == 201, created.get_json()
    wf_id = created.get_json()["id"]
    leased = pg_kiln.dispatch(10)
    claimed = pg_kiln.claim([(d.task_id, d.attempt) for d in leased], "test-worker")
    now = utcnow()
    pg_kiln.record([Outcome(claimed[0], ok=True, started_at=now, finished_at=now, result=split(2))])
    pg_kiln.expand_maps()
    tasks = client.get(f"/workflows/{wf_id}").get_json()["tasks"]
    by_name = {t["name"]: t for t in tasks}
    assert by_name["Agg"]["status"] == "waiting"
    assert by_name["Agg"]["map_over"] == "{{Split.result.chunks}}"
    assert by_name["Agg"]["depends_on"] == ["Split"]
    assert by_name["Agg"]["waiting_reason"] == "running 2 mapped items"
    assert [(by_name[f"Agg[{i}]"]["map_index"], by_name[f"Agg[{i}]"]["mapped_from"])
            for i in range(2)] == [(0, by_name["Agg"]["id"]), (1, by_name["Agg"]["id"])]  # fmt: skip
    assert by_name["Agg[1]"]["params"] == {"chunk": {"rows": [1, 2, 3]}, "index": 1}

    bad = client.post(
        "/workflows",
        json={**definition, "tasks": [definition["tasks"][0],
                                      {**definition["tasks"][1], "map": "Split.result"}]},
    )  # fmt: skip
    assert bad.status_code == 422
    assert bad.get_json()["error"] == "invalid_definition"
    assert bad.get_json()["details"]["field"] == "tasks[1].map"


def test_a_model_type_map_expands_into_model_type_items(kiln):
    definition = {
        "name": "prompts",
        "tasks": [
            {"name": "Split", "handler": "tests.handlers:echo", "params": {"chunks": ["a", "b"]}},
            {"name": "Gen", "model_type": "llm", "map": "{{Split.result.chunks}}",
             "params": {"prompt": "say {{item}}"}, "priority": 7},
        ],
    }  # fmt: skip
    wf_id = kiln.submit(definition)
    leased = kiln.dispatch(10)
    claimed = kiln.claim([(d.task_id, d.attempt) for d in leased], "test-worker")
    now = utcnow()
    result = {"chunks": ["a", "b"]}
    kiln.record([Outcome(claimed[0], ok=True, started_at=now, finished_at=now, result=result)])
    assert kiln.expand_maps() == 1
    items = sorted(item_rows(kiln, wf_id), key=lambda t: t["map_index"])
    assert [(t["model_type"], t["handler"], t["params"], t["priority"]) for t in items] == [
        ("llm", None, {"prompt": "say a"}, 7),
        ("llm", None, {"prompt": "say b"}, 7),
    ]
