"""A run's detail (``GET /workflows/<id>``, ``Kiln.workflow``): its tasks with their
dependencies and attempt history, page by page, on both databases."""

from __future__ import annotations

import tests.handlers  # noqa: F401 - registers the test handlers
from kiln.web.app import create_app


def test_a_page_names_the_dependencies_that_sit_on_an_earlier_page(kiln):
    run = kiln.submit(
        {"name": "chain", "tasks": [
            {"name": "first, with a comma", "handler": "noop"},
            {"name": "second", "handler": "noop"},
            {"name": "last", "handler": "noop", "depends_on": ["second", "first, with a comma"]},
        ]}
    )  # fmt: skip
    client = create_app(kiln).test_client()
    first = client.get(f"/workflows/{run}?tasks_limit=2").get_json()
    assert [t["name"] for t in first["tasks"]] == ["first, with a comma", "second"]
    assert all(t["depends_on"] == [] for t in first["tasks"])
    after = first["tasks_next_after"]
    second = client.get(f"/workflows/{run}?tasks_limit=2&tasks_after={after}")
    assert second.status_code == 200, second.get_json()
    (last,) = second.get_json()["tasks"]
    assert last["depends_on"] == ["first, with a comma", "second"]
    assert second.get_json()["tasks_total"] == 3
    assert second.get_json()["tasks_next_after"] is None


def test_each_task_lists_its_attempts_in_order_and_a_task_never_claimed_none(kiln, embedded):
    run = kiln.submit(
        {"name": "retried", "on_error": "continue", "tasks": [
            {"name": "Flaky", "handler": "fail_until", "params": {"succeed_on": 3},
             "max_attempts": 3},
            {"name": "After", "handler": "noop", "depends_on": ["Flaky"]},
            {"name": "Doomed", "handler": "fail_always", "max_attempts": 1},
            {"name": "Never", "handler": "noop", "depends_on": ["Doomed"]},
        ]}
    )  # fmt: skip
    detail = kiln.wait(run, 30)
    assert detail["status"] == "failed"
    by_name = {t["name"]: t for t in detail["tasks"]}
    flaky = by_name["Flaky"]["attempt_history"]
    assert [a["attempt"] for a in flaky] == [1, 2, 3]
    assert [a["outcome"] for a in flaky] == ["failed", "failed", "succeeded"]
    assert {a["task_id"] for a in flaky} == {by_name["Flaky"]["id"]}
    assert [a["attempt"] for a in by_name["After"]["attempt_history"]] == [1]
    assert [a["outcome"] for a in by_name["Doomed"]["attempt_history"]] == ["failed"]
    assert by_name["Never"]["attempt_history"] == []
    assert by_name["Never"]["depends_on"] == ["Doomed"]
    assert [t["name"] for t in detail["tasks"]] == ["Flaky", "After", "Doomed", "Never"]
    assert detail["tasks_total"] == 4 and detail["children"] == [] and detail["reruns"] == []
