"""The dashboard's parts of issue 14 in a real headless Chromium against ``kiln web``, a worker
and a controller on PostgreSQL and Redis: sending a signal from a waiting task's form, the
schedules page with its next fire times and its pause / resume buttons, and rerunning a failed
run from its button. ``KILN_UPDATE_SCREENSHOTS=1`` also copies the signal form's screenshot to
``docs/screenshots/``."""

from __future__ import annotations

from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from tests.browser.test_dashboard import Deployment, attr, click, mark_page, same_page, shoot, text
from tests.browser.test_dashboard_tasks import publish, run_done
from tests.conftest import fast_settings, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

APPROVAL = {
    "name": "invoice-approval",
    "tasks": [
        {"name": "draft", "handler": "echo", "params": {"invoice": "INV-2026-0142", "eur": 1840}},
        {"name": "Approve", "signal": "approve", "timeout": 3600, "depends_on": ["draft"]},
        {"name": "pay", "handler": "echo", "depends_on": ["Approve"],
         "params": {"approved": "{{Approve.result.approved}}", "by": "{{Approve.result.by}}"}},
    ],
}  # fmt: skip


IN_VIEW = """
const r = arguments[0].getBoundingClientRect();
return r.top >= 0 && r.bottom <= window.innerHeight;
"""


def needs_file(marker: str) -> str:
    """Fails until ``marker`` exists: the outside world the task depends on is fixed."""
    if not Path(marker).exists():
        raise RuntimeError(f"{marker} is missing")
    return "paid"


def type_into(driver, css: str, value: str) -> None:
    box = driver.find_element(By.CSS_SELECTOR, css)
    box.clear()
    box.send_keys(value)


@pytest.fixture
def app_api(cluster, pg_url, redis_url):
    """The application API on the deployment's database and queue (``POST /workflows`` does not
    take tasks of kind ``signal`` yet: its schema lacks the field)."""
    import tests.handlers  # noqa: F401 - registers echo, as KILN_IMPORTS does for the processes
    from kiln import Kiln

    settings = fast_settings(
        database_url=pg_url, broker_url=redis_url, queue_name=cluster.env["KILN_QUEUE"]
    )
    k = Kiln(settings, pool_size=2)
    yield k
    k.close()


def test_a_signal_sent_from_the_form_lets_the_waiting_run_finish(
    cluster, app_api, browser, artefacts
):
    kiln = Deployment(cluster)
    run = {"id": app_api.submit(APPROVAL)}
    browser.get(f"{kiln.base}/ui/runs/{run['id']}")
    mark_page(browser)
    form = "form.signal-form[data-task='Approve']"
    wait_for(
        lambda: attr(browser, form, "data-signal") == "approve",
        30,
        what=f"the signal form; run: {app_api.workflow(run['id'])}\n{cluster.logs()[-4000:]}",
    )
    assert "waits for signal approve" in text(browser, form)
    assert "Deadline" in text(browser, form)
    approve = next(
        t for t in kiln.get(f"/workflows/{run['id']}")["tasks"] if t["name"] == "Approve"
    )
    payload, error = f"#signal-payload-{approve['id']}", f"#signal-error-{approve['id']}"

    # Not JSON: said under the form, nothing sent, and the live updates leave it there.
    type_into(browser, payload, "{approved: yes}")
    click(browser, f"{form} button[type=submit]")
    wait_for(lambda: "not valid JSON" in text(browser, error), 5, what="the JSON complaint")
    assert attr(browser, payload, "aria-invalid") == "true"
    seen = text(browser, "#live-status")
    wait_for(lambda: text(browser, "#live-status") not in (seen, ""), 10, what="a live update")
    assert "not valid JSON" in text(browser, error)
    assert (
        browser.find_element(By.CSS_SELECTOR, payload).get_attribute("value") == "{approved: yes}"
    )
    assert kiln.get(f"/workflows/{run['id']}/signals")["signals"] == []

    # Valid JSON the server refuses (nested past KILN_MAX_JSON_DEPTH): its reason, in one line.
    type_into(browser, payload, "[" * 70 + "]" * 70)
    click(browser, f"{form} button[type=submit]")
    wait_for(lambda: "(HTTP 413)" in text(browser, error), 10, what="the server's refusal")
    refusal = text(browser, error)
    assert refusal.startswith("Could not send signal approve to Approve (HTTP 413): ")
    assert "\n" not in refusal and "Traceback" not in refusal and "deep" in refusal
    assert kiln.get(f"/workflows/{run['id']}/signals")["signals"] == []

    type_into(browser, payload, '{"approved": true, "by": "m.rossi"}')
    assert text(browser, error) == "" and attr(browser, payload, "aria-invalid") is None
    wait_for(lambda: "live ·" in text(browser, "#live-status"), 10, what="a live update")
    publish(shoot(browser, artefacts, "run-signal-form"))  # the form is near the top
    assert browser.execute_script(IN_VIEW, browser.find_element(By.CSS_SELECTOR, form))
    click(browser, f"{form} button[type=submit]")
    wait_for(lambda: "Sent signal approve" in text(browser, "#messages"), 10, what="sent")
    done = run_done(kiln, run["id"])
    assert done["status"] == "succeeded", (done.get("error"), cluster.logs()[-3000:])
    pay = next(t for t in done["tasks"] if t["name"] == "pay")
    assert pay["result"] == {"approved": True, "by": "m.rossi"}
    wait_for(lambda: attr(browser, "h1 .badge", "data-status") == "succeeded", 10, what="shown")
    assert browser.find_elements(By.CSS_SELECTOR, "form.signal-form") == []
    row = "#signals-table tr[data-taken='yes']"
    wait_for(lambda: "Approve" in text(browser, row), 10, what="the signal, taken by Approve")
    assert '"by":"m.rossi"' in text(browser, row).replace(" ", "")
    assert same_page(browser), "the page was reloaded"


