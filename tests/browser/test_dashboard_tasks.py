"""The dashboard's task panel, a 60-task graph, the run filters and the scheduler page: the
pages as HTML on both databases, then in a real headless Chromium against ``kiln web``, a
worker and a controller. ``KILN_UPDATE_SCREENSHOTS=1`` also copies the screenshots of the real
runs to ``docs/screenshots/`` (the README shows them)."""

from __future__ import annotations

import datetime as dt
import html
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from tests.browser.test_dashboard import Deployment, attr, click, mark_page, same_page, shoot, text
from tests.conftest import ROOT, wait_for

DOCS_SCREENSHOTS = ROOT / "docs" / "screenshots"
FAN_OUT = 8


def wide_workflow() -> dict[str, Any]:
    """60 tasks in 11 columns, most of them 8 wide: the shape whose 8th row the old fixed-height
    panel cut off."""
    tasks: list[dict[str, Any]] = [{"name": "split", "handler": "noop"}]

    def fan(stage: str, after: list[str]) -> list[str]:
        names = [f"{stage}{i}" for i in range(FAN_OUT)]
        for i, name in enumerate(names):
            tasks.append({"name": name, "handler": "noop", "depends_on": [after[i % len(after)]]})
        return names

    def join(name: str, after: list[str]) -> list[str]:
        tasks.append({"name": name, "handler": "noop", "depends_on": after})
        return [name]

    last = join("merge", fan("check", fan("agg", ["split"])))
    last = join("report", fan("verify", fan("publish", last)))
    last = join("done", fan("archive", fan("notify", last)))
    fan("cleanup", last)
    assert len(tasks) == 60
    return {"name": "wide-fan-out", "tasks": tasks}


# The definition a task of kind ``workflow`` starts as its child run (by this import path).
CHILD_RUN = {
    "name": "close-books",
    "tasks": [
        {"name": "reconcile", "handler": "noop"},
        {"name": "sign", "handler": "noop", "depends_on": ["reconcile"]},
    ],
}


def mapped_workflow(items: int, seconds: float = 0) -> dict[str, Any]:
    """Split -> Agg, a map over Split's chunks (each item ``seconds`` long) -> Merge -> Close,
    which runs CHILD_RUN as a child run."""
    agg = {"handler": "echo", "params": {"chunk": "{{item}}"}}
    if seconds:
        agg = {"handler": "sleep", "params": {"seconds": seconds, "value": "{{item}}"}}
    return {
        "name": "monthly-close",
        "tasks": [
            {"name": "Split", "handler": "echo", "params": {"chunks": list(range(items))}},
            {"name": "Agg", "map": "{{Split.result.chunks}}", **agg},
            {"name": "Merge", "handler": "noop", "depends_on": ["Agg"]},
            {"name": "Close", "workflow": "tests.browser.test_dashboard_tasks:CHILD_RUN",
             "depends_on": ["Merge"]},
        ],
    }  # fmt: skip


def publish(path: Path) -> None:
    if os.environ.get("KILN_UPDATE_SCREENSHOTS"):
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_SCREENSHOTS / path.name)


def run_done(kiln: Deployment, run_id: int) -> dict[str, Any]:
    return wait_for(
        lambda: (
            (run := kiln.get(f"/workflows/{run_id}?wait=5"))["status"] in ("succeeded", "failed")
            and run
        ),
        90,
        what=f"run {run_id} finished",
    )


# --- the pages as HTML (no browser) -------------------------------------------------------


def test_runs_filter_by_handler_and_creation_date_on_both_databases(kiln):
    import tests.handlers  # noqa: F401 - registers noop and echo
    from kiln.web.app import create_app

    client = create_app(kiln).test_client()
    echo = client.post(
        "/workflows", json={"name": "with-echo", "tasks": [{"name": "e", "handler": "echo"}]}
    ).get_json()["id"]
    client.post(
        "/workflows", json={"name": "only-noop", "tasks": [{"name": "n", "handler": "noop"}]}
    )
    today = dt.datetime.now(dt.UTC).date()
    tomorrow = (today + dt.timedelta(days=1)).isoformat()

    def listed(query: str, status: int = 200) -> list[int]:
        r = client.get("/ui/runs?" + query)
        assert r.status_code == status, (query, r.status_code, r.text[:1000])
        return [int(i) for i in re.findall(r'<tr data-run-id="(\d+)"', r.text)]

    assert listed("handler=echo") == [echo]
    assert listed("handler=tests.handlers:nothing") == []
    assert len(listed(f"created_after={today.isoformat()}")) == 2
    assert listed(f"created_after={tomorrow}") == []
    assert len(listed(f"created_before={tomorrow}")) == 2
    assert listed(f"created_before={today.isoformat()}") == []
    assert listed(f"created_after={today.isoformat()}T00:00&handler=echo") == [echo]
    # A date the page cannot read: 400, said in words, and the filter is left out.
    r = client.get("/ui/runs?created_after=yesterday")
    assert r.status_code == 400
    assert "created after: “yesterday” is not a date" in r.text
    assert len(re.findall(r"<tr data-run-id=", r.text)) == 2
    # The filters survive a click on a state chip.
    chips = client.get("/ui/runs?handler=echo").text
    assert "/ui/runs?handler=echo&amp;status=succeeded" in chips


