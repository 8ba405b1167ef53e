"""The admin views (migration 0004) and every query in docs/admin-sql.md, on a real
PostgreSQL holding one example of each situation an operator asks about."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
import sqlalchemy as sa

from kiln.app.runtime import Kiln
from kiln.app.scheduler import place_task_txn
from kiln.store.instances import Registration, register_txn
from kiln.store.processes import register_process_txn
from tests.conftest import fast_settings

pytestmark = pytest.mark.postgres
DOC = Path(__file__).resolve().parents[2] / "docs" / "admin-sql.md"
VIEWS = {
    "dispatch_queue",
    "running_tasks",
    "stuck_tasks",
    "instance_load",
    "prediction_error",
    "live_processes",
    "failed_runs",
    "handler_stats",
}


def rows(kiln: Kiln, query: str) -> list[dict]:
    return kiln.read(lambda c: [dict(r) for r in c.execute(sa.text(query)).mappings()])


def run(kiln: Kiln, statement: str) -> None:
    kiln.txn(lambda c: c.execute(sa.text(statement)))


@pytest.fixture
def scene(pg_url):
    """A running task on a live worker, a model_type task placed on an instance, a task whose
    worker died, tasks queued at two priorities, one in retry backoff, one for a model type no
    instance serves, one pending on a failed dependency, and measured predictions."""
    kiln = Kiln(fast_settings(database_url=pg_url), pool_size=2)
    kiln.txn(lambda c: register_process_txn(c, "worker:h:1:a", "worker", concurrency=4))
    kiln.txn(lambda c: register_process_txn(c, "controller:h:2:b", "controller"))
    run(
        kiln,
        "UPDATE processes SET heartbeat_at = now() - interval '5 minutes' WHERE kind = 'controller'",
    )
    gpu, _ = kiln.txn(
        lambda c: register_txn(
            c,
            Registration.parse(
                {"name": "gpu-1", "url": "http://127.0.0.1:1/gpu", "model_type": "mistral",
                 "max_concurrency": 2}
            ),
        )
    )  # fmt: skip
    submit = lambda d: kiln.submit(d, check_handlers=False)  # noqa: E731
    submit({"name": "busy", "tasks": [{"name": "R", "handler": "noop"},
                                      {"name": "M", "model_type": "mistral"}]})  # fmt: skip
    submit({"name": "doomed", "tasks": [{"name": "D", "handler": "noop"}]})
    ids = {}
    for d in kiln.dispatch(10):
        name = rows(kiln, f"SELECT name FROM tasks WHERE id = {d.task_id}")[0]["name"]
        ids[name] = d.task_id
        kiln.claim([(d.task_id, d.attempt)], "worker:gone:9:z" if name == "D" else "worker:h:1:a")
    assert set(ids) == {"R", "M", "D"}
    placed = kiln.txn(lambda c: place_task_txn(c, ids["M"], 1, "mistral", f"kiln-{ids['M']}-1"))
    assert placed is not None and placed.id == gpu
    run(kiln, f"UPDATE tasks SET predicted_s = 4.0 WHERE id = {ids['M']}")
    run(
        kiln,
        f"UPDATE tasks SET lease_expires_at = now() - interval '1 minute' WHERE id = {ids['D']}",
    )
    submit(
        {"name": "queue", "tasks": [
            {"name": "Low", "handler": "noop"},
            {"name": "High", "handler": "noop", "priority": 5},
            {"name": "Llama", "model_type": "llama"},
            {"name": "Backoff", "handler": "noop"},
        ]}
    )  # fmt: skip
    run(
        kiln,
        "UPDATE tasks SET status = 'retrying', attempts = 1, not_before = now() + interval "
        "'1 hour' WHERE name = 'Backoff'",
    )
    submit({"name": "broken", "tasks": [{"name": "F1", "handler": "noop"},
                                        {"name": "F2", "handler": "noop", "depends_on": ["F1"]}]})  # fmt: skip
    # A failure whose propagation did not happen: exactly what stuck_tasks must reveal.
    run(kiln, "UPDATE tasks SET status = 'failed', finished_at = now() WHERE name = 'F1'")
    submit({"name": "llm", "tasks": [{"name": "P", "model_type": "llama"},
                                     {"name": "Q", "model_type": "llama"}]})  # fmt: skip
    run(
        kiln,
        "UPDATE tasks SET status = 'succeeded', finished_at = now(), predicted_s = 2.0, "
        "actual_s = CASE name WHEN 'P' THEN 3.0 ELSE 1.0 END WHERE name IN ('P', 'Q')",
    )
    # A run that failed a minute ago: its task failed twice (a retry, then for good), and a
    # succeeded attempt of another handler, for the per-handler figures.
    submit({"name": "crashed", "tasks": [{"name": "X", "handler": "parse"},
                                         {"name": "Y", "handler": "load"}]})  # fmt: skip
    run(
        kiln,
        "UPDATE tasks SET status = 'failed', attempts = 2, finished_at = now(), "
        "error = 'ValueError: bad row 7' WHERE name = 'X'",
    )
    run(
        kiln,
        "UPDATE tasks SET status = 'succeeded', attempts = 1, finished_at = now() WHERE name = 'Y'",
    )
    run(
        kiln,
        "UPDATE workflows SET status = 'failed', finished_at = now() - interval '1 minute', "
        "error = 'task X failed' WHERE name = 'crashed'",
    )
    run(
        kiln,
        "INSERT INTO task_attempts (task_id, attempt, worker, outcome, error, started_at, "
        "finished_at) SELECT id, a, 'worker:h:1:a', o, e, now() - s * interval '1 second', now() "
        "FROM tasks, (VALUES (1, 'failed', 'ValueError: bad row 7', 2.0), "
        "(2, 'failed', 'ValueError: bad row 7', 4.0)) AS v(a, o, e, s) WHERE name = 'X' "
        "UNION ALL SELECT id, 1, 'worker:h:1:a', 'succeeded', NULL, now() - interval '1 second', "
        "now() FROM tasks WHERE name = 'Y'",
    )
    yield kiln, ids, gpu
    kiln.close()


def test_dispatch_queue_orders_eligible_tasks_and_says_why_the_others_wait(scene):
    kiln, _, _ = scene
    queue = rows(kiln, "SELECT * FROM dispatch_queue ORDER BY position NULLS LAST, task_name")
    eligible = [r["task_name"] for r in queue if r["position"] is not None]
    assert eligible == ["High", "Low"]  # priority 5 first
    assert [r["position"] for r in queue if r["position"] is not None] == [1, 2]
    held = {r["task_name"]: r["held_because"] for r in queue if r["position"] is None}
    assert held["Llama"] == "no live instance serves model_type llama"
    assert held["Backoff"].startswith("retry backoff until")
    assert {r["policy"] for r in queue} == {"FIFO"}


def test_running_tasks_show_the_worker_process_the_instance_and_the_lease(scene):
    kiln, ids, _ = scene
    running = {r["task_name"]: r for r in rows(kiln, "SELECT * FROM running_tasks")}
    assert set(running) == {"R", "M", "D"}
    assert running["R"]["worker_host"] == socket.gethostname()
    assert running["R"]["attempt"] == 1 and running["R"]["lease_expired"] is False
    assert running["M"]["instance_name"] == "gpu-1"
    assert running["D"]["worker_host"] is None  # that process never registered: it is gone
    assert running["D"]["lease_expired"] is True
    assert running["R"]["running_for"].total_seconds() >= 0


def test_stuck_tasks_name_each_reason(scene):
    kiln, ids, _ = scene
    stuck = {r["task_name"]: r for r in rows(kiln, "SELECT * FROM stuck_tasks")}
    assert {name: r["reason"] for name, r in stuck.items()} == {
        "D": "lease_expired",
        "Llama": "no_instance",
        "F2": "failed_dependency",
    }
    assert "worker:gone:9:z stopped extending its lease" in stuck["D"]["detail"]
    assert stuck["F2"]["detail"].startswith("depends on F1")
    assert stuck["D"]["stuck_for"].total_seconds() >= 59


def test_instance_load_counts_tasks_in_flight_against_slots(scene):
    kiln, _, gpu = scene
    (load,) = rows(kiln, f"SELECT * FROM instance_load WHERE id = {gpu}")
    assert load["kiln_tasks_in_flight"] == 1
    assert load["utilisation"] == pytest.approx(1 / load["slots"])
    assert load["predicted_work_s"] == pytest.approx(4.0)
    assert load["predicted_backlog_s"] == pytest.approx(4.0 / load["slots"])
    assert load["ready_for_model_type"] == 0


def test_prediction_error_is_per_model_type(scene):
    kiln, _, _ = scene
    (llama,) = rows(kiln, "SELECT * FROM prediction_error WHERE model_type = 'llama'")
    assert llama["tasks"] == 2
    assert llama["mean_error_s"] == pytest.approx(0.0)  # +1 and -1
    assert llama["mean_abs_error_s"] == pytest.approx(1.0)
    assert llama["mean_abs_pct_error"] == pytest.approx((1 / 3 + 1) / 2)


def test_live_processes_tell_alive_from_dead_and_count_their_tasks(scene):
    kiln, _, _ = scene
    procs = {r["kind"]: r for r in rows(kiln, "SELECT * FROM live_processes")}
    assert procs["worker"]["alive"] is True and procs["worker"]["running_tasks"] == 2
    assert procs["controller"]["alive"] is False


def test_failed_runs_list_the_last_hours_failures_with_their_errors(scene):
    kiln, _, _ = scene
    (crashed,) = rows(kiln, "SELECT * FROM failed_runs")
    assert (crashed["workflow_name"], crashed["task_name"]) == ("crashed", "X")
    assert crashed["task_error"] == "ValueError: bad row 7"
    assert crashed["run_error"] == "task X failed" and crashed["attempts"] == 2
    assert crashed["failed_ago"].total_seconds() >= 59


def test_handler_stats_give_failure_rate_and_duration_percentiles(scene):
    kiln, _, _ = scene
    stats = {r["handler"]: r for r in rows(kiln, "SELECT * FROM handler_stats")}
    assert set(stats) == {"parse", "load"}  # running attempts are not finished yet
    parse = stats["parse"]
    assert (parse["attempts"], parse["failed"], parse["succeeded"]) == (2, 2, 0)
    assert float(parse["failure_rate"]) == 1.0
    assert parse["p50_s"] == pytest.approx(3.0, abs=0.1)  # of 2 s and 4 s
    assert parse["p95_s"] == pytest.approx(3.9, abs=0.1)
    assert float(stats["load"]["failure_rate"]) == 0.0


def test_events_say_who_and_why_and_take_lists_of_ids(scene):
    kiln, ids, _ = scene
    found = rows(
        kiln,
        f"SELECT entity_id FROM events WHERE entity = 'task' AND entity_id IN ({ids['R']}, "
        f"{ids['D']}) AND to_status = 'running' ORDER BY entity_id",
    )
    assert [r["entity_id"] for r in found] == sorted([ids["R"], ids["D"]])
    columns = rows(kiln, "SELECT actor, reason FROM events LIMIT 1")[0]
    assert set(columns) == {"actor", "reason"}


def test_every_view_has_a_comment_and_is_documented(scene):
    kiln, _, _ = scene
    found = rows(
        kiln,
        "SELECT c.relname, obj_description(c.oid) AS comment FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind = 'v'",
    )
    assert {r["relname"] for r in found} == VIEWS
    assert all(r["comment"] for r in found)
    doc = DOC.read_text()
    for view in VIEWS:
        assert re.search(rf"FROM {view}\b", doc), f"docs/admin-sql.md has no query on {view}"


def test_every_query_in_the_admin_doc_runs(scene):
    kiln, _, _ = scene
    blocks = re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 15
    answered = set()
    for block in blocks:
        result = rows(kiln, block)
        for view in VIEWS:
            if re.search(rf"FROM {view}\b", block) and result:
                answered.add(view)
    # Each view's documented queries return something on this scene.
    assert answered == VIEWS
