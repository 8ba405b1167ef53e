"""The dashboard at ``/ui`` in a real headless Chromium, against the real processes
(``kiln web``, ``kiln worker``, ``kiln controller``) on PostgreSQL and Redis. Screenshots go
to ``test-artefacts/``; every wait is on a condition with a deadline, and the page is never
reloaded while a test waits for a change to show."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import requests
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.conftest import wait_for
from tests.taskinstance_helpers import InstanceProcess, free_port

TOKEN = "dashboard-test-token"
SLOW_SHARD = "tests.browser.test_dashboard:slow_shard"
# The state colours of kiln.css, as the browser computes them.
SUCCEEDED_FILL = "rgb(34, 165, 90)"
FAILED_FILL = "rgb(220, 38, 38)"
RUNNING_FILL = "rgb(245, 158, 11)"


def slow_shard(rows, model_config, shard_index):
    """The python pipeline these tests run: slow enough to be stopped in the middle."""
    time.sleep(model_config.get("delay_s", 0))
    return [f"{shard_index}:{r}" for r in rows]


class Deployment:
    """``kiln web`` (plus the worker and controller) of one test, and an HTTP client for it."""

    def __init__(self, cluster, token: str = "") -> None:
        if token:
            cluster.env["KILN_API_TOKEN"] = token
        self.cluster = cluster
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        port = free_port()
        cluster.worker(threads=4)
        cluster.controller()
        cluster.start("web", "--port", str(port), name="web")
        self.base = f"http://127.0.0.1:{port}"
        wait_for(self._up, 20, what=f"kiln web on {self.base}\n{cluster.logs()}")

    def _up(self) -> bool:
        try:
            return requests.get(self.base + "/health", timeout=1).ok
        except requests.ConnectionError:
            return False

    def get(self, path: str) -> Any:
        r = requests.get(self.base + path, headers=self.headers, timeout=10)
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        r = requests.post(self.base + path, json=body, headers=self.headers, timeout=10)
        assert r.status_code in (200, 201), (path, r.status_code, r.text)
        return r.json()

    def pipeline(self, name: str, num_shards: int, delay_s: float) -> dict[str, Any]:
        rows = [f"w{i}" for i in range(num_shards * 2)]
        ctx = self.post("/contexts", {"name": name, "rows": rows, "num_shards": num_shards})
        return self.post(
            "/pipelines",
            {
                "context_id": ctx["id"],
                "pipeline_name": name,
                "pipeline_type": "python",
                "model_config": {"handler": SLOW_SHARD, "delay_s": delay_s},
            },
        )


# --- reading the page -----------------------------------------------------------------------


def attr(driver, css: str, name: str) -> str | None:
    """An attribute of the first element matching ``css`` right now (None if absent)."""
    try:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        return found[0].get_attribute(name) if found else None
    except StaleElementReferenceException:  # the live update replaced it meanwhile
        return None


def click(driver, css: str) -> None:
    def attempt() -> bool:
        try:
            driver.find_element(By.CSS_SELECTOR, css).click()
            return True
        except StaleElementReferenceException:
            return False

    wait_for(attempt, 10, what=f"clicking {css}")


def text(driver, css: str) -> str:
    try:
        return " ".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, css))
    except StaleElementReferenceException:
        return ""


def shoot(driver, artefacts: Path, name: str) -> Path:
    driver.execute_script("window.scrollTo(0, 0)")
    path = artefacts / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000, f"{path} looks empty"
    return path


def same_page(driver) -> bool:
    """True while the page loaded by :func:`mark_page` is still the one shown."""
    return driver.execute_script("return window.kilnTestMarker === true")


def mark_page(driver) -> None:
    driver.execute_script("window.kilnTestMarker = true")


def sign_in(driver, kiln: Deployment, page: str) -> None:
    """Open ``page``; with a token configured that lands on the sign-in form, which a wrong
    token does not pass and the right one does, by a cookie scripts cannot read."""
    driver.delete_all_cookies()
    driver.get(kiln.base + page)
    assert driver.title.startswith("Sign in"), driver.title
    driver.find_element(By.ID, "login-token").send_keys("wrong")
    driver.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
    wait_for(lambda: "not one this Kiln accepts" in text(driver, "#login-error"), 10)
    driver.find_element(By.ID, "login-token").send_keys(TOKEN)
    driver.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
    wait_for(lambda: driver.current_url == kiln.base + page, 10, what=f"back on {page}")
    cookie = driver.get_cookie("kiln_token")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert driver.execute_script("return document.cookie").find("kiln_token") == -1


# --- the pages as HTML (no browser) -------------------------------------------------------------


def test_every_page_renders_without_javascript_on_both_databases(kiln):
    """The server-rendered pages and their live fragments, on PostgreSQL and SQLite (the
    dashboard's own queries: name search, task counts, instance backlog)."""
    import tests.handlers  # noqa: F401 - registers noop
    from kiln.web.app import create_app

    client = create_app(kiln).test_client()
    diamond = {
        "name": "Nightly-ETL",
        "tasks": [
            {"name": "a", "handler": "noop"},
            {"name": "b", "handler": "noop", "depends_on": ["a"]},
            {"name": "c", "handler": "noop", "depends_on": ["a"]},
            {"name": "d", "handler": "noop", "depends_on": ["b", "c"]},
        ],
    }
    run_id = client.post("/workflows", json=diamond).get_json()["id"]
    client.post(
        "/workflows", json={"name": "100%_other", "tasks": [{"name": "x", "handler": "noop"}]}
    )
    ctx = client.post("/contexts", json={"name": "c", "rows": [1, 2, 3], "num_shards": 3})
    pipeline = client.post(
        "/pipelines",
        json={
            "context_id": ctx.get_json()["id"],
            "pipeline_name": "tagger",
            "pipeline_type": "python",
            "model_config": {"handler": SLOW_SHARD},
        },
    ).get_json()
    client.post("/dispatcher/stop-pipeline", json={"pipeline_id": pipeline["id"]})

    def page(url: str, status: int = 200) -> str:
        r = client.get(url)
        assert r.status_code == status, (url, r.status_code, r.text[:2000])
        assert r.mimetype == "text/html"
        return r.text

    assert client.get("/ui/").headers["Location"].endswith("/ui/runs")
    runs = page("/ui/runs")
    assert "Nightly-ETL" in runs and "100%_other" in runs
    assert 'data-live="/ui/runs?fragment=1"' in runs
    found = page("/ui/runs?q=nightly")
    assert "Nightly-ETL" in found and "100%_other" not in found
    assert "Nightly-ETL" not in page("/ui/runs?q=%25_")  # % and _ are literal
    assert "No runs in state" in page("/ui/runs?status=failed")
    run = page(f"/ui/runs/{run_id}")
    assert run.count('class="node st-') == 4 and run.count('class="edge"') == 4
    # Nothing has run yet: no made-up time axis.
    assert 'id="gantt-empty"' in run and 'id="gantt"' not in run and "0.001" not in run
    detail = client.get(f"/workflows/{run_id}").get_json()
    b = next(t for t in detail["tasks"] if t["name"] == "b")
    panel = page(f"/ui/runs/{run_id}/tasks/{b['id']}")
    assert 'data-task="b"' in panel and "No attempt yet." in panel
    assert f'href="/ui/runs/{run_id}/tasks/{b["id"]}"' in run  # the box and the row open it
    assert "has no task" in page(f"/ui/runs/{run_id}/tasks/999999", status=404)
    assert client.get(f"/ui/runs/{run_id}/tasks/{10**25}").status_code == 404
    fragment = page(f"/ui/runs/{run_id}?fragment=1")
    assert "<html" not in fragment and 'id="dag"' in fragment
    assert "does not exist" in page("/ui/runs/999999", status=404)
    pipelines = page("/ui/pipelines")
    assert "tagger" in pipelines and 'data-action="/dispatcher/stop-pipeline"' in pipelines
    operations = page("/ui/operations")
    assert "stop" in operations and 'data-status="pending"' in operations
    assert "No TaskInstance has registered" in page("/ui/instances")
    assert 'id="policy-select"' in page("/ui/scheduler")
    assert client.get("/ui/static/kiln.js").status_code == 200


def test_a_run_too_big_to_draw_still_shows_a_bounded_page(kiln):
    import tests.handlers  # noqa: F401 - registers noop
    from kiln.web import ui
    from kiln.web.app import create_app

    client = create_app(kiln).test_client()
    n = ui.MAX_DRAWN_TASKS + 20
    tasks = [{"name": f"t{i}", "handler": "noop"} for i in range(n)]
    run_id = client.post("/workflows", json={"name": "wide", "tasks": tasks}).get_json()["id"]
    r = client.get(f"/ui/runs/{run_id}")
    assert r.status_code == 200
    assert f"{n} tasks are too many to draw" in r.text
    assert 'id="dag"' not in r.text
    assert r.text.count("<tr data-task=") == ui.MAX_DRAWN_TASKS


# --- in the browser -----------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_stop_on_a_running_pipeline_shows_it_stopped_without_a_reload(cluster, browser, artefacts):
    kiln = Deployment(cluster, token=TOKEN)
    running = kiln.pipeline("translate-fr", num_shards=8, delay_s=0.6)
    quick = kiln.pipeline("summarise", num_shards=3, delay_s=0)
    row = f"tr[data-pipeline-id='{running['id']}']"
    wait_for(
        lambda: kiln.get(f"/pipelines/{running['id']}")["shards_completed"] >= 1, 20,
        what="a first shard",
    )  # fmt: skip

    sign_in(browser, kiln, "/ui/pipelines")
    assert browser.title.startswith("Pipelines")
    assert attr(browser, row, "data-status") == "ongoing"
    mark_page(browser)

    click(browser, f"{row} button[data-describe^='stop']")
    wait_for(
        lambda: attr(browser, row, "data-status") == "stopped", 20,
        what=f"pipeline {running['id']} shown stopped",
    )  # fmt: skip
    assert same_page(browser), "the page was reloaded"
    wait_for(lambda: "stop completed" in text(browser, f"{row} .last-op"), 10, what="last op")
    assert kiln.get(f"/pipelines/{running['id']}")["status"] == "stopped"
    wait_for(
        lambda: (
            attr(browser, f"tr[data-pipeline-id='{quick['id']}']", "data-status") == "completed"
        ),
        20,
        what="the quick pipeline completed",
    )
    shoot(browser, artefacts, "pipelines-stopped")

    # Clone the completed one: a new pipeline appears, still without a reload.
    click(browser, f"tr[data-pipeline-id='{quick['id']}'] button[data-describe^='clone']")
    wait_for(
        lambda: len(browser.find_elements(By.CSS_SELECTOR, "#pipelines-table tbody tr")) == 3,
        20,
        what="the clone's row",
    )
    assert "summarise-clone" in text(browser, "#pipelines-table")

    # Resume, then delete (which asks for confirmation first).
    click(browser, f"{row} button[data-describe^='resume']")
    wait_for(lambda: attr(browser, row, "data-status") == "ongoing", 20, what="resumed")
    click(browser, f"{row} button[data-describe^='delete']")
    browser.switch_to.alert.accept()
    wait_for(lambda: attr(browser, row, "data-status") == "deleted", 20, what="deleted")
    assert same_page(browser), "the page was reloaded"

    browser.get(kiln.base + "/ui/operations")
    ops = browser.find_elements(By.CSS_SELECTOR, "#operations-table tbody tr")
    assert {o.get_attribute("data-status") for o in ops} == {"completed"}
    assert [o.find_elements(By.TAG_NAME, "td")[1].text for o in ops] == [
        "delete", "resume", "clone", "stop",
    ]  # fmt: skip
    shoot(browser, artefacts, "operations")


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_a_run_page_draws_the_graph_coloured_by_state_and_a_timeline_of_attempts(
    cluster, browser, artefacts
):
    kiln = Deployment(cluster)
    run = kiln.post(
        "/workflows",
        {
            "name": "nightly-etl",
            "on_error": "continue",
            "tasks": [
                {"name": "extract", "handler": "sleep", "params": {"seconds": 0.3}},
                {"name": "clean", "handler": "fail_until", "params": {"succeed_on": 2},
                 "depends_on": ["extract"]},
                {"name": "enrich", "handler": "sleep", "params": {"seconds": 0.4},
                 "depends_on": ["extract"]},
                {"name": "load", "handler": "sleep", "params": {"seconds": 2.5},
                 "depends_on": ["clean", "enrich"]},
                {"name": "report", "handler": "noop", "depends_on": ["load"]},
                {"name": "audit", "handler": "fail_always", "max_attempts": 2,
                 "depends_on": ["extract"]},
                {"name": "notify", "handler": "noop", "depends_on": ["audit"]},
            ],
        },
    )  # fmt: skip
    other = kiln.post(
        "/workflows", {"name": "hourly-sync", "tasks": [{"name": "only", "handler": "noop"}]}
    )
    url = f"{kiln.base}/ui/runs/{run['id']}"

    browser.get(url)
    mark_page(browser)
    nodes = "svg#dag g.node"
    assert len(browser.find_elements(By.CSS_SELECTOR, nodes)) == 7
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg#dag path.edge")) == 7
    # Live: "load" is seen running (amber), then the run finishes, all without a reload.
    wait_for(
        lambda: attr(browser, "g.node[data-task='load']", "data-status") == "running", 20,
        what="load running",
    )  # fmt: skip
    assert fill(browser, "load") == RUNNING_FILL
    shoot(browser, artefacts, "run-in-progress")
    wait_for(lambda: attr(browser, "h1 .badge", "data-status") == "failed", 30, what="run finished")
    assert same_page(browser), "the page was reloaded"

    detail = kiln.get(f"/workflows/{run['id']}")
    shown = {
        n.get_attribute("data-task"): n.get_attribute("data-status")
        for n in browser.find_elements(By.CSS_SELECTOR, nodes)
    }
    assert shown == {t["name"]: t["status"] for t in detail["tasks"]}
    assert shown["notify"] == "upstream_failed" and shown["audit"] == "failed"
    assert fill(browser, "report") == SUCCEEDED_FILL
    assert fill(browser, "audit") == FAILED_FILL
    assert len({fill(browser, name) for name in ("report", "audit", "notify")}) == 3

    # The timeline: one bar per attempt, coloured by its outcome.
    bars = browser.find_elements(By.CSS_SELECTOR, "svg#gantt rect.bar")
    assert len(bars) == sum(len(t["attempt_history"]) for t in detail["tasks"]) == 8
    kinds = sorted(b.get_attribute("data-kind") for b in bars)
    assert kinds == ["failed"] * 3 + ["succeeded"] * 5
    for b in bars:
        assert float(b.get_attribute("width")) >= 2
    clean_bars = browser.find_elements(
        By.XPATH, "//*[name()='rect' and contains(@class,'bar')]/*[name()='title']"
    )
    assert any(
        "clean · attempt 2 · succeeded" in t.get_attribute("textContent") for t in clean_bars
    )
    shoot(browser, artefacts, "run-graph-and-timeline")

    # The runs list: search by name, filter by state.
    browser.get(kiln.base + "/ui/runs")
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")) == 2, 10)
    box = browser.find_element(By.ID, "run-search")
    box.send_keys("nightly")
    box.submit()
    wait_for(lambda: "q=nightly" in browser.current_url, 10, what="the search")
    ids = [
        r.get_attribute("data-run-id")
        for r in browser.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")
    ]
    assert ids == [str(run["id"])]
    browser.get(kiln.base + "/ui/runs?status=succeeded")
    wait_for(
        lambda: attr(browser, "#runs-table tbody tr", "data-run-id") == str(other["id"]), 20,
        what="the succeeded run listed",
    )  # fmt: skip
    browser.get(kiln.base + "/ui/runs")
    shoot(browser, artefacts, "runs")


def fill(driver, task: str) -> str:
    return driver.execute_script(
        "const r = document.querySelector(`g.node[data-task='${arguments[0]}'] rect`);"
        "return r ? getComputedStyle(r).fill : null;",
        task,
    )


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_instances_and_the_scheduler_policy_selector(cluster, browser, artefacts):
    kiln = Deployment(cluster, token=TOKEN)
    env = {"KILN_API_TOKEN": TOKEN}
    with InstanceProcess(
        ["--model-type", "llama-8b", "--kiln-url", kiln.base, "--max-concurrency", "4"], env=env
    ):
        sign_in(browser, kiln, "/ui/instances")
        wait_for(
            lambda: attr(browser, "#instances-table tbody tr", "data-live-instance") == "yes", 20,
            what="the instance listed as live",
        )  # fmt: skip
        assert "llama-8b" in text(browser, "#instances-table")
        assert attr(browser, "#instances-table .badge", "data-status") == "live"
        assert "0/4" in text(browser, "#instances-table .progress-label")
        wait_for(lambda: "worker" in text(browser, "#processes-table"), 20, what="the worker")
        shoot(browser, artefacts, "instances")

    browser.get(kiln.base + "/ui/scheduler")
    mark_page(browser)
    before = kiln.get("/scheduler/stats")["policy"]
    assert text(browser, "#current-policy") == before
    target = next(p for p in ("ShortestPredicted", "Fair") if p != before)
    Select(browser.find_element(By.ID, "policy-select")).select_by_value(target)
    browser.find_element(By.CSS_SELECTOR, "#policy-form button[type=submit]").click()
    wait_for(lambda: text(browser, "#current-policy") == target, 10, what="the new policy")
    assert kiln.get("/scheduler/stats")["policy"] == target
    assert same_page(browser)
    shoot(browser, artefacts, "scheduler")