def test_the_scheduler_page_shows_dates_and_run_operations_say_what_they_created(kiln):
    import tests.handlers  # noqa: F401 - registers noop
    from kiln.web.app import create_app

    client = create_app(kiln).test_client()
    assert client.put("/scheduler/policy", json={"policy": "FIFO"}).status_code == 200
    run_id = client.post(
        "/workflows", json={"name": "waits", "tasks": [{"name": "x", "handler": "noop"}]}
    ).get_json()["id"]
    page = client.get("/ui/scheduler").text  # no controller: the task waits, ready
    assert re.search(r"FIFO: enqueued at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", page)
    assert not re.search(r"\b1\d{9}(\.\d+)?\b", page), "a raw Unix time on the scheduler page"
    assert re.search(r"policy last changed \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", page)
    messages = [
        client.post(f"/workflows/{run_id}/{verb}").get_json()["message"]
        for verb in ("pause", "resume", "cancel")
    ]
    assert messages == [
        f"Pause request created for workflow {run_id}",
        f"Resume request created for workflow {run_id}",
        f"Cancel request created for workflow {run_id}",
    ]


def test_a_map_of_200_items_is_one_box_and_parent_and_child_runs_link_both_ways(kiln, embedded):
    from kiln.web.app import create_app

    run_id = kiln.submit(mapped_workflow(200))
    run = kiln.wait(run_id, 120)
    assert run["status"] == "succeeded", run.get("error")
    client = create_app(kiln).test_client()
    page = client.get(f"/ui/runs/{run_id}").text
    boxes = re.findall(r'<g class="node([^"]*)" data-task="([^"]+)" data-status="([^"]+)"', page)
    assert [(name, status) for _, name, status in boxes] == [
        ("Split", "succeeded"),
        ("Agg", "succeeded"),
        ("Agg[0–199]", "succeeded"),
        ("Merge", "succeeded"),
        ("Close", "succeeded"),
    ]
    assert " group " in boxes[2][0] + " " and "200 items · 200 succeeded" in page
    assert page.count("<tr data-task=") == 204  # the table still lists every item
    by_name = {t["name"]: t for t in run["tasks"]}
    agg, close = by_name["Agg"], by_name["Close"]
    # The box opens the map task, whose panel lists its items in order.
    assert f'href="/ui/runs/{run_id}/tasks/{agg["id"]}" data-panel data-key="Agg[0–199]"' in page
    panel = client.get(f"/ui/runs/{run_id}/tasks/{agg['id']}").text
    items = re.findall(r'data-item="(\d+)"', panel)
    assert items == [str(i) for i in range(200)]
    item = html.unescape(client.get(f"/ui/runs/{run_id}/tasks/{by_name['Agg[7]']['id']}").text)
    assert "item 7 of map" in item and '"chunk": 7' in item
    # Parent -> child, on the run page and in the task's panel ...
    (child,) = run["children"]
    assert f'data-child-run="{child["id"]}" href="/ui/runs/{child["id"]}"' in page
    assert (
        f'data-child-run="{child["id"]}"'
        in client.get(f"/ui/runs/{run_id}/tasks/{close['id']}").text
    )
    # ... and child -> parent run and task.
    child_page = client.get(f"/ui/runs/{child['id']}").text
    assert re.search(
        rf'child of <a href="/ui/runs/{run_id}">run {run_id}</a> \(task <a data-panel '
        rf'href="/ui/runs/{run_id}/tasks/{close["id"]}">Close</a>\)',
        child_page,
    ), re.findall(r'id="parent-run".*?</div>', child_page, re.S)


