"""Rerun from failure: a new run of a finished run's definition, linked to it by
``workflows.rerun_of``, whose tasks that succeeded the first time are written already
``succeeded`` with their results, and whose other tasks (failed, cancelled, upstream_failed
and what depends on them) run again.

A map task is one unit: reused whole when it succeeded (its result is its items' results),
run again (its items expanded again) otherwise; the first run's item rows are not copied.
Child runs the first run started are left as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from kiln.core.definitions import WorkflowSpec
from kiln.core.errors import IllegalTransition
from kiln.core.idempotency import IdempotencyKey
from kiln.core.states import TaskStatus, WorkflowStatus
from kiln.store.db import utcnow
from kiln.store.dialects import statements
from kiln.store.schema import tasks, workflows
from kiln.store.workflows import get_run, replayed_run, run_rows

RERUNNABLE = (WorkflowStatus.FAILED, WorkflowStatus.CANCELLED)


def rerun_txn(
    conn: sa.Connection,
    workflow_id: int,
    *,
    workflow_of: Callable[[dict[str, Any]], WorkflowSpec],
    idempotency_key: IdempotencyKey | None = None,
    trace_context: str | None = None,
) -> tuple[int, bool]:
    """Write the rerun of ``workflow_id``; return ``(new run id, created)``. IllegalTransition
    (409) unless the run is failed or cancelled; WorkflowNotFound (404) if there is none. With
    an idempotency key used before on the same request, the run it made (``created=False``)."""
    run = get_run(conn, workflow_id)
    if run["status"] not in RERUNNABLE:
        raise IllegalTransition(
            f"workflow {workflow_id} is {run['status']}; only a failed or cancelled run can be "
            "rerun from its failure",
            id=workflow_id,
            status=run["status"],
        )
    spec = workflow_of(run["definition"])
    names = {t.name for t in spec.tasks}
    done = {
        r.name: r
        for r in conn.execute(
            sa.select(tasks.c.name, tasks.c.result, tasks.c.started_at, tasks.c.finished_at).where(
                tasks.c.workflow_id == workflow_id,
                tasks.c.status == TaskStatus.SUCCEEDED,
                tasks.c.name.in_(sorted(names)),  # a map's items are not units of their own
            )
        )
    }
    if set(done) == names:
        raise IllegalTransition(
            f"every task of workflow {workflow_id} succeeded; there is nothing to rerun",
            id=workflow_id,
            status=run["status"],
        )
    now = utcnow()
    values, rows, edges = run_rows(spec, idempotency_key, now)
    values["trace_context"] = trace_context
    deps: dict[str, set[str]] = {t.name: set(t.depends_on) for t in spec.tasks}
    for row in rows:
        row["direct"] = False
        if row["name"] in done:
            row.update(status=TaskStatus.SUCCEEDED, deps_remaining=0, ready_at=None)
            continue
        left = deps[row["name"]] - set(done)
        row["deps_remaining"] = len(left)
        row["status"] = TaskStatus.PENDING if left else TaskStatus.READY
        row["ready_at"] = None if left else now
    new_id, by_name = statements(conn).insert_run(
        conn, values, rows, edges, now=now, notify=True, lease=None
    )
    if new_id is None:  # the idempotency key was used already
        assert idempotency_key is not None
        return replayed_run(conn, idempotency_key), False
    conn.execute(workflows.update().where(workflows.c.id == new_id).values(rerun_of=workflow_id))
    for name, old in done.items():
        conn.execute(
            tasks.update()
            .where(tasks.c.id == by_name[name][0], tasks.c.status == TaskStatus.SUCCEEDED)
            .values(
                result=old.result,
                started_at=old.started_at,
                finished_at=old.finished_at,
                progress=1.0,
            )
        )
    return new_id, True
