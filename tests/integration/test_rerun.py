"""Rerun from failure, on both databases: a new linked run reuses the succeeded tasks'
results without running them, and runs the failed task and what depends on it again."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.core.errors import IllegalTransition, WorkflowNotFound
from kiln.core.states import WORKFLOW_TERMINAL
from kiln.web.app import create_app
from tests.conftest import wait_for
from tests.handlers import SEEN

HERE = "tests.integration.test_rerun"


def counted(log: str, value: object) -> object:
    """Appends a line to ``log`` per call: how often the task really ran."""
    with open(log, "a") as f:
        f.write("ran\n")
    return value


def needs_file(marker: str, got: object) -> dict:
    """Fails until ``marker`` exists (the outside world this task depends on is fixed)."""
    if not Path(marker).exists():
        raise RuntimeError(f"{marker} is missing")
    return {"got": got}


def calls(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def finished(kiln, wf_id: int) -> dict:
    return wait_for(
        lambda: (r := kiln.workflow(wf_id))["status"] in WORKFLOW_TERMINAL and r,
        what=f"workflow {wf_id} to finish",
    )


def by_name(run: dict) -> dict:
    return {t["name"]: t for t in run["tasks"]}


@pytest.fixture
def flaky_run(kiln, embedded, tmp_path):
    """A run where A and D succeed, B fails (its marker file is missing), C is downstream."""
    logs = {n: tmp_path / f"{n}.log" for n in "ACD"}
    marker = tmp_path / "fixed"
    definition = {
        "name": "flaky",
        "on_error": "continue",
        "tasks": [
            {"name": "A", "handler": f"{HERE}:counted",
             "params": {"log": str(logs["A"]), "value": {"rows": [1, 2]}}},
            {"name": "B", "handler": f"{HERE}:needs_file", "depends_on": ["A"], "max_attempts": 1,
             "params": {"marker": str(marker), "got": "{{A.result.rows}}"}},
            {"name": "C", "handler": f"{HERE}:counted", "depends_on": ["B"],
             "params": {"log": str(logs["C"]), "value": "{{B.result.got}}"}},
            {"name": "D", "handler": f"{HERE}:counted",
             "params": {"log": str(logs["D"]), "value": "d"}},
        ],
    }  # fmt: skip
    first = finished(kiln, kiln.submit(definition))
    assert first["status"] == "failed"
    t = by_name(first)
    assert (t["A"]["status"], t["B"]["status"], t["C"]["status"], t["D"]["status"]) == (
        "succeeded", "failed", "upstream_failed", "succeeded")  # fmt: skip
    return first, logs, marker


def test_a_rerun_reuses_succeeded_results_and_runs_the_failed_task_and_what_follows(
    kiln, flaky_run
):
    first, logs, marker = flaky_run
    marker.write_text("ok")
    new_id, created = kiln.reruns.rerun(first["id"])
    assert created and new_id != first["id"]
    rerun = finished(kiln, new_id)
    assert rerun["status"] == "succeeded" and rerun["rerun_of"] == first["id"]
    t, old = by_name(rerun), by_name(first)
    for reused in ("A", "D"):
        assert t[reused]["status"] == "succeeded" and t[reused]["attempts"] == 0
        assert t[reused]["result"] == old[reused]["result"]
    assert t["B"]["attempts"] == 1 and t["B"]["result"] == {"got": [1, 2]}
    assert t["C"]["result"] == [1, 2]
    assert (calls(logs["A"]), calls(logs["C"]), calls(logs["D"])) == (1, 1, 1)
    assert kiln.run(first["id"])["status"] == "failed"  # the first run is left as it was


def test_rerun_over_http_links_the_runs_and_a_retried_request_returns_the_same_run(
    kiln, flaky_run, monkeypatch
):
    first, _, marker = flaky_run
    monkeypatch.delenv("KILN_API_TOKEN", raising=False)
    client = create_app(kiln).test_client()
    marker.write_text("ok")
    headers = {"Idempotency-Key": "rerun-1"}
    r = client.post(f"/workflows/{first['id']}/rerun", json={"from": "failed"}, headers=headers)
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert body["rerun_of"] == first["id"] and sorted(body["reused"]) == ["A", "D"]
    again = client.post(f"/workflows/{first['id']}/rerun", json={"from": "failed"},
                        headers=headers)  # fmt: skip
    assert again.status_code == 200 and again.get_json()["id"] == body["id"]
    rerun = client.get(f"/workflows/{body['id']}")
    assert rerun.status_code == 200 and rerun.get_json()["rerun_of"] == first["id"]
    original = client.get(f"/workflows/{first['id']}").get_json()
    assert [r["id"] for r in original["reruns"]] == [body["id"]] and original["children"] == []
    page = client.get(f"/ui/runs/{first['id']}").get_data(as_text=True)
    assert f'data-rerun="{body["id"]}"' in page

    r = client.post(f"/workflows/{first['id']}/rerun", json={"from": "start"})
    assert r.status_code == 422 and r.get_json()["details"]["field"] == "from"
    r = client.post("/workflows/999999/rerun", json={})
    assert r.status_code == 404 and r.get_json()["error"] == "workflow_not_found"
    assert finished(kiln, body["id"])["status"] == "succeeded"
    r = client.post(f"/workflows/{body['id']}/rerun", json={})
    assert r.status_code == 409 and r.get_json()["error"] == "illegal_transition"


def test_only_a_failed_or_cancelled_run_can_be_rerun(kiln, embedded):
    ok = finished(kiln, kiln.submit({"name": "ok", "tasks": [{"name": "A", "handler": "echo"}]}))
    with pytest.raises(IllegalTransition):
        kiln.reruns.rerun(ok["id"])
    with pytest.raises(WorkflowNotFound):
        kiln.reruns.rerun(10**9)
    long = kiln.submit(
        {"name": "long", "tasks": [{"name": "A", "handler": "poll_cancelled",
                                    "params": {"key": "rerun"}},
                                   {"name": "B", "handler": "echo", "depends_on": ["A"]}]}
    )  # fmt: skip
    SEEN.pop("rerun", None)
    with pytest.raises(IllegalTransition):
        kiln.reruns.rerun(long)  # not finished
    seen = lambda what, n: SEEN.get("rerun", []).count(what) == n  # noqa: E731
    wait_for(lambda: seen("started", 1), what="the long task to start")
    kiln.cancel(long)
    wait_for(lambda: seen("cancelled", 1), what="the long task to stop")
    new_id, _ = kiln.reruns.rerun(long)
    assert {t["name"]: t["status"] for t in kiln.workflow(new_id)["tasks"]}["B"] == "pending"
    wait_for(lambda: seen("started", 2), what="the rerun's long task to start")
    kiln.cancel(new_id)
    wait_for(lambda: seen("cancelled", 2), what="the rerun's long task to stop")


def chunks(log: str, n: int) -> dict:
    counted(log, None)
    return {"chunks": [{"rows": [i, i + 1]} for i in range(n)]}


def add_up(chunk: dict, marker: str) -> int:
    if chunk["rows"][0] == 1 and not Path(marker).exists():
        raise RuntimeError("item 1 needs the marker")
    return sum(chunk["rows"])


def mapped(kiln, tmp_path, *, merge_needs_marker: bool) -> tuple[dict, Path, Path]:
    from kiln import item
    from kiln.core.builder import Workflow

    log, marker = tmp_path / "split.log", tmp_path / "fixed"
    items_marker = marker
    if merge_needs_marker:  # the items succeed; Merge fails until ``marker`` exists
        items_marker = tmp_path / "items-ok"
        items_marker.write_text("ok")
    wf = Workflow("mapped", on_error="continue")
    s = wf.add(f"{HERE}:chunks", name="Split", params={"log": str(log), "n": 3})
    agg = wf.map(f"{HERE}:add_up", name="Agg", over=s.result["chunks"], max_attempts=1,
                 params={"chunk": item, "marker": str(items_marker)})  # fmt: skip
    if merge_needs_marker:
        wf.add(f"{HERE}:needs_file", name="Merge", depends_on=[agg], max_attempts=1,
               params={"marker": str(marker), "got": agg.result})  # fmt: skip
    else:
        wf.add(f"{HERE}:counted", name="Merge", depends_on=[agg],
               params={"log": str(tmp_path / "merge.log"), "value": agg.result})  # fmt: skip
    return finished(kiln, kiln.submit(wf)), log, marker


def test_a_failed_map_task_is_rerun_as_a_unit_with_its_items_expanded_again(
    kiln, embedded, tmp_path
):
    first, log, marker = mapped(kiln, tmp_path, merge_needs_marker=False)
    assert first["status"] == "failed" and by_name(first)["Agg"]["status"] == "failed"
    marker.write_text("ok")
    rerun = finished(kiln, kiln.reruns.rerun(first["id"])[0])
    t = by_name(rerun)
    assert rerun["status"] == "succeeded", [(x["name"], x["status"]) for x in rerun["tasks"]]
    assert t["Split"]["attempts"] == 0 and calls(log) == 1
    assert t["Agg"]["result"] == [1, 3, 5] and t["Merge"]["result"] == [1, 3, 5]
    assert {f"Agg[{i}]" for i in range(3)} <= set(t)  # expanded anew in the rerun


def test_a_succeeded_map_task_is_reused_whole_without_copying_its_items(kiln, embedded, tmp_path):
    first, log, marker = mapped(kiln, tmp_path, merge_needs_marker=True)
    old = by_name(first)
    assert (old["Agg"]["status"], old["Merge"]["status"]) == ("succeeded", "failed")
    marker.write_text("ok")
    rerun = finished(kiln, kiln.reruns.rerun(first["id"])[0])
    t = by_name(rerun)
    assert rerun["status"] == "succeeded"
    assert set(t) == {"Split", "Agg", "Merge"}  # no item rows: the map's result is reused
    assert t["Agg"]["result"] == old["Agg"]["result"] == [1, 3, 5]
    assert t["Merge"]["result"] == {"got": [1, 3, 5]}


def test_a_failed_runs_dashboard_page_offers_a_rerun_button(kiln, flaky_run, monkeypatch):
    first, _, _ = flaky_run
    monkeypatch.delenv("KILN_API_TOKEN", raising=False)
    html = create_app(kiln).test_client().get(f"/ui/runs/{first['id']}").get_data(as_text=True)
    assert f'data-action="/workflows/{first["id"]}/rerun"' in html
