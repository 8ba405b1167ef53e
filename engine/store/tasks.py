"""Task transitions after dispatch: claim, finish, retry and failure propagation.

This module and ``kiln.store.dispatch`` (the lease to a message) are where a task changes state
while its run goes on; ``kiln.store.recovery`` puts lost work back. Every change is a single guarded
statement whose ``WHERE`` clause names the allowed source state(s) from ``kiln.core.states``
(and, for a worker, the attempt number it was given), so a stale or duplicate actor changes
nothing. Functions ending in ``_txn`` never commit.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from kiln.core.execution import ClaimedTask, Outcome, RecordReport
from kiln.core.mapping import is_item_name
from kiln.core.retry import DEFAULT_JITTER, backoff_s
from kiln.core.states import TASK_NOT_STARTED, TASK_UNHELD, TaskStatus, WorkflowStatus
from kiln.core.templating import ReferenceError_, find_references, resolve
from kiln.store.attempts import close_attempt_txn
from kiln.store.db import utcnow
from kiln.store.dialects import notify_ready, statements
from kiln.store.dispatch import dispatch_now_txn
from kiln.store.lineage import descendants, wake_parents_txn
from kiln.store.map_items import fail_map_of_item_txn, settle_maps_txn
from kiln.store.schema import task_attempts, task_dependencies, tasks, workflows
from kiln.store.waits import suspend_txn
from kiln.store.workflows import cancel_runs_txn, settle_workflows_txn

log = logging.getLogger("kiln.tasks")

NOT_STARTED = [str(s) for s in TASK_NOT_STARTED]
UNHELD = [str(s) for s in TASK_UNHELD]


# --- claim (worker) ---------------------------------------------------------------------


def claim_txn(
    conn: sa.Connection,
    items: Iterable[tuple[int, int]],
    *,
    worker_id: str,
    lease_s: float,
) -> list[ClaimedTask]:
    """queued -> running for each ``(task_id, attempt)`` still queued at ``attempt - 1``
    claims; counts the attempt and records it in ``task_attempts``. Items whose task moved on
    (already claimed by a duplicate message, cancelled, paused) are skipped, and a task whose
    run is paused goes back to ``ready`` instead of starting."""
    items = list(items)
    if not items:
        return []
    now = utcnow()
    rows = statements(conn).claim(
        conn, items, worker=worker_id, now=now, lease=now + dt.timedelta(seconds=lease_s)
    )
    if not rows:
        return []
    claimed = [
        ClaimedTask(
            id=r.id,
            attempt=r.attempts,
            workflow_id=r.workflow_id,
            name=r.name,
            handler=r.handler,
            model_type=r.model_type,
            params=r.params,
            timeout_s=r.timeout_s,
            max_attempts=r.max_attempts,
            retry=r.retry,
            resumes=r.resumes,
            state=r.state,
            trace_context=r.trace_context,
        )
        for r in rows
    ]
    _resolve_references_txn(conn, claimed)
    order = {t: i for i, (t, _) in enumerate(items)}
    return sorted(claimed, key=lambda c: order[c.id])


def _resolve_references_txn(conn: sa.Connection, claimed: list[ClaimedTask]) -> None:
    wanted: dict[int, set[str]] = {}
    refs_of: dict[int, set[str]] = {}
    for c in claimed:
        if is_item_name(c.name):
            continue  # a mapped item's params were made final when its map expanded
        refs = find_references(c.params)
        if refs:
            refs_of[c.id] = refs
            wanted.setdefault(c.workflow_id, set()).update(refs)
    if not wanted:
        return
    results: dict[int, dict[str, Any]] = {w: {} for w in wanted}
    for wf_id, names in wanted.items():
        for row in conn.execute(
            sa.select(tasks.c.name, tasks.c.result).where(
                tasks.c.workflow_id == wf_id,
                tasks.c.name.in_(sorted(names)),
                tasks.c.status == TaskStatus.SUCCEEDED,
            )
        ):
            results[wf_id][row.name] = row.result
    for c in claimed:
        if c.id in refs_of:
            try:
                c.params = resolve(c.params, results[c.workflow_id])
            except ReferenceError_ as exc:
                c.param_error = exc.message


# --- finish (worker) --------------------------------------------------------------------


def record_outcomes_txn(
    conn: sa.Connection,
    outcomes: Sequence[Outcome],
    *,
    retry_base_s: float,
    retry_max_s: float,
    dispatch_lease_s: float | None = None,
) -> RecordReport:
    """Record what workers observed, in one transaction: results for successes (and the
    dependents they make ready), retries or failures for the rest. An outcome whose attempt no
    longer owns its task is refused and reported in ``stale``. With ``dispatch_lease_s`` the
    dependents made ready are leased for the caller to send at once when the queue is idle
    (see :func:`dispatch_now_txn`)."""
    report = RecordReport()
    successes = [o for o in outcomes if o.ok]
    touched: set[int] = set()
    if successes:
        done, report.readied = statements(conn).finish(
            conn,
            [(o.task.id, o.task.attempt, o.result, o.started_at, o.finished_at) for o in successes],
            now=utcnow(),
        )
        done_ids = {r.id for r in done}
        touched.update(r.workflow_id for r in done)
        report.applied += sorted(done_ids)
        report.stale += [o.task.id for o in successes if o.task.id not in done_ids]
        _close_attempts_txn(conn, [o for o in successes if o.task.id not in done_ids], "stale")
        report.readied += settle_maps_txn(conn, {r.mapped_from for r in done} - {None})
        if dispatch_lease_s is not None:
            report.dispatched = dispatch_now_txn(conn, report.readied, lease_s=dispatch_lease_s)
        if len(report.dispatched) < len(report.readied):
            notify_ready(conn)  # the controller dispatches what was not sent directly
    for o in outcomes:
        if o.ok:
            continue
        if o.suspension is not None:
            applied = suspend_txn(conn, o)
        else:
            applied = fail_attempt_txn(conn, o, retry_base_s=retry_base_s, retry_max_s=retry_max_s)
        (report.applied if applied else report.stale).append(o.task.id)
        if applied:
            touched.add(o.task.workflow_id)
    if report.stale:
        log.debug("refused stale results for tasks %s", report.stale)  # expected races
    settle_workflows_txn(conn, touched)
    return report


def _close_attempts_txn(conn: sa.Connection, outcomes: Sequence[Outcome], outcome: str) -> None:
    if not outcomes:
        return
    conn.execute(
        task_attempts.update()
        .where(
            sa.tuple_(task_attempts.c.task_id, task_attempts.c.attempt).in_(
                [(o.task.id, o.task.attempt) for o in outcomes]
            ),
            task_attempts.c.outcome == "running",
        )
        .values(outcome=outcome, finished_at=outcomes[0].finished_at)
    )


def fail_attempt_txn(
    conn: sa.Connection, o: Outcome, *, retry_base_s: float, retry_max_s: float
) -> bool:
    """running -> retrying (attempts left and retryable) or failed; fenced by attempt."""
    t = o.task
    # A claim that resumed the task after it waited for child runs is not a new try.
    retry = o.retryable and t.attempt - t.resumes < t.max_attempts
    values: dict[str, Any] = {
        "error": o.error,
        "lease_owner": None,
        "lease_expires_at": None,
        "started_at": o.started_at,
    }
    if retry:
        policy = t.retry or {}
        wait = backoff_s(
            t.attempt,
            base_s=policy.get("backoff_s", retry_base_s),
            max_s=policy.get("max_backoff_s", max(retry_max_s, policy.get("backoff_s", 0))),
            jitter=policy.get("jitter", DEFAULT_JITTER),
        )
        values |= {
            "status": TaskStatus.RETRYING,
            "not_before": o.finished_at + dt.timedelta(seconds=wait),
            "ready_at": o.finished_at + dt.timedelta(seconds=wait),
        }
    else:
        values |= {"status": TaskStatus.FAILED, "finished_at": o.finished_at}
    changed = conn.execute(
        tasks.update()
        .where(
            tasks.c.id == t.id,
            tasks.c.attempts == t.attempt,
            tasks.c.status == TaskStatus.RUNNING,
        )
        .values(**values)
        .returning(tasks.c.id)
    ).first()
    close_attempt_txn(
        conn,
        t.id,
        t.attempt,
        outcome=o.kind if changed else "stale",
        error=f"{o.error}\n\n{o.traceback}" if o.traceback else o.error,
        finished_at=o.finished_at,
    )
    if changed is None:
        return False
    if retry:
        notify_ready(conn)
    else:
        propagate_failure_txn(conn, t.id, t.workflow_id, f"task {t.name!r} failed: {o.error}")
    return True


def propagate_failure_txn(conn: sa.Connection, task_id: int, workflow_id: int, error: str) -> None:
    """After ``task_id`` failed for good: its transitive dependents become upstream_failed;
    with ``on_error=stop`` the run fails at once and its other unstarted tasks are
    cancelled (running ones finish and are recorded)."""
    mapped = fail_map_of_item_txn(conn, task_id)
    if mapped is not None:  # an item: its map task failed, and the failure spreads from it
        task_id, error = mapped
    now = utcnow()
    deps = task_dependencies
    downstream = (
        sa.select(deps.c.task_id.label("id"))
        .where(deps.c.depends_on_id == task_id)
        .cte("downstream", recursive=True)
    )
    step = deps.alias("d")
    downstream = downstream.union(
        sa.select(step.c.task_id).join(downstream, step.c.depends_on_id == downstream.c.id)
    )
    conn.execute(
        tasks.update()
        .where(tasks.c.id.in_(sa.select(downstream.c.id)), tasks.c.status.in_(NOT_STARTED))
        .values(
            status=TaskStatus.UPSTREAM_FAILED,
            finished_at=now,
            lease_owner=None,
            lease_expires_at=None,
            error=f"upstream failed: {error}",
        )
    )
    on_error = conn.execute(
        sa.select(workflows.c.on_error).where(workflows.c.id == workflow_id)
    ).scalar()
    if on_error == "stop":
        conn.execute(
            workflows.update()
            .where(
                workflows.c.id == workflow_id,
                workflows.c.status.in_(
                    [WorkflowStatus.PENDING, WorkflowStatus.RUNNING, WorkflowStatus.PAUSED]
                ),
            )
            .values(status=WorkflowStatus.FAILED, finished_at=now, error=error)
        )
        cancel_runs_txn(conn, descendants(workflow_id), now=now, error="parent run failed")
        wake_parents_txn(conn, [workflow_id])
        conn.execute(
            tasks.update()
            .where(tasks.c.workflow_id == workflow_id, tasks.c.status.in_(UNHELD))
            .values(
                status=TaskStatus.CANCELLED,
                finished_at=now,
                lease_owner=None,
                lease_expires_at=None,
                error=f"not run: {error} (on_error=stop)",
            )
        )
    else:
        conn.execute(
            workflows.update()
            .where(workflows.c.id == workflow_id, workflows.c.error.is_(None))
            .values(error=error)
        )
