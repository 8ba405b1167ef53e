"""Retention on both databases: finished runs go with their tasks, attempts, edges and
events, in batches; unfinished runs never do; a dry run counts without deleting; a schedule's
retention overrides KILN_RETENTION_DAYS; the controller prunes by itself."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

import tests.handlers  # noqa: F401 - registers the handlers the definitions name
from kiln.app import retention
from kiln.app.runtime import Kiln
from kiln.core.states import WORKFLOW_TERMINAL
from tests.conftest import ROOT, fast_settings, wait_for
from tests.handlers import SEEN

NOW = dt.timedelta(0)  # "older than nothing": every finished run
CHAIN = {"name": "chain", "tasks": [{"name": "A", "handler": "echo"},
                                    {"name": "B", "handler": "echo", "depends_on": ["A"]}]}  # fmt: skip
BROKEN = {"name": "broken", "tasks": [{"name": "A", "handler": "fail_always", "max_attempts": 2}]}


def long_run(key: str) -> dict:
    """Runs until its run is cancelled (then returns), so no worker thread outlives the test."""
    return {"name": "long", "tasks": [{"name": "A", "handler": "poll_cancelled",
                                       "params": {"key": key}}]}  # fmt: skip


def finished(kiln, wf_id):
    return wait_for(
        lambda: (r := kiln.workflow(wf_id))["status"] in WORKFLOW_TERMINAL and r,
        what=f"workflow {wf_id} to finish",
    )


def rows_of(kiln, run_ids):
    """How many rows each table still holds for ``run_ids``."""
    ids = ",".join(str(i) for i in run_ids)
    sql = {
        "runs": f"SELECT count(*) FROM workflows WHERE id IN ({ids})",
        "tasks": f"SELECT count(*) FROM tasks WHERE workflow_id IN ({ids})",
        "attempts": "SELECT count(*) FROM task_attempts a JOIN tasks t ON t.id = a.task_id "
        f"WHERE t.workflow_id IN ({ids})",
        "edges": "SELECT count(*) FROM task_dependencies d JOIN tasks t ON t.id = d.task_id "
        f"WHERE t.workflow_id IN ({ids})",
        "events": f"SELECT count(*) FROM events WHERE workflow_id IN ({ids})",
    }
    return kiln.read(lambda c: {k: c.execute(sa.text(q)).scalar() for k, q in sql.items()})


def test_pruning_removes_finished_runs_with_everything_theirs_and_never_an_unfinished_one(
    kiln, embedded
):
    done = [finished(kiln, kiln.submit(d))["id"] for d in (CHAIN, CHAIN, BROKEN)]
    cancelled = kiln.submit(long_run("retention-cancelled"))
    kiln.cancel(cancelled)
    live = kiln.submit(long_run("retention-live"))
    wait_for(lambda: kiln.run(live)["status"] == "running", what="the long run to start")
    gone = [*done, cancelled]
    before = rows_of(kiln, gone)
    assert before["tasks"] == 6 and before["attempts"] >= 6 and before["events"] > 0

    preview = kiln.retention.preview(NOW)
    assert (preview["runs"], preview["tasks"]) == (4, 6)
    assert preview["attempts"] == before["attempts"] and preview["events"] == before["events"]
    assert rows_of(kiln, gone) == before  # a dry run deletes nothing

    pruned = kiln.retention.prune(NOW, batch=2)  # two batches of two
    assert pruned == {k: preview[k] for k in ("runs", "tasks", "attempts", "events")}
    assert rows_of(kiln, gone) == {"runs": 0, "tasks": 0, "attempts": 0, "edges": 0, "events": 0}
    assert kiln.run(live)["status"] == "running"
    assert rows_of(kiln, [live])["tasks"] == 1
    kiln.cancel(live)
    wait_for(lambda: "cancelled" in SEEN.get("retention-live", []), what="the task to stop")


def test_runs_finished_more_recently_than_the_cutoff_stay(kiln, embedded):
    run_id = finished(kiln, kiln.submit(CHAIN))["id"]
    assert kiln.retention.preview(dt.timedelta(days=30))["runs"] == 0
    assert kiln.retention.prune(dt.timedelta(days=30))["runs"] == 0
    assert kiln.run(run_id)["status"] == "succeeded"


def test_a_schedules_retention_overrides_the_default(kiln, embedded):
    s = kiln.schedules.create({"name": "short", "cron": "* * * * * *", "workflow": CHAIN,
                               "overlap": "allow", "retention_days": 1e-9})  # fmt: skip
    kiln.schedules.fire_due(now=s["next_fire_at"])
    scheduled = kiln.workflows(name_contains="chain")[0]["id"]
    kiln.schedules.pause(s["id"])
    plain = kiln.submit(CHAIN)
    finished(kiln, scheduled), finished(kiln, plain)

    assert kiln.settings.retention_days is None
    # only the schedule's run goes (no default is set): pruned here or by the controller
    kiln.retention.prune()
    wait_for(lambda: rows_of(kiln, [scheduled])["runs"] == 0, what="the scheduled run to go")
    assert rows_of(kiln, [plain])["runs"] == 1 and kiln.retention.prune()["runs"] == 0

    tight = Kiln(dataclasses.replace(kiln.settings, retention_days=1e-9), pool_size=2)
    try:
        assert tight.retention.prune()["runs"] == 1
    finally:
        tight.close()
    assert rows_of(kiln, [plain])["runs"] == 0


def test_a_retention_per_workflow_name_overrides_the_default_for_runs_of_that_name(kiln, embedded):
    other = {**CHAIN, "name": "keep-me"}
    short, kept = (finished(kiln, kiln.submit(d))["id"] for d in (CHAIN, other))
    by_name = Kiln(
        dataclasses.replace(kiln.settings, retention_days=365.0,
                            retention_days_by_name=(("chain", 1e-9),)),
        pool_size=2,
    )  # fmt: skip
    try:
        assert by_name.retention.preview()["runs"] == 1
        assert by_name.retention.prune()["runs"] == 1
    finally:
        by_name.close()
    assert rows_of(kiln, [short])["runs"] == 0 and rows_of(kiln, [kept])["runs"] == 1


@pytest.mark.parametrize("raw", ["chain", "chain=0", "=3", "chain=soon"])
def test_a_bad_retention_per_name_is_refused_with_its_variable_named(monkeypatch, raw):
    from kiln.core.config import Settings

    monkeypatch.setenv("KILN_RETENTION_DAYS_BY_NAME", raw)
    with pytest.raises(ValueError, match="KILN_RETENTION_DAYS_BY_NAME must be NAME=DAYS"):
        Settings.from_env()


def test_the_controller_prunes_by_kiln_retention_days(database_url, monkeypatch):
    from kiln.workers.embedded import EmbeddedRuntime

    monkeypatch.setattr(retention, "PRUNE_EVERY_S", 0.2)
    k = Kiln(fast_settings(database_url=database_url, retention_days=1e-6), pool_size=8)
    try:
        with EmbeddedRuntime(k, threads=2):
            run_id = k.submit(CHAIN)
            wait_for(lambda: rows_of(k, [run_id])["runs"] == 0 and
                     rows_of(k, [run_id])["tasks"] == 0, what="the controller to prune it")  # fmt: skip
    finally:
        k.close()


def kiln_cli(url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KILN_DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    env.pop("KILN_RETENTION_DAYS", None)
    return subprocess.run([sys.executable, "-m", "kiln.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_kiln_db_prune_dry_run_shows_what_would_go_and_then_prunes_it(kiln, embedded, database_url):
    run_id = finished(kiln, kiln.submit(CHAIN))["id"]
    wait_for(lambda: kiln.retention.preview(dt.timedelta(seconds=1))["runs"] == 1, what="1 s")
    dry = kiln_cli(database_url, "db", "prune", "--older-than", "1s", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout) == {"runs": 1, "tasks": 2, "attempts": 2,
                                      "events": rows_of(kiln, [run_id])["events"], "dry_run": True}  # fmt: skip
    assert rows_of(kiln, [run_id])["runs"] == 1
    text = kiln_cli(database_url, "db", "prune", "--older-than", "1s", "--dry-run")
    assert "would delete 1 runs, 2 tasks, 2 attempts" in text.stdout
    real = kiln_cli(database_url, "db", "prune", "--older-than", "1s")
    assert real.returncode == 0 and "deleted 1 runs, 2 tasks" in real.stdout
    assert rows_of(kiln, [run_id])["runs"] == 0


@pytest.mark.parametrize("args", [("--older-than", "soon"), ()])
def test_kiln_db_prune_refuses_a_bad_age_or_no_retention_in_one_line(database_url, args):
    r = kiln_cli(database_url, "db", "prune", *args)
    assert r.returncode == 2
    assert r.stderr.startswith("error:") and "Traceback" not in r.stderr
