"""Big results (issue 15, item 7): a result over ``KILN_MAX_RESULT_BYTES`` fails its task
with an error that says what to do, without retries; ``GET /workflows/<id>`` pages its tasks."""

from __future__ import annotations

import pytest

import tests.handlers  # noqa: F401 - registers the test handlers
from kiln.app.runtime import Kiln
from kiln.core.config import Settings
from kiln.core.handlers import task
from kiln.web.app import create_app
from kiln.workers.embedded import EmbeddedRuntime
from tests.conftest import fast_settings


@task(name="big_result")
def big_result(chars: int) -> str:
    return "x" * chars


def run_to_end(kiln: Kiln, definition: dict) -> dict:
    with EmbeddedRuntime(kiln, threads=2):
        run_id = kiln.submit(definition)
        return kiln.wait(run_id, 30)


def test_the_default_limit_is_one_megabyte_and_the_environment_sets_it(monkeypatch):
    assert Settings().max_result_bytes == 1_000_000
    monkeypatch.setenv("KILN_MAX_RESULT_BYTES", "2048")
    assert Settings.from_env().max_result_bytes == 2048


def test_a_result_over_the_limit_fails_its_task_once_with_what_to_do(database_url):
    kiln = Kiln(fast_settings(database_url=database_url), pool_size=4)
    try:
        run = run_to_end(
            kiln,
            {"name": "csv", "on_error": "continue", "tasks": [
                {"name": "Export", "handler": "big_result", "params": {"chars": 1_200_000},
                 "max_attempts": 3},
                {"name": "Small", "handler": "big_result", "params": {"chars": 10}},
            ]},
        )  # fmt: skip
        by_name = {t["name"]: t for t in run["tasks"]}
        export = by_name["Export"]
        assert export["status"] == "failed"
        assert export["attempts"] == 1  # not retried: the same result would be as big again
        assert export["result"] is None
        assert export["error"] == (
            "result is 1.2 MB, over KILN_MAX_RESULT_BYTES (1 MB): "
            "store it elsewhere and return a reference"
        )
        assert by_name["Small"]["status"] == "succeeded"
        assert by_name["Small"]["result"] == "x" * 10
    finally:
        kiln.close()


def test_a_lower_limit_counts_the_result_as_json(database_url):
    kiln = Kiln(fast_settings(database_url=database_url, max_result_bytes=2_000), pool_size=4)
    try:
        run = run_to_end(
            kiln,
            {"name": "r", "on_error": "continue", "tasks": [
                # As JSON, 1,998 characters and their two quotes: exactly the limit.
                {"name": "AtLimit", "handler": "big_result", "params": {"chars": 1_998}},
                {"name": "Over", "handler": "big_result", "params": {"chars": 1_999}},
            ]},
        )  # fmt: skip
        by_name = {t["name"]: t for t in run["tasks"]}
        assert by_name["AtLimit"]["status"] == "succeeded"
        assert by_name["Over"]["status"] == "failed"
        assert by_name["Over"]["error"].startswith(
            "result is 2 kB, over KILN_MAX_RESULT_BYTES (2 kB)"
        )
    finally:
        kiln.close()


@pytest.fixture
def client_and_run(kiln):
    run = kiln.submit(
        {"name": "wide", "tasks": [{"name": f"T{i}", "handler": "noop"} for i in range(7)]}
    )
    return create_app(kiln).test_client(), run


def test_task_lists_come_in_pages_that_chain(client_and_run):
    client, run = client_and_run
    whole = client.get(f"/workflows/{run}").get_json()
    assert whole["tasks_total"] == 7 and whole["tasks_next_after"] is None
    assert len(whole["tasks"]) == 7  # a small run: all of it on the default page
    seen, after, pages = [], None, 0
    while True:
        url = f"/workflows/{run}?tasks_limit=3" + (f"&tasks_after={after}" if after else "")
        page = client.get(url).get_json()
        pages += 1
        assert page["tasks_total"] == 7 and len(page["tasks"]) <= 3
        seen += [t["name"] for t in page["tasks"]]
        after = page["tasks_next_after"]
        if after is None:
            break
        assert after == page["tasks"][-1]["id"]
    assert pages == 3
    assert seen == [t["name"] for t in whole["tasks"]]


def test_a_bad_page_is_refused_with_the_error_shape(client_and_run):
    client, run = client_and_run
    for query in ("tasks_limit=0", "tasks_limit=10001", "tasks_after=-1", "tasks_limit=x"):
        got = client.get(f"/workflows/{run}?{query}")
        assert got.status_code == 422, query
        assert set(got.get_json()) >= {"error", "message"}


def test_the_http_client_follows_the_pages_of_a_big_run(kiln):
    import threading

    from werkzeug.serving import make_server

    from kiln.client import Client

    run = kiln.submit(
        {"name": "wide", "tasks": [{"name": f"T{i}", "handler": "noop"} for i in range(1_005)]}
    )
    server = make_server("127.0.0.1", 0, create_app(kiln), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        got = Client(f"http://127.0.0.1:{server.server_port}").wait(run, 0)
    finally:
        server.shutdown()
        thread.join()
    assert got["tasks_total"] == 1_005 and got["tasks_next_after"] is None
    assert [t["name"] for t in got["tasks"]] == [f"T{i}" for i in range(1_005)]
