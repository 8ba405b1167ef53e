"""docs/grafana-dashboard.json and docs/prometheus-alerts.yml use only metrics that a real
Kiln serves: every ``kiln_*`` name in their queries is a sample of ``GET /metrics`` after
real work ran."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kiln.app.runtime import Kiln
from kiln.store.instances import Registration, register_txn
from kiln.store.operations import create_operation_txn
from kiln.web.app import create_app
from tests.conftest import fast_settings, wait_for

pytestmark = pytest.mark.postgres
DOCS = Path(__file__).resolve().parents[2] / "docs"
DASHBOARD = DOCS / "grafana-dashboard.json"
ALERTS = DOCS / "prometheus-alerts.yml"
METRIC = re.compile(r"\bkiln_[a-z0-9_]+\b")


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in board["panels"] for t in p["targets"]]


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


@pytest.fixture
def served(pg_url) -> set[str]:
    """The sample names of /metrics once a run with a retry, an operation and a registered
    instance went through the embedded worker and controller."""
    import tests.handlers  # noqa: F401
    from kiln.workers.embedded import EmbeddedRuntime
    from kiln.workers.hooks import controller_hooks

    kiln = Kiln(fast_settings(database_url=pg_url), pool_size=8)
    try:
        kiln.txn(
            lambda c: register_txn(
                c,
                Registration.parse({"name": "gpu-1", "url": "http://127.0.0.1:1/gpu",
                                    "model_type": "mistral", "max_concurrency": 2}),
            )
        )  # fmt: skip
        run = kiln.submit({"name": "etl", "tasks": [
            {"name": "A", "handler": "fail_until", "params": {"succeed_on": 2}},
            {"name": "B", "handler": "add", "params": {"a": 1, "b": 2}, "depends_on": ["A"]},
        ]})  # fmt: skip
        later = kiln.submit({"name": "later", "tasks": [{"name": "X", "handler": "noop"}]})
        with EmbeddedRuntime(kiln, threads=2, hooks=controller_hooks()):
            wait_for(lambda: kiln.run(run)["status"] == "succeeded", what="the run")
            kiln.txn(
                lambda c: create_operation_txn(
                    c, "pause", request_data={"workflow_id": later}, workflow_id=later
                )
            )
            wait_for(
                lambda: kiln.operations.list()[0][0]["status"] in ("completed", "failed"),
                what="the operation",
            )
        # A run no controller is left to dispatch: one ready task.
        idle = Kiln(fast_settings(database_url=pg_url), pool_size=1)
        idle.submit({"name": "waiting", "tasks": [{"name": "W", "handler": "noop"}]})
        idle.close()
        text = create_app(kiln).test_client().get("/metrics").get_data(as_text=True)
    finally:
        kiln.close()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_every_metric_the_dashboard_and_the_alerts_use_is_served(served):
    used = {m for q in dashboard_queries() + [r["expr"] for r in alert_rules()]
            for m in METRIC.findall(q)}  # fmt: skip
    assert len(used) >= 15
    assert used - served == set(), f"not in /metrics: {sorted(used - served)}"


def test_the_alerts_cover_what_an_operator_is_paged_for():
    rules = {r["alert"]: r for r in alert_rules()}
    wanted = {
        "stuck tasks": "kiln_tasks_lease_expired",
        "no live workers": 'kiln_processes{kind="worker"}',
        "quarantines": "kiln_tasks_quarantined_total",
        "operation failures": 'kiln_operations{status="failed"}',
    }
    for what, needle in wanted.items():
        assert any(needle in r["expr"] for r in rules.values()), what
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name


def test_the_dashboard_is_importable_grafana_json():
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"] == "Kiln"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
        assert panel["targets"] and all(t["expr"] for t in panel["targets"])
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
