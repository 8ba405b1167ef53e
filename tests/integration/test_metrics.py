"""``GET /metrics`` after real workflows ran: parsed with prometheus-client's own parser, and
every figure checked against the database it claims to describe."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from kiln.app.runtime import Kiln
from kiln.app.scheduler import set_policy_txn
from kiln.store.operations import create_operation_txn
from kiln.store.schema import task_attempts, tasks
from kiln.web.app import create_app
from tests.conftest import fast_settings, wait_for

pytestmark = pytest.mark.postgres


def scrape(app) -> dict[str, list]:
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    families = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        families[family.name] = family.samples
    return families


def value(samples, name: str, **labels: str) -> float:
    """The one sample called ``name`` whose labels include ``labels``; 0 when absent."""
    found = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else 0.0


def sql(kiln: Kiln, query: str) -> list:
    return kiln.read(lambda c: c.execute(sa.text(query)).all())


@pytest.fixture
def ran(pg_url):
    """A Kiln on PostgreSQL on which real workflows ran in the embedded runtime (worker
    threads and a controller): successes, a retry, a permanent failure, a lost lease, an
    operation, and two model_type tasks with predictions and measured run times."""
    import tests.handlers  # noqa: F401
    from kiln.workers.embedded import EmbeddedRuntime
    from kiln.workers.hooks import controller_hooks

    kiln = Kiln(fast_settings(database_url=pg_url), pool_size=8)
    kiln.upgrade()
    # A worker that claims a task and dies: the controller recovers its lease.
    lost_run = kiln.submit(
        {"name": "doomed", "tasks": [{"name": "L", "handler": "noop", "max_attempts": 1}]}
    )
    (dispatch,) = kiln.dispatch(10)
    kiln.claim([(dispatch.task_id, dispatch.attempt)], "worker:gone:1:abc")
    kiln.txn(
        lambda c: c.execute(
            tasks.update()
            .where(tasks.c.id == dispatch.task_id)
            .values(lease_expires_at=sa.func.now() - dt.timedelta(seconds=5))
        )
    )
    recovery = kiln.recover()
    assert recovery.lost == [dispatch.task_id]

    good = kiln.submit(
        {
            "name": "etl",
            "on_error": "continue",
            "tasks": [
                {"name": "A", "handler": "add", "params": {"a": 1, "b": 2}},
                {"name": "B", "handler": "fail_until", "params": {"succeed_on": 2},
                 "depends_on": ["A"]},
                {"name": "C", "handler": "fail_always", "max_attempts": 1},
                {"name": "D", "handler": "echo", "depends_on": ["C"]},
                {"name": "E", "handler": "sleep", "params": {"seconds": 0.05}},
            ],
        }
    )  # fmt: skip
    later = kiln.submit(
        {"name": "later", "tasks": [{"name": "X", "handler": "sleep", "params": {"seconds": 1}}]}
    )
    kiln.txn(lambda c: set_policy_txn(c, "Priority"))
    with EmbeddedRuntime(kiln, threads=4, hooks=controller_hooks()):
        wait_for(lambda: kiln.workflow(good)["status"] == "failed", what="etl to finish")
        kiln.txn(
            lambda c: create_operation_txn(
                c, "cancel", request_data={"workflow_id": later}, workflow_id=later
            )
        )
        wait_for(
            lambda: sql(kiln, "SELECT 1 FROM operations WHERE status IN ('completed', 'failed')"),
            what="the cancel operation to be applied",
        )
        wait_for(lambda: kiln.workflow(later)["status"] in ("cancelled", "succeeded"))
    assert kiln.workflow(lost_run)["status"] == "failed"
    # Two model_type tasks as an instance would have finished them: predicted vs measured.
    kiln.submit(
        {"name": "llm", "tasks": [{"name": "P", "model_type": "llama"},
                                  {"name": "Q", "model_type": "llama"}]},
        check_handlers=False,
    )  # fmt: skip
    kiln.txn(
        lambda c: c.execute(
            sa.text(
                "UPDATE tasks SET predicted_s = 2.0, actual_s = CASE name WHEN 'P' THEN 3.0 "
                "ELSE 1.5 END WHERE model_type = 'llama'"
            )
        )
    )
    yield kiln
    kiln.close()


def test_metrics_parse_and_task_counts_match_the_database(ran):
    m = scrape(create_app(ran))
    for state, model_type, n in sql(
        ran, "SELECT status, COALESCE(model_type, ''), count(*) FROM tasks GROUP BY 1, 2"
    ):
        assert value(m["kiln_tasks"], "kiln_tasks", state=state, model_type=model_type) == n
    assert sum(s.value for s in m["kiln_tasks"]) == sql(ran, "SELECT count(*) FROM tasks")[0][0]
    for state, n in sql(ran, "SELECT status, count(*) FROM workflows GROUP BY 1"):
        assert value(m["kiln_workflows"], "kiln_workflows", state=state) == n
    assert value(m["kiln_ready_tasks"], "kiln_ready_tasks", model_type="llama") == 2
    assert value(m["kiln_database_up"], "kiln_database_up") == 1


def test_attempts_retries_and_lease_recoveries_match_the_attempt_history(ran):
    m = scrape(create_app(ran))
    for outcome, n in sql(ran, "SELECT outcome, count(*) FROM task_attempts GROUP BY 1"):
        assert value(m["kiln_task_attempts"], "kiln_task_attempts_total", outcome=outcome) == n
    retries = sql(ran, "SELECT count(*) FROM task_attempts WHERE attempt > 1")[0][0]
    assert retries >= 1  # B failed once and succeeded on its second attempt
    assert value(m["kiln_task_retries"], "kiln_task_retries_total") == retries
    assert value(m["kiln_lease_recoveries"], "kiln_lease_recoveries_total") == 1


def test_duration_histogram_counts_every_finished_attempt_with_cumulative_buckets(ran):
    m = scrape(create_app(ran))
    samples = m["kiln_task_duration_seconds"]
    rows = ran.read(
        lambda c: c.execute(
            sa.select(
                task_attempts.c.outcome,
                sa.func.count(),
                sa.func.sum(
                    sa.func.extract(
                        "epoch", task_attempts.c.finished_at - task_attempts.c.started_at
                    )
                ),
            )
            .where(task_attempts.c.finished_at.is_not(None))
            .group_by(task_attempts.c.outcome)
        ).all()
    )
    assert rows
    for outcome, n, total in rows:
        labels = {"outcome": outcome, "model_type": ""}
        assert value(samples, "kiln_task_duration_seconds_count", **labels) == n
        assert value(samples, "kiln_task_duration_seconds_sum", **labels) == pytest.approx(
            max(float(total), 0.0), abs=1e-3
        )
        buckets = [
            s for s in samples if s.name.endswith("_bucket") and labels.items() <= s.labels.items()
        ]
        counts = [s.value for s in buckets]
        assert counts == sorted(counts) and counts[-1] == n
        assert buckets[-1].labels["le"] == "+Inf"
    # E slept 50 ms, so at least one successful attempt is above the 25 ms bucket.
    ok = {"outcome": "succeeded", "model_type": ""}
    assert value(samples, "kiln_task_duration_seconds_bucket", le="0.025", **ok) < value(
        samples, "kiln_task_duration_seconds_count", **ok
    )


def test_submit_to_start_latency_covers_the_first_attempt_of_every_root_task(ran):
    m = scrape(create_app(ran))
    roots = sql(
        ran,
        "SELECT count(*) FROM task_attempts a JOIN tasks t ON t.id = a.task_id "
        "WHERE a.attempt = 1 AND NOT EXISTS "
        "(SELECT 1 FROM task_dependencies d WHERE d.task_id = t.id)",
    )[0][0]
    assert roots >= 4  # L, A, C, E, X
    assert (
        value(
            m["kiln_task_submit_to_start_seconds"],
            "kiln_task_submit_to_start_seconds_count",
            model_type="",
        )
        == roots
    )


def test_operations_prediction_error_and_scheduler_policy_are_reported(ran):
    m = scrape(create_app(ran))
    for operation, status, n in sql(
        ran, "SELECT operation, status, count(*) FROM operations GROUP BY 1, 2"
    ):
        assert (
            value(m["kiln_operations"], "kiln_operations", operation=operation, status=status) == n
        )
    assert sum(s.value for s in m["kiln_operations"] if s.labels["operation"] == "cancel") == 1
    errors = m["kiln_prediction_abs_error_seconds"]
    assert value(errors, "kiln_prediction_abs_error_seconds_count", model_type="llama") == 2
    assert value(
        errors, "kiln_prediction_abs_error_seconds_sum", model_type="llama"
    ) == pytest.approx(1.5)
    assert value(
        m["kiln_prediction_actual_over_predicted"],
        "kiln_prediction_actual_over_predicted",
        model_type="llama",
    ) == pytest.approx((1.5 + 0.75) / 2)
    (info,) = m["kiln_scheduler_info"]
    assert info.name == "kiln_scheduler_info" and info.labels["policy"] == "Priority"
    stored = sql(ran, "SELECT state FROM scheduler_state")[0][0]
    assert (
        value(m["kiln_scheduler_scheduled"], "kiln_scheduler_scheduled_total")
        == stored["total_scheduled"]
    )


def test_processes_and_instances_come_from_their_heartbeats(ran):
    from kiln.store.instances import Registration, register_txn
    from kiln.store.processes import register_process_txn

    ran.txn(lambda c: register_process_txn(c, "worker:h:1:a", "worker", concurrency=6))
    ran.txn(lambda c: register_process_txn(c, "controller:h:2:b", "controller"))
    iid, _ = ran.txn(
        lambda c: register_txn(
            c,
            Registration.parse(
                {"name": "gpu-1", "url": "http://127.0.0.1:1/x", "model_type": "llama",
                 "max_concurrency": 2}
            ),
        )
    )  # fmt: skip
    m = scrape(create_app(ran))
    live = sql(
        ran,
        "SELECT kind, count(*) FROM processes WHERE stopped_at IS NULL "
        "AND heartbeat_at > now() - interval '10 seconds' GROUP BY 1",
    )
    for kind, n in live:
        assert value(m["kiln_processes"], "kiln_processes", kind=kind) == n
    assert value(m["kiln_worker_threads"], "kiln_worker_threads") == 6
    labels = {"instance_id": str(iid), "instance": "gpu-1", "model_type": "llama"}
    assert value(m["kiln_instance_up"], "kiln_instance_up", **labels) == 1
    assert value(m["kiln_instance_tasks_in_flight"], "kiln_instance_tasks_in_flight", **labels) == 0
    assert (
        value(m["kiln_instance_slots"], "kiln_instance_slots", **labels)
        == sql(ran, f"SELECT slots FROM instances WHERE id = {iid}")[0][0]
    )


def test_metrics_say_the_database_is_down_instead_of_failing_the_scrape():
    from tests.chaos.services import free_port

    down = Kiln(fast_settings(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/x"))
    try:
        m = scrape(create_app(down))
        assert value(m["kiln_database_up"], "kiln_database_up") == 0
        assert "kiln_tasks" not in m
    finally:
        down.close()


def test_metrics_work_on_the_embedded_sqlite_database(sqlite_url):
    kiln = Kiln(fast_settings(database_url=sqlite_url))
    try:
        kiln.submit(
            {"name": "w", "tasks": [{"name": "A", "handler": "noop"}]}, check_handlers=False
        )
        m = scrape(create_app(kiln))
        assert value(m["kiln_tasks"], "kiln_tasks", state="ready", model_type="") == 1
        assert value(m["kiln_database_up"], "kiln_database_up") == 1
    finally:
        kiln.close()


def test_per_handler_attempts_durations_and_retries_match_the_attempt_history(ran):
    m = scrape(create_app(ran))
    by_handler = sql(
        ran,
        "SELECT t.handler, a.outcome, count(*) FROM task_attempts a "
        "JOIN tasks t ON t.id = a.task_id GROUP BY 1, 2",
    )
    assert {h for h, _, _ in by_handler} >= {"add", "fail_until", "fail_always", "noop"}
    for handler, outcome, n in by_handler:
        got = value(
            m["kiln_handler_attempts"], "kiln_handler_attempts_total",
            handler=handler, queue="default", outcome=outcome,
        )  # fmt: skip
        assert got == n, (handler, outcome)
    finished = sql(
        ran,
        "SELECT t.handler, count(*) FROM task_attempts a JOIN tasks t ON t.id = a.task_id "
        "WHERE a.finished_at IS NOT NULL GROUP BY 1",
    )
    for handler, n in finished:
        samples = m["kiln_handler_duration_seconds"]
        assert value(samples, "kiln_handler_duration_seconds_count", handler=handler) == n
        assert (
            value(samples, "kiln_handler_duration_seconds_bucket", handler=handler, le="+Inf") == n
        )
    # fail_until succeeded on its second attempt: its one retry is counted for it alone.
    assert value(m["kiln_handler_retries"], "kiln_handler_retries_total", handler="fail_until") == 1
    assert (
        sum(s.value for s in m["kiln_handler_retries"])
        == sql(ran, "SELECT count(*) FROM task_attempts WHERE attempt > 1")[0][0]
    )


def test_per_handler_labels_are_bounded_with_the_rest_as_other(ran, monkeypatch):
    from kiln.app import metrics

    attempts = dict(sql(
        ran,
        "SELECT t.handler, count(*) FROM task_attempts a JOIN tasks t ON t.id = a.task_id "
        "GROUP BY 1",
    ))  # fmt: skip
    assert len(attempts) >= 3
    monkeypatch.setattr(metrics, "TOP_HANDLERS", 2)
    m = scrape(create_app(ran))
    labels = {s.labels["handler"] for s in m["kiln_handler_attempts"]}
    kept = sorted(attempts, key=lambda h: (-attempts[h], h))[:2]
    assert labels == {*kept, "other"}
    total = sum(s.value for s in m["kiln_handler_attempts"])
    assert total == sum(attempts.values())  # nothing lost in the fold
    other = sum(s.value for s in m["kiln_handler_attempts"] if s.labels["handler"] == "other")
    assert other == sum(n for h, n in attempts.items() if h not in kept)
    durations = {s.labels["handler"] for s in m["kiln_handler_duration_seconds"]}
    assert durations <= {*kept, "other"}
