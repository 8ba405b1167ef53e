"""Task transitions after dispatch: claim, finish, retry and failure propagation.

This module and ``kiln.store.dispatch`` (the lease to a message) are where a task changes state
while its run goes on; ``kiln.store.recovery`` puts lost work back. Every change is a single guarded
statement whose ``WHERE`` clause names the allowed source state(s) from ``kiln.core.states``
(and, for a worker, the attempt number it was given), so a stale or duplicate actor changes
nothing. Functions ending in ``_txn`` never commit.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from kiln.core.retry import backoff_s
from kiln.core.states import TASK_NOT_STARTED, TaskStatus, WorkflowStatus
from kiln.core.templating import ReferenceError_, find_references, resolve
from kiln.store import postgres as pgsql
from kiln.store.db import is_postgres, notify_ready, utcnow
from kiln.store.dispatch import Dispatch, dispatch_now_txn
from kiln.store.schema import Timestamp, task_attempts, task_dependencies, tasks, workflows
from kiln.store.workflows import settle_workflows_txn, taken_back

log = logging.getLogger("kiln.tasks")

NOT_STARTED = [str(s) for s in TASK_NOT_STARTED]


@dataclass
class ClaimedTask:
    id: int
    attempt: int
    workflow_id: int
    name: str
    handler: str | None
    model_type: str | None
    params: Any
    timeout_s: float | None
    max_attempts: int
    param_error: str | None = None


@dataclass
class Outcome:
    """What a worker observed running one claimed task."""

    task: ClaimedTask
    ok: bool
    started_at: dt.datetime
    finished_at: dt.datetime
    result: Any = None
    error: str | None = None
    retryable: bool = True
    kind: str = "failed"  # failed | timed_out


@dataclass
class RecordReport:
    applied: list[int] = field(default_factory=list)
    stale: list[int] = field(default_factory=list)
    readied: list[int] = field(default_factory=list)
    dispatched: list[Dispatch] = field(default_factory=list)  # for the caller to send


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
    if is_postgres(conn):
        rows = conn.execute(
            pgsql.CLAIM,
            {
                "ids": [t for t, _ in items],
                "prev": [a - 1 for _, a in items],
                "worker": worker_id,
                "now": now,
                "lease": now + dt.timedelta(seconds=lease_s),
            },
        ).all()
    else:
        rows = _claim_portable_txn(conn, items, worker_id=worker_id, lease_s=lease_s, now=now)
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
        )
        for r in rows
    ]
    _resolve_references_txn(conn, claimed)
    order = {t: i for i, (t, _) in enumerate(items)}
    return sorted(claimed, key=lambda c: order[c.id])


def _claim_portable_txn(
    conn: sa.Connection,
    items: list[tuple[int, int]],
    *,
    worker_id: str,
    lease_s: float,
    now: dt.datetime,
) -> list[Any]:
    leased = [
        sa.tuple_(tasks.c.id, tasks.c.attempts).in_([(t, a - 1) for t, a in items]),
        tasks.c.status == TaskStatus.QUEUED,
    ]
    of_paused_run = sa.exists().where(
        workflows.c.id == tasks.c.workflow_id, workflows.c.status == WorkflowStatus.PAUSED
    )
    # A lease that committed after its run was paused: back to ready (see ``pgsql.CLAIM``).
    conn.execute(tasks.update().where(*leased, of_paused_run).values(taken_back(now)))
    rows = conn.execute(
        tasks.update()
        .where(*leased, ~of_paused_run)
        .values(
            status=TaskStatus.RUNNING,
            attempts=tasks.c.attempts + 1,
            lease_owner=worker_id,
            lease_expires_at=now + dt.timedelta(seconds=lease_s),
            started_at=now,
            progress=None,
            progress_message=None,
        )
        .returning(
            tasks.c.id,
            tasks.c.attempts,
            tasks.c.workflow_id,
            tasks.c.name,
            tasks.c.handler,
            tasks.c.model_type,
            tasks.c.params,
            tasks.c.timeout_s,
            tasks.c.max_attempts,
        )
    ).all()
    if rows:
        conn.execute(
            task_attempts.insert(),
            [
                {"task_id": r.id, "attempt": r.attempts, "worker": worker_id, "started_at": now}
                for r in rows
            ],
        )
    return list(rows)


def _resolve_references_txn(conn: sa.Connection, claimed: list[ClaimedTask]) -> None:
    wanted: dict[int, set[str]] = {}
    refs_of: dict[int, set[str]] = {}
    for c in claimed:
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


@functools.lru_cache(maxsize=128)
def _values_update_sql(n: int) -> sa.TextClause:
    """SQLite: one statement that finishes ``n`` tasks, running -> succeeded fenced by attempt
    (PostgreSQL does more in one statement: :func:`kiln.store.postgres.finish_sql`)."""
    rows = ", ".join(f"(:i{k}, :a{k}, :r{k}, :s{k}, :f{k})" for k in range(n))
    sql = sa.text(
        "UPDATE tasks SET status = 'succeeded', result = v.column3, "
        "started_at = v.column4, finished_at = v.column5, lease_owner = NULL, "
        "lease_expires_at = NULL, progress = 1.0, error = NULL "
        f"FROM (VALUES {rows}) AS v "
        "WHERE tasks.id = v.column1 AND tasks.attempts = v.column2 "
        "AND tasks.status = 'running' "
        "RETURNING tasks.id, tasks.workflow_id"
    )
    return sql.bindparams(*pgsql.outcome_bindparams(n))


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
        params: dict[str, Any] = {}
        for k, o in enumerate(successes):
            params.update(
                {
                    f"i{k}": o.task.id,
                    f"a{k}": o.task.attempt,
                    f"r{k}": o.result,
                    f"s{k}": o.started_at,
                    f"f{k}": o.finished_at,
                }
            )
        if is_postgres(conn):
            params["now"] = utcnow()
            rows = conn.execute(pgsql.finish_sql(len(successes)), params).all()
            done = [r for r in rows if r.kind == "done"]
            readied = [r.id for r in rows if r.kind == "ready"]
        else:
            done = list(conn.execute(_values_update_sql(len(successes)), params))
        done_ids = {r.id for r in done}
        touched.update(r.workflow_id for r in done)
        report.applied += sorted(done_ids)
        report.stale += [o.task.id for o in successes if o.task.id not in done_ids]
        _close_attempts_txn(conn, [o for o in successes if o.task.id not in done_ids], "stale")
        if is_postgres(conn):
            report.readied = readied
        else:
            _close_attempts_txn(conn, [o for o in successes if o.task.id in done_ids], "succeeded")
            report.readied = _ready_dependents_txn(conn, sorted(done_ids))
        if dispatch_lease_s is not None:
            report.dispatched = dispatch_now_txn(conn, report.readied, lease_s=dispatch_lease_s)
        if len(report.dispatched) < len(report.readied):
            notify_ready(conn)  # the controller dispatches what was not sent directly
    for o in outcomes:
        if o.ok:
            continue
        applied = fail_attempt_txn(conn, o, retry_base_s=retry_base_s, retry_max_s=retry_max_s)
        (report.applied if applied else report.stale).append(o.task.id)
        if applied:
            touched.add(o.task.workflow_id)
    if report.stale:
        log.warning("refused stale results for tasks %s", report.stale)
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


def _ready_dependents_txn(conn: sa.Connection, succeeded: list[int]) -> list[int]:
    """Count down the dependencies of the tasks that wait on ``succeeded``; those reaching
    zero go pending -> ready."""
    if not succeeded:
        return []
    d = task_dependencies
    children = sa.select(d.c.task_id).where(d.c.depends_on_id.in_(succeeded)).scalar_subquery()
    done_here = (
        sa.select(sa.func.count())
        .where(d.c.task_id == tasks.c.id, d.c.depends_on_id.in_(succeeded))
        .scalar_subquery()
    )
    ready = conn.execute(
        tasks.update()
        .where(tasks.c.id.in_(children), tasks.c.status == TaskStatus.PENDING)
        .values(deps_remaining=tasks.c.deps_remaining - done_here)
        .returning(tasks.c.id, tasks.c.deps_remaining)
    ).all()
    to_ready = [r.id for r in ready if r.deps_remaining <= 0]
    if to_ready:
        conn.execute(
            tasks.update()
            .where(tasks.c.id.in_(to_ready), tasks.c.status == TaskStatus.PENDING)
            .values(status=TaskStatus.READY, ready_at=utcnow())
        )
    return to_ready


def fail_attempt_txn(
    conn: sa.Connection, o: Outcome, *, retry_base_s: float, retry_max_s: float
) -> bool:
    """running -> retrying (attempts left and retryable) or failed; fenced by attempt."""
    t = o.task
    retry = o.retryable and t.attempt < t.max_attempts
    values: dict[str, Any] = {
        "error": o.error,
        "lease_owner": None,
        "lease_expires_at": None,
        "started_at": o.started_at,
    }
    if retry:
        wait = backoff_s(t.attempt, base_s=retry_base_s, max_s=retry_max_s)
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
    conn.execute(
        task_attempts.update()
        .where(
            task_attempts.c.task_id == t.id,
            task_attempts.c.attempt == t.attempt,
            task_attempts.c.outcome == "running",
        )
        .values(outcome=o.kind if changed else "stale", error=o.error, finished_at=o.finished_at)
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
    now = utcnow()
    conn.execute(
        sa.text(
            "WITH RECURSIVE downstream(id) AS ("
            " SELECT task_id FROM task_dependencies WHERE depends_on_id = :failed"
            " UNION SELECT d.task_id FROM task_dependencies d"
            " JOIN downstream ON d.depends_on_id = downstream.id)"
            " UPDATE tasks SET status = 'upstream_failed', finished_at = :now,"
            " lease_owner = NULL, lease_expires_at = NULL, error = :error"
            " WHERE id IN (SELECT id FROM downstream) AND status IN ('pending', 'ready',"
            " 'retrying', 'queued')"
        ).bindparams(sa.bindparam("now", type_=Timestamp)),
        {"failed": task_id, "now": now, "error": f"upstream failed: {error}"},
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
        conn.execute(
            tasks.update()
            .where(tasks.c.workflow_id == workflow_id, tasks.c.status.in_(NOT_STARTED))
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
