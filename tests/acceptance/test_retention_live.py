"""Retention with real processes on PostgreSQL: controllers started with KILN_RETENTION_DAYS
prune old finished runs by themselves while new workflows are submitted and run, and lose
none of the live ones. (bench/prune.py measures 100,000 runs; this checks the behaviour.)"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

import tests.handlers  # noqa: F401 - registers the handlers the definitions name
from kiln.core.states import WORKFLOW_TERMINAL
from tests.conftest import wait_for

pytestmark = pytest.mark.slow
CHAIN = {"name": "chain", "tasks": [{"name": "A", "handler": "echo", "params": {"x": 1}},
                                    {"name": "B", "handler": "echo", "depends_on": ["A"],
                                     "params": {"got": "{{A.result.x}}"}}]}  # fmt: skip
OLD = 300


def count(kiln, sql, **params):
    return kiln.read(lambda c: c.execute(sa.text(sql), params).scalar())


def all_finished(kiln, ids):
    return all(kiln.run(i)["status"] in WORKFLOW_TERMINAL for i in ids)


def test_controllers_prune_old_runs_while_live_ones_are_submitted_and_run(cluster, pg_kiln):
    cluster.worker(threads=4)
    cluster.controller()
    old = [pg_kiln.submit(CHAIN) for _ in range(OLD)]
    wait_for(lambda: all_finished(pg_kiln, old), timeout=120, what="the old runs to finish")
    # Forty days pass for them: they are what KILN_RETENTION_DAYS=30 removes.
    pg_kiln.txn(
        lambda c: c.execute(
            sa.text(
                "UPDATE workflows SET finished_at = finished_at - interval '40 days' "
                "WHERE id <= :last"
            ),
            {"last": max(old)},
        )
    )
    cluster.env["KILN_RETENTION_DAYS"] = "30"
    cluster.controller()
    cluster.controller()

    live = []
    while count(pg_kiln, "SELECT count(*) FROM workflows WHERE id <= :last", last=max(old)):
        live.append(pg_kiln.submit(CHAIN))  # submitted while the pruning goes on
        assert len(live) < 5000, cluster.logs()
    live += [pg_kiln.submit(CHAIN) for _ in range(20)]
    wait_for(lambda: all_finished(pg_kiln, live), timeout=120, what="the live runs to finish")

    assert {pg_kiln.run(i)["status"] for i in live} == {"succeeded"}
    assert (
        count(pg_kiln, "SELECT count(*) FROM tasks WHERE workflow_id <= :last", last=max(old)) == 0
    )
    assert (
        count(pg_kiln, "SELECT count(*) FROM events WHERE workflow_id <= :last", last=max(old)) == 0
    )
    assert count(pg_kiln, "SELECT count(*) FROM workflows") == len(live)