# --- in the browser -----------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_clicking_a_task_shows_its_params_result_attempts_and_whole_traceback(
    cluster, browser, artefacts
):
    kiln = Deployment(cluster)
    run = kiln.post(
        "/workflows",
        {
            "name": "ledger-close",
            "on_error": "continue",
            "tasks": [
                {"name": "extract", "handler": "echo",
                 "params": {"source": "s3://books/2026-05.csv", "rows": 3}},
                {"name": "clean", "handler": "fail_until", "params": {"succeed_on": 2},
                 "depends_on": ["extract"]},
                {"name": "audit", "handler": "fail_always", "max_attempts": 2,
                 "params": {"message": "ledger mismatch"}, "depends_on": ["extract"]},
                {"name": "post", "handler": "noop", "depends_on": ["clean", "audit"]},
            ],
        },
    )  # fmt: skip
    run_done(kiln, run["id"])
    browser.get(f"{kiln.base}/ui/runs/{run['id']}")
    mark_page(browser)
    panel = "#task-panel .task-detail"

    # A box of the graph opens its task beside the run.
    click(browser, "g.node[data-task='clean']")
    wait_for(lambda: attr(browser, panel, "data-task") == "clean", 10, what="clean's panel")
    assert browser.find_element(By.ID, "task-panel").is_displayed()
    rows = browser.find_elements(By.CSS_SELECTOR, "#task-attempts tr[data-outcome]")
    assert [r.get_attribute("data-outcome") for r in rows] == ["failed", "succeeded"]
    workers = [r.find_elements(By.TAG_NAME, "td")[1].get_attribute("title") for r in rows]
    assert all(w.startswith("worker") for w in workers), workers
    errors = browser.find_elements(By.CSS_SELECTOR, "#task-attempts tr.attempt-error")
    assert [e.get_attribute("data-attempt") for e in errors] == ["1"]
    assert "RuntimeError: failing attempt 1" in errors[0].text
    assert '"succeed_on": 2' in text(browser, "#task-params")
    assert '"attempt": 2' in text(browser, "#task-result")
    trace = browser.find_element(By.CSS_SELECTOR, "details.traceback[data-attempt='1'] pre")
    trace_text = trace.get_attribute("textContent")
    assert trace_text.startswith("Traceback (most recent call last)"), trace_text[:200]
    assert "RuntimeError: failing attempt 1" in trace_text
    shot = shoot(browser, artefacts, "task-panel")
    publish(shot)

    # A row of the task table opens its task too, with the task's error and full traceback.
    click(browser, "#tasks-table tr[data-task='audit'] a[data-panel]")
    wait_for(lambda: attr(browser, panel, "data-task") == "audit", 10, what="audit's panel")
    assert "ledger mismatch" in text(browser, "#task-error")
    last = browser.find_element(By.CSS_SELECTOR, "details.traceback[data-attempt='2'] pre")
    assert "raise RuntimeError(message)" in last.get_attribute("textContent")  # the source line

    # From there to an upstream task: its params and result.
    click(browser, f"{panel} a[data-panel][href$='/tasks/{task_id(kiln, run['id'], 'extract')}']")
    wait_for(lambda: attr(browser, panel, "data-task") == "extract", 10, what="extract's panel")
    assert "s3://books/2026-05.csv" in text(browser, "#task-result")
    click(browser, "#task-panel [data-close-panel]")
    wait_for(lambda: not browser.find_element(By.ID, "task-panel").is_displayed(), 5)
    assert same_page(browser), "the page was reloaded"


def task_id(kiln: Deployment, run_id: int, name: str) -> int:
    return next(t["id"] for t in kiln.get(f"/workflows/{run_id}")["tasks"] if t["name"] == name)


VISIBLE_AT_CENTRE = """
const node = arguments[0], box = document.getElementById('dag-panel');
node.scrollIntoView({block: 'nearest', inline: 'nearest'});
const r = node.getBoundingClientRect(), p = box.getBoundingClientRect();
const x = r.left + r.width / 2, y = r.top + r.height / 2;
const inside = x > p.left && x < p.right && y > p.top && y < p.bottom;
const hit = document.elementFromPoint(x, y);
return inside && hit !== null && node.contains(hit);
"""

