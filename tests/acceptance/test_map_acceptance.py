"""A map over 200 items on real worker and controller processes (PostgreSQL, Redis), with a
worker SIGKILLed while the items run and the controller SIGKILLed in the middle of expanding."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from kiln import item
from kiln.core.builder import Workflow
from kiln.core.task_context import current_task
from tests.acceptance.test_crash_recovery import finished
from tests.conftest import wait_for

pytestmark = pytest.mark.slow
HERE = "tests.acceptance.test_map_acceptance"
ITEMS = 200


def split(n: int) -> dict:
    return {"chunks": [{"rows": [i, i + 1]} for i in range(n)]}


def aggregate(chunk: dict, index: int, log: str) -> dict:
    """Takes a moment, then appends "task attempt" to ``log`` as its last act before
    returning: a line is a handler run that succeeded, recorded or not."""
    time.sleep(0.1)
    ctx = current_task()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{ctx.task_id} {ctx.attempt}\n".encode())
    finally:
        os.close(fd)
    return {"index": index, "sum": sum(chunk["rows"])}


def merge(parts: list) -> dict:
    return {"count": len(parts), "order": [p["index"] for p in parts]}


def _block_item_insert(conn: sa.Connection, map_id: int) -> None:
    """In the caller's open transaction, write a row holding the unique (mapped_from,
    map_index) slot of the map's last item, in a run of its own (so no lock is taken on the
    real run's row): an expansion inserting its items then waits on it half-way."""
    wf = conn.execute(
        sa.text(
            "INSERT INTO workflows (name, status, on_error, priority, definition, created_at) "
            "VALUES ('blocker', 'cancelled', 'stop', 0, '{}', now()) RETURNING id"
        )
    ).scalar_one()
    conn.execute(
        sa.text(
            "INSERT INTO tasks (workflow_id, name, params, status, created_at, mapped_from, "
            "map_index) VALUES (:wf, 'blocker', '{}', 'cancelled', now(), :map, :last)"
        ),
        {"wf": wf, "map": map_id, "last": ITEMS - 1},
    )


def _waiting_on_a_lock(kiln) -> int:
    return kiln.read(
        lambda c: c.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database() AND query ILIKE '%INSERT INTO tasks%'"
            )
        ).scalar()
    )


def test_a_200_item_map_survives_a_killed_worker_and_a_controller_killed_while_expanding(
    cluster, pg_kiln, tmp_path: Path
):
    log = tmp_path / "runs.log"
    wf = Workflow("csv-200")
    s = wf.add(f"{HERE}:split", name="Split", params={"n": ITEMS})
    agg = wf.map(
        f"{HERE}:aggregate",
        name="Agg",
        over=s.result["chunks"],
        params={"chunk": item, "index": "{{index}}", "log": str(log)},
        max_attempts=3,
    )
    wf.add(f"{HERE}:merge", name="Merge", params={"parts": agg.result}, depends_on=[agg])
    first_controller = cluster.controller()
    wf_id = pg_kiln.submit(wf, check_handlers=False)
    map_id = next(t["id"] for t in pg_kiln.workflow(wf_id)["tasks"] if t["name"] == "Agg")

    # The controller expands the map as soon as Split succeeds; the blocker makes that
    # transaction stop half-way (the map task marked waiting, 199 items written, uncommitted).
    with pg_kiln.engine.connect() as blocker:
        tx = blocker.begin()
        _block_item_insert(blocker, map_id)
        workers = [cluster.worker(threads=4), cluster.worker(threads=4)]
        wait_for(lambda: _waiting_on_a_lock(pg_kiln), timeout=60, what="the expansion to block")
        first_controller.send_signal(signal.SIGKILL)
        first_controller.wait(timeout=10)
        tx.rollback()

    tasks = {t["name"]: t for t in pg_kiln.workflow(wf_id)["tasks"]}
    assert tasks["Split"]["status"] == "succeeded"
    assert tasks["Agg"]["status"] == "ready"  # the killed expansion left nothing behind
    assert not [t for t in tasks.values() if t["mapped_from"] is not None]

    cluster.controller()
    # Once the items run, SIGKILL the worker running one of them.
    running = wait_for(
        lambda: next(
            (
                t
                for t in pg_kiln.workflow(wf_id)["tasks"]
                if t["mapped_from"] == map_id and t["status"] == "running"
            ),
            None,
        ),
        timeout=60,
        what="a mapped item to run",
    )
    victim = int(running["lease_owner"].split(":")[2])
    assert victim in {w.pid for w in workers}
    os.kill(victim, signal.SIGKILL)

    run = finished(pg_kiln, wf_id, timeout=180, cluster=cluster)
    assert run["status"] == "succeeded", cluster.logs()
    items = [t for t in run["tasks"] if t["mapped_from"] == map_id]
    assert sorted(t["map_index"] for t in items) == list(range(ITEMS))
    assert {t["name"] for t in items} == {f"Agg[{i}]" for i in range(ITEMS)}
    merged = next(t for t in run["tasks"] if t["name"] == "Merge")["result"]
    assert merged == {"count": ITEMS, "order": list(range(ITEMS))}

    # Exactly one recorded success per item, and each recorded success is one handler run.
    successes = {
        (t["id"], a["attempt"])
        for t in items
        for a in t["attempt_history"]
        if a["outcome"] == "succeeded"
    }
    assert sorted(task for task, _ in successes) == sorted(t["id"] for t in items)
    handler_runs = Counter(tuple(map(int, line.split())) for line in log.read_text().splitlines())
    assert all(n == 1 for n in handler_runs.values()), "an attempt ran its handler twice"
    assert successes <= set(handler_runs)
    lost = [a for t in items for a in t["attempt_history"] if a["outcome"] == "lost"]
    assert lost, "the killed worker held no item: nothing was recovered"
    print(json.dumps({"items": ITEMS, "lost_attempts": len(lost)}))