def test_the_schedules_page_shows_next_fire_times_pauses_resumes_and_links_its_runs(
    cluster, browser, artefacts
):
    kiln = Deployment(cluster)
    echo = {"name": "tick", "tasks": [{"name": "e", "handler": "echo"}]}
    nightly = kiln.post("/schedules", {"name": "nightly-close", "cron": "30 2 * * *",
                                       "timezone": "Europe/Berlin", "workflow": echo})  # fmt: skip
    browser.get(kiln.base + "/ui/schedules")
    mark_page(browser)
    row = f"#schedule-{nightly['id']}"
    fires = browser.find_elements(By.CSS_SELECTOR, f"{row} .fire-time")
    assert [f.text for f in fires] == [
        t.replace("T", " ")[:19] for t in kiln.get(f"/schedules/{nightly['id']}")["next_fire_times"]
    ]
    assert len(fires) == 5 and "02:30 CE" in text(browser, f"{row} .next-fires")

    click(browser, f"{row} button[data-describe='pause schedule nightly-close']")
    wait_for(lambda: attr(browser, row, "data-paused") == "yes", 10, what="paused")
    assert browser.find_elements(By.CSS_SELECTOR, f"{row} .fire-time") == []
    assert kiln.get(f"/schedules/{nightly['id']}")["paused"] is True
    click(browser, f"{row} button[data-describe='resume schedule nightly-close']")
    wait_for(lambda: attr(browser, row, "data-paused") == "no", 10, what="resumed")
    assert len(browser.find_elements(By.CSS_SELECTOR, f"{row} .fire-time")) == 5

    # One that fires every second: its runs appear under its latest fires, and open.
    every = kiln.post("/schedules", {"name": "every-second", "cron": "* * * * * *",
                                     "overlap": "allow", "workflow": echo})  # fmt: skip
    fired = f"#schedule-{every['id']} a[href^='/ui/runs/']"
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, fired), 20, what="a fire shown")
    shoot(browser, artefacts, "schedules")
    click(browser, f"#schedule-{every['id']} button[data-describe='pause schedule every-second']")
    wait_for(lambda: attr(browser, f"#schedule-{every['id']}", "data-paused") == "yes", 10)
    assert same_page(browser)
    click(browser, fired)
    wait_for(lambda: "/ui/runs/" in browser.current_url, 10, what="the fired run's page")
    assert f"schedule {every['id']}" in text(browser, "#from-schedule")


def test_a_failed_run_is_rerun_from_its_button_and_the_new_run_links_back(
    cluster, browser, artefacts, tmp_path
):
    kiln = Deployment(cluster)
    marker = tmp_path / "ledger-ready"
    run = kiln.post(
        "/workflows",
        {
            "name": "month-end",
            "tasks": [
                {"name": "extract", "handler": "echo", "params": {"rows": 3}},
                {"name": "post", "handler": "tests.browser.test_dashboard_waits:needs_file",
                 "params": {"marker": str(marker)}, "max_attempts": 1, "depends_on": ["extract"]},
            ],
        },
    )  # fmt: skip
    assert run_done(kiln, run["id"])["status"] == "failed"
    browser.get(f"{kiln.base}/ui/runs/{run['id']}")
    mark_page(browser)
    marker.write_text("ok")
    click(browser, f"button[data-action='/workflows/{run['id']}/rerun']")
    link = "#messages a.message-link"
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, link), 10, what="the new run's link")
    new_id = int(attr(browser, link, "href").rsplit("/", 1)[-1])
    assert new_id != run["id"] and text(browser, link) == f"Open run {new_id}"
    assert same_page(browser)
    click(browser, link)
    wait_for(lambda: browser.current_url.endswith(f"/ui/runs/{new_id}"), 10, what="new run")
    assert f"run {run['id']}" in text(browser, "#rerun-of")
    done = run_done(kiln, new_id)
    assert done["status"] == "succeeded", (done.get("error"), cluster.logs()[-3000:])
    extract = next(t for t in done["tasks"] if t["name"] == "extract")
    assert extract["status"] == "succeeded" and extract["attempts"] == 0  # reused, not rerun
    reused = "#tasks-table tr[data-task='extract'] .reused"
    assert text(browser, reused) == f"result reused from run {run['id']}"
    assert browser.find_elements(By.CSS_SELECTOR, "#tasks-table tr[data-task='post'] .reused") == []
    wait_for(lambda: attr(browser, "h1 .badge", "data-status") == "succeeded", 10, what="shown")
    shoot(browser, artefacts, "rerun")