ALL_INSIDE = """
const p = document.getElementById('dag-panel').getBoundingClientRect();
return Array.from(document.querySelectorAll('svg#dag g.node')).filter(function (n) {
  const r = n.getBoundingClientRect();
  return !(r.left >= p.left && r.right <= p.right && r.top >= p.top && r.bottom <= p.bottom);
}).map(function (n) { return n.dataset.task; });
"""


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_every_task_of_a_60_task_graph_can_be_reached_and_fit_shows_them_all(
    cluster, browser, artefacts
):
    kiln = Deployment(cluster)
    run = kiln.post("/workflows", wide_workflow())
    echo = kiln.post(
        "/workflows", {"name": "one-echo", "tasks": [{"name": "e", "handler": "echo"}]}
    )
    assert run_done(kiln, run["id"])["status"] == "succeeded"
    browser.get(f"{kiln.base}/ui/runs/{run['id']}")
    mark_page(browser)
    nodes = browser.find_elements(By.CSS_SELECTOR, "svg#dag g.node")
    assert len(nodes) == 60
    assert {n.get_attribute("data-status") for n in nodes} == {"succeeded"}
    # At 100 % every box can be scrolled to and is then on top at its centre (the 8th of
    # every fan-out included).
    hidden = [
        n.get_attribute("data-task")
        for n in nodes
        if not browser.execute_script(VISIBLE_AT_CENTRE, n)
    ]
    assert hidden == []
    # "Fit" scales the drawing into the panel: all 60 at once.
    browser.execute_script("window.scrollTo(0, 0)")
    click(browser, "button[data-zoom='fit']")
    wait_for(lambda: browser.execute_script(ALL_INSIDE) == [], 5, what="every box inside")
    # ... and stays so across the live updates, which re-render the drawing.
    width = attr(browser, "svg#dag", "width")
    wait_for(
        lambda: "live ·" in text(browser, "#live-status"), 10, what="a live update"
    )  # fmt: skip
    assert attr(browser, "svg#dag", "width") == width and browser.execute_script(ALL_INSIDE) == []
    # A box opens its task.
    click(browser, "g.node[data-task='agg7']")
    wait_for(lambda: attr(browser, "#task-panel .task-detail", "data-task") == "agg7", 10)
    click(browser, "#task-panel [data-close-panel]")
    shot = shoot(browser, artefacts, "run-60-tasks")
    publish(shot)
    assert same_page(browser)

    # The runs list filtered by handler, from the form.
    browser.get(kiln.base + "/ui/runs")
    box = browser.find_element(By.ID, "run-handler")
    box.send_keys("echo")
    box.submit()
    wait_for(lambda: "handler=echo" in browser.current_url, 10, what="the handler filter")
    ids = [
        r.get_attribute("data-run-id")
        for r in browser.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")
    ]
    assert ids == [str(echo["id"])]


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_a_map_waits_while_its_items_run_and_a_child_run_links_back(cluster, browser, artefacts):
    kiln = Deployment(cluster)
    run = kiln.post("/workflows", mapped_workflow(24, seconds=1))
    browser.get(f"{kiln.base}/ui/runs/{run['id']}")
    mark_page(browser)
    box = "g.node[data-task='Agg[0–23]']"
    # While its 24 items run (4 at a time), the map task waits, in its own colour.
    wait_for(
        lambda: attr(browser, "g.node[data-task='Agg']", "data-status") == "waiting", 30,
        what="the map task waiting",
    )  # fmt: skip
    waiting = browser.execute_script(
        "return getComputedStyle(document.querySelector(\"g.node[data-task='Agg'] rect\")).fill"
    )
    assert waiting == "rgb(103, 232, 249)"
    assert attr(browser, box, "data-status") in ("running", "queued", "ready")
    publish(shoot(browser, artefacts, "run-map-waiting"))
    done = run_done(kiln, run["id"])
    assert done["status"] == "succeeded", (done.get("error"), cluster.logs()[-3000:])
    wait_for(
        lambda: attr(browser, "h1 .badge", "data-status") == "succeeded", 10, what="shown so"
    )  # fmt: skip
    assert attr(browser, box, "data-status") == "succeeded"
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg#dag g.node")) == 5

    # The box opens the map task, which lists its items; an item opens in its turn.
    click(browser, box)
    panel = "#task-panel .task-detail"
    wait_for(lambda: attr(browser, panel, "data-task") == "Agg", 10, what="the map's panel")
    chips = browser.find_elements(By.CSS_SELECTOR, "#task-items a[data-item]")
    assert [c.get_attribute("data-item") for c in chips] == [str(i) for i in range(24)]
    click(browser, "#task-items a[data-item='5']")
    wait_for(lambda: attr(browser, panel, "data-task") == "Agg[5]", 10, what="item 5's panel")
    assert "item 5 of map Agg" in text(browser, panel)
    click(browser, "#task-panel [data-close-panel]")
    assert same_page(browser)

    # Parent -> child -> parent.
    child = kiln.get(f"/workflows/{run['id']}")["children"][0]
    click(browser, f"#child-runs a[data-child-run='{child['id']}']")
    wait_for(
        lambda: browser.current_url.endswith(f"/ui/runs/{child['id']}"), 10, what="the child"
    )  # fmt: skip
    assert "close-books" in text(browser, "h1")
    assert f"child of run {run['id']} (task Close)" in text(browser, "#parent-run")
    click(browser, f"#parent-run a[href='/ui/runs/{run['id']}']")
    wait_for(lambda: browser.current_url.endswith(f"/ui/runs/{run['id']}"), 10, what="parent")
